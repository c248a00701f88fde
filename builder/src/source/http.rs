//! ADD <http(s) url>: downloads the file of the graph's `SourceOp::Http` into a directory, streaming
//! it through a sha256 hasher to a temporary file that is renamed into place only once it is complete
//! and, when `--checksum` was given, verified. The executor turns that directory into the source's
//! snapshot; COPY-like actions then take the file from there.
//!
//! # Caching rule (for the executor)
//!
//! BuildKit keys an HTTP source by what it knows without downloading, and this module follows it:
//! - With `--checksum=sha256:<hex>`: key the source by [`checksum_digest`] (plus the file name; the
//!   file is always mode 0600, owned by 0:0). A cache hit needs no request at all. The file's mtime
//!   (from `Last-Modified`) is then not part of the key: it is whatever the first download got, as
//!   in BuildKit.
//! - Without: the content must be fetched on every build to learn it. Key by [`Fetched::digest`]
//!   (plus the file name and the `Last-Modified` value, which BuildKit also folds in since it becomes
//!   the file's mtime). Steps depending on the source are cache hits when the content did not change.
//!   ETag revalidation (BuildKit's `If-None-Match`) would avoid the body download; not done yet.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use forge_snapshotter::retry::{RetryPolicy, Transient, retry};
use forge_snapshotter::store::Digest;
use reqwest::header::{HeaderMap, LAST_MODIFIED, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt as _, BufWriter};

use crate::events::Events;

/// What went wrong fetching a URL. URLs in messages have their password replaced by `xxxxx`.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported url scheme {scheme:?} in {url} (only http and https can be downloaded)")]
    UnsupportedScheme { url: String, scheme: String },
    #[error(
        "unsupported checksum algorithm {algorithm:?} in {checksum:?} (only sha256 is supported)"
    )]
    UnsupportedChecksumAlgorithm { checksum: String, algorithm: String },
    #[error("invalid checksum {checksum:?}: {reason} (want sha256:<64 lowercase hex digits>)")]
    InvalidChecksum {
        checksum: String,
        reason: &'static str,
    },
    #[error("invalid file name {filename:?} for {url}: must be a single path component")]
    InvalidFilename { url: String, filename: String },
    #[error("setting up the http client: {detail}")]
    Client { detail: String },
    #[error("GET {url}: {status}{}{}", redirected_note(.final_url), attempts_note(*.attempts))]
    Status {
        url: String,
        /// Where the redirects ended, when they did not end at `url`.
        final_url: Option<String>,
        status: StatusCode,
        attempts: u32,
    },
    #[error("GET {url}: {detail}{}", attempts_note(*.attempts))]
    Request {
        url: String,
        /// The transport error and its causes, joined by ": ".
        detail: String,
        attempts: u32,
    },
    #[error("checksum mismatch for {url}: expected {expected}, got {actual} ({size} bytes)")]
    ChecksumMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn redirected_note(final_url: &Option<String>) -> String {
    match final_url {
        Some(u) => format!(" (redirected to {u})"),
        None => String::new(),
    }
}

/// The downloaded file, in place under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `dest_dir/filename`.
    pub path: PathBuf,
    /// sha256 of the content.
    pub digest: Digest,
    /// Bytes written.
    pub size: u64,
    /// The response's `Last-Modified`, when present and valid. The file's mtime was set to it, or to
    /// the Unix epoch without one (BuildKit does the same, which keeps layers reproducible).
    pub last_modified: Option<SystemTime>,
}

/// Knobs for [`HttpFetcher`]; [`HttpConfig::default`] is what a build uses.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Tries of a transient failure (connect error, timeout, broken body, 429, 5xx) and the waits
    /// between them; a server's `Retry-After` is honoured up to the longest wait.
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// A connection that delivers nothing for this long is abandoned (and retried). There is no
    /// total timeout: a big file on a slow but live link must be allowed to finish.
    pub read_timeout: Duration,
    pub max_redirects: usize,
    /// Use `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` from the environment, as reqwest does by default.
    pub proxy_from_env: bool,
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            retry: RetryPolicy {
                attempts: 4,
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(10),
            },
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
            proxy_from_env: true,
            user_agent: concat!("forge/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Parses an `ADD --checksum` value into the digest the downloaded content must have. Only sha256
/// is accepted; sha384/sha512 (which BuildKit also takes) get a clear error rather than a mismatch.
pub fn checksum_digest(checksum: &str) -> Result<Digest, HttpError> {
    let invalid = |reason| HttpError::InvalidChecksum {
        checksum: checksum.to_string(),
        reason,
    };
    let (algorithm, _) = checksum
        .split_once(':')
        .ok_or_else(|| invalid("missing the algorithm prefix"))?;
    if algorithm != "sha256" {
        return Err(HttpError::UnsupportedChecksumAlgorithm {
            checksum: checksum.to_string(),
            algorithm: algorithm.to_string(),
        });
    }
    checksum.parse::<Digest>().map_err(|e| invalid(e.reason))
}

/// Downloads with a process-wide [`HttpFetcher`] built from [`HttpConfig::default`]. See
/// [`HttpFetcher::fetch`].
pub async fn fetch(
    url: &str,
    checksum: Option<&str>,
    dest_dir: &Path,
    filename: &str,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<Fetched, HttpError> {
    static DEFAULT: OnceLock<HttpFetcher> = OnceLock::new();
    default_fetcher(&DEFAULT)?
        .fetch(url, checksum, dest_dir, filename, progress)
        .await
}

/// The fetcher `cell` holds, made from [`HttpConfig::default`] on first use (a failure to make
/// it is returned, and the next use tries again).
fn default_fetcher(cell: &OnceLock<HttpFetcher>) -> Result<&HttpFetcher, HttpError> {
    match cell.get() {
        Some(f) => Ok(f),
        None => {
            let made = HttpFetcher::new(HttpConfig::default())?;
            Ok(cell.get_or_init(|| made))
        }
    }
}

/// An HTTP client for ADD sources. Keeps a connection pool, so share one across a build.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    config: HttpConfig,
}

/// One failed try, and whether trying again could help.
struct Failure {
    error: HttpError,
    transient: bool,
    retry_after: Option<Duration>,
}

impl Transient for Failure {
    fn is_transient(&self) -> bool {
        self.transient
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// A partly written download; removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the error that made us drop it is the one worth reporting.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A complete, hashed download still under its temporary name.
struct Downloaded {
    temp: TempFile,
    file: std::fs::File,
    digest: Digest,
    size: u64,
    last_modified: Option<SystemTime>,
}

impl HttpFetcher {
    pub fn new(config: HttpConfig) -> Result<HttpFetcher, HttpError> {
        let max_redirects = config.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                attempt.error(format!("more than {max_redirects} redirects"))
            } else if !matches!(attempt.url().scheme(), "http" | "https") {
                let msg = format!(
                    "redirect to unsupported scheme {:?}",
                    attempt.url().scheme()
                );
                attempt.error(msg)
            } else {
                attempt.follow()
            }
        });
        // Explicit roots, never the platform verifier, which refuses to start without a system
        // store (see forge_snapshotter::registry::roots).
        let roots = forge_snapshotter::registry::roots::trust_roots()
            .certs
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok());
        let mut builder = reqwest::Client::builder()
            .tls_certs_only(roots)
            .redirect(policy)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(config.user_agent.clone());
        if !config.proxy_from_env {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| HttpError::Client {
            detail: forge_snapshotter::error_text::one_line(&e),
        })?;
        Ok(HttpFetcher { client, config })
    }

    /// Downloads `url` to `dest_dir/filename` (mode 0600, mtime from `Last-Modified` or the epoch),
    /// replacing a file of that name. `checksum` is `sha256:<hex>` from `ADD --checksum`; on a
    /// mismatch nothing is left behind and the error names the URL and both digests.
    ///
    /// `progress(bytes_so_far, content_length)` is called after each chunk written; a retried
    /// download starts again from zero. Transient failures are retried per [`HttpConfig`]; a 4xx
    /// other than 429 is not. Dropping the future removes the partial file.
    pub async fn fetch(
        &self,
        url: &str,
        checksum: Option<&str>,
        dest_dir: &Path,
        filename: &str,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<Fetched, HttpError> {
        let expected = checksum.map(checksum_digest).transpose()?;
        let parsed = parse_url(url)?;
        let shown = redact(&parsed);
        if filename.is_empty()
            || filename == "."
            || filename == ".."
            || filename.contains(['/', '\0'])
        {
            return Err(HttpError::InvalidFilename {
                url: shown,
                filename: filename.to_string(),
            });
        }

        // Each try borrows the callback in turn; the lock is never contended.
        let progress = Mutex::new(progress);
        let done = retry(
            &self.config.retry,
            || self.try_once(&parsed, &shown, dest_dir, &progress),
            |_, _, _, _| {},
        )
        .await
        .map_err(|gave_up| with_attempts(gave_up.error.error, gave_up.attempts))?;

        if let Some(expected) = expected
            && expected != done.digest
        {
            return Err(HttpError::ChecksumMismatch {
                url: shown,
                expected,
                actual: done.digest,
                size: done.size,
            });
        }

        let Downloaded {
            mut temp,
            file,
            digest,
            size,
            last_modified,
        } = done;
        let mtime = last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
        let times = std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(mtime);
        file.set_times(times).map_err(|source| HttpError::Io {
            action: "setting the mtime of",
            path: temp.path.clone(),
            source,
        })?;
        drop(file);
        let path = dest_dir.join(filename);
        tokio::fs::rename(&temp.path, &path)
            .await
            .map_err(|source| HttpError::Io {
                action: "renaming the download into",
                path: path.clone(),
                source,
            })?;
        temp.armed = false;
        Ok(Fetched {
            path,
            digest,
            size,
            last_modified,
        })
    }

    async fn try_once(
        &self,
        url: &Url,
        shown: &str,
        dest_dir: &Path,
        progress: &Mutex<&mut (dyn FnMut(u64, Option<u64>) + Send)>,
    ) -> Result<Downloaded, Failure> {
        let report =
            |bytes, total| (progress.lock().unwrap_or_else(|e| e.into_inner()))(bytes, total);
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| request_failure(shown, e))?;
        let status = response.status();
        if !status.is_success() {
            let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            // reqwest moves credentials into a header, so the final URL never carries them.
            let mut requested = url.clone();
            let _ = requested.set_username("");
            let _ = requested.set_password(None);
            let final_url = (*response.url() != requested).then(|| redact(response.url()));
            return Err(Failure {
                retry_after: retry_after(response.headers()),
                error: HttpError::Status {
                    url: shown.to_string(),
                    final_url,
                    status,
                    attempts: 1,
                },
                transient,
            });
        }
        let last_modified = response
            .headers()
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let total = response.content_length();

        let (temp, file) = create_temp(dest_dir).await.map_err(permanent)?;
        let io_err = |action, source| {
            permanent(HttpError::Io {
                action,
                path: temp.path.clone(),
                source,
            })
        };
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        report(0, total);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_failure(shown, e))?
        {
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| io_err("writing", e))?;
            size += chunk.len() as u64;
            report(size, total);
        }
        out.flush().await.map_err(|e| io_err("writing", e))?;
        let file = out.into_inner().into_std().await;
        // The executor commits this directory as a snapshot: the bytes must be on disk before the
        // cache record that points at them.
        file.sync_all().map_err(|e| io_err("syncing", e))?;
        Ok(Downloaded {
            temp,
            file,
            digest: Digest::from_hasher(hasher),
            size,
            last_modified,
        })
    }
}

fn parse_url(url: &str) -> Result<Url, HttpError> {
    let parsed = Url::parse(url).map_err(|e| HttpError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HttpError::UnsupportedScheme {
            url: redact(&parsed),
            scheme: parsed.scheme().to_string(),
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(HttpError::InvalidUrl {
            url: redact(&parsed),
            reason: "no host".to_string(),
        });
    }
    Ok(parsed)
}

/// The URL as errors show it: a password in it would otherwise end up in build logs.
fn redact(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("xxxxx"));
        shown.to_string()
    } else {
        url.to_string()
    }
}

fn permanent(error: HttpError) -> Failure {
    Failure {
        error,
        transient: false,
        retry_after: None,
    }
}

fn request_failure(shown: &str, e: reqwest::Error) -> Failure {
    // Redirect errors are our own policy saying no; builder errors are bugs. Everything else that
    // reqwest reports here (connect, timeout, reset, truncated body) may go away on a new try.
    let transient = !(e.is_redirect() || e.is_builder());
    Failure {
        error: HttpError::Request {
            url: shown.to_string(),
            detail: forge_snapshotter::error_text::one_line(&e.without_url()),
            attempts: 1,
        },
        transient,
        retry_after: None,
    }
}

fn with_attempts(mut error: HttpError, n: u32) -> HttpError {
    if let HttpError::Status { attempts, .. } | HttpError::Request { attempts, .. } = &mut error {
        *attempts = n;
    }
    error
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

async fn create_temp(dest_dir: &Path) -> Result<(TempFile, tokio::fs::File), HttpError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dest_dir.join(format!(".forge-download-{}-{n}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        match tokio::fs::OpenOptions::from(options).open(&path).await {
            Ok(file) => return Ok((TempFile { path, armed: true }, file)),
            // Left by a crashed process with a recycled pid; pick the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(HttpError::Io {
                    action: "creating a download file in",
                    path: dest_dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// ADD <url> for the executor: with `--checksum` the key is the checksum and nothing is fetched
/// until the step runs; without, the file is fetched once to key it by content (and its
/// Last-Modified, which becomes its mtime) and that download is what the step then uses.
pub struct HttpSource {
    /// Made at the first download: its client takes every trusted root (milliseconds of CPU that
    /// a build without `ADD <url>` would spend beside its context walk for nothing).
    fetcher: OnceLock<HttpFetcher>,
    dir: std::path::PathBuf,
    fetched: Mutex<HashMap<String, Fetched>>,
    events: Events,
}

impl HttpSource {
    pub fn new(dir: std::path::PathBuf, events: Events) -> HttpSource {
        HttpSource {
            fetcher: OnceLock::new(),
            dir,
            fetched: Mutex::new(HashMap::new()),
            events,
        }
    }

    async fn download(
        &self,
        url: &str,
        checksum: Option<&str>,
        dir: &std::path::Path,
        filename: &str,
    ) -> Result<Fetched, crate::ops::ExecError> {
        std::fs::create_dir_all(dir).map_err(|e| crate::ops::ExecError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source: e,
        })?;
        let fetcher = default_fetcher(&self.fetcher)
            .map_err(|e| crate::ops::ExecError::Source(e.to_string()))?;
        // A download is a phase of its own: byte counts are not warnings, and the events carry no
        // transfer kind for URLs, so its start and end are what is reported.
        let fetched = self
            .events
            .phase_result(
                &format!("downloading {url}"),
                fetcher.fetch(url, checksum, dir, filename, &mut |_, _| {}),
            )
            .await;
        fetched.map_err(|e| crate::ops::ExecError::Source(e.to_string()))
    }
}

impl crate::ops::RemoteFiles for HttpSource {
    fn key(
        &self,
        url: &str,
        checksum: Option<&str>,
    ) -> futures::future::BoxFuture<'_, Result<crate::solver::ContentDigest, crate::ops::ExecError>>
    {
        let url = url.to_string();
        let checksum = checksum.map(str::to_string);
        Box::pin(async move {
            let mut h = blake3::Hasher::new();
            if let Some(c) = &checksum {
                let d =
                    checksum_digest(c).map_err(|e| crate::ops::ExecError::Source(e.to_string()))?;
                h.update(b"checksum\0");
                h.update(d.to_string().as_bytes());
                return Ok(*h.finalize().as_bytes());
            }
            let slot = format!("{}", blake3::hash(url.as_bytes()).to_hex());
            let dir = self.dir.join(&slot);
            let f = self.download(&url, None, &dir, "download").await?;
            h.update(b"content\0");
            h.update(f.digest.to_string().as_bytes());
            let mtime = f
                .last_modified
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            h.update(&mtime.to_le_bytes());
            self.fetched.lock().expect("not poisoned").insert(url, f);
            Ok(*h.finalize().as_bytes())
        })
    }

    fn fetch_into<'a>(
        &'a self,
        url: &'a str,
        checksum: Option<&'a str>,
        dir: &'a std::path::Path,
        filename: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::ops::ExecError>> {
        Box::pin(async move {
            let pre = self.fetched.lock().expect("not poisoned").remove(url);
            if let Some(f) = pre {
                let dest = dir.join(filename);
                // Same filesystem (both under the store): a rename keeps the mtime.
                if std::fs::rename(&f.path, &dest).is_ok() {
                    return Ok(());
                }
            }
            self.download(url, checksum, dir, filename).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests;
