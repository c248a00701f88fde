//! Downloads against a small HTTP/1.1 server on 127.0.0.1 that misbehaves on request: redirects,
//! error statuses, truncated and stalled bodies.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::*;

enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `size` bytes of [`big_byte`], written in 64 KiB pieces.
    Big { size: u64 },
    /// Announces `length` bytes, sends `sent` of them, waits `pause`, then closes.
    Short {
        length: u64,
        sent: usize,
        pause: Duration,
    },
}

fn ok(body: &[u8]) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![],
        body: body.to_vec(),
    }
}

fn status(code: u16, headers: &[(&str, &str)]) -> Reply {
    Reply::Full {
        status: code,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: format!("status {code}\n").into_bytes(),
    }
}

fn big_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

type Route = dyn Fn(&str, usize) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    /// `route(path, nth_hit_of_that_path_from_1)` decides each reply. The server thread lives as long
    /// as the test process.
    fn start(route: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let route: Arc<Route> = Arc::new(route);
        let server_hits = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (route, hits) = (route.clone(), server_hits.clone());
                std::thread::spawn(move || handle(stream, &*route, &hits));
            }
        });
        Server { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn handle(mut stream: TcpStream, route: &Route, hits: &Mutex<HashMap<String, usize>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let nth = {
        let mut hits = hits.lock().unwrap();
        let n = hits.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let _ = match route(&path, nth) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream
                .write_all(out.as_bytes())
                .and_then(|()| stream.write_all(&body))
        }
        Reply::Big { size } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).and_then(|()| {
                let mut i = 0u64;
                while i < size {
                    let n = (size - i).min(64 * 1024);
                    let piece: Vec<u8> = (i..i + n).map(big_byte).collect();
                    stream.write_all(&piece)?;
                    i += n;
                }
                Ok(())
            })
        }
        Reply::Short {
            length,
            sent,
            pause,
        } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
            let r = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(&vec![b'x'; sent]))
                .and_then(|()| stream.flush());
            std::thread::sleep(pause);
            r
        }
    };
}

fn fetcher() -> HttpFetcher {
    HttpFetcher::new(HttpConfig {
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        read_timeout: Duration::from_secs(5),
        // Tests must only talk to loopback, whatever proxy the environment names.
        proxy_from_env: false,
        ..HttpConfig::default()
    })
    .unwrap()
}

async fn get(
    f: &HttpFetcher,
    url: &str,
    checksum: Option<&str>,
    dir: &Path,
) -> Result<Fetched, HttpError> {
    f.fetch(url, checksum, dir, "file", &mut |_, _| {}).await
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha256_of(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

const LAST_MODIFIED_TEXT: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_UNIX: u64 = 1_445_412_480;

#[tokio::test]
async fn file_gets_content_digest_mode_0600_and_mtime_from_last_modified() {
    let server = Server::start(|_, _| Reply::Full {
        status: 200,
        headers: vec![("Last-Modified".into(), LAST_MODIFIED_TEXT.into())],
        body: b"hello from the server\n".to_vec(),
    });
    let dir = tempfile::tempdir().unwrap();
    let got = get(&fetcher(), &server.url("/hello.txt"), None, dir.path())
        .await
        .unwrap();

    assert_eq!(got.path, dir.path().join("file"));
    assert_eq!(
        std::fs::read(&got.path).unwrap(),
        b"hello from the server\n"
    );
    assert_eq!(
        got.digest.to_string(),
        sha256_of(b"hello from the server\n")
    );
    assert_eq!(got.size, 22);
    let want = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_MODIFIED_UNIX);
    assert_eq!(got.last_modified, Some(want));
    let meta = std::fs::metadata(&got.path).unwrap();
    assert_eq!(meta.modified().unwrap(), want);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(entries(dir.path()), ["file"], "no temporary file left");
}

#[tokio::test]
async fn without_last_modified_the_mtime_is_the_epoch_and_an_old_file_is_replaced() {
    let server = Server::start(|_, _| ok(b"new"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"old content").unwrap();
    let got = get(&fetcher(), &server.url("/x"), None, dir.path())
        .await
        .unwrap();
    assert_eq!(got.last_modified, None);
    assert_eq!(std::fs::read(&got.path).unwrap(), b"new");
    let mtime = std::fs::metadata(&got.path).unwrap().modified().unwrap();
    assert_eq!(mtime, SystemTime::UNIX_EPOCH);
}

#[tokio::test]
async fn redirects_are_followed() {
    let server = Server::start(|path, _| match path {
        "/old" => status(302, &[("Location", "/middle")]),
        "/middle" => status(301, &[("Location", "/new")]),
        "/new" => ok(b"moved content"),
        _ => status(404, &[]),
    });
    let dir = tempfile::tempdir().unwrap();
    let got = get(&fetcher(), &server.url("/old"), None, dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), b"moved content");
    assert_eq!(
        (
            server.hits("/old"),
            server.hits("/middle"),
            server.hits("/new")
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_redirect_loop_stops_at_the_limit_and_is_not_retried() {
    let server = Server::start(|_, _| status(302, &[("Location", "/loop")]));
    let dir = tempfile::tempdir().unwrap();
    let f = HttpFetcher::new(HttpConfig {
        max_redirects: 3,
        proxy_from_env: false,
        ..HttpConfig::default()
    })
    .unwrap();
    let err = get(&f, &server.url("/loop"), None, dir.path())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HttpError::Request { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(msg.contains("more than 3 redirects"), "{msg}");
    assert!(msg.contains(&server.url("/loop")), "{msg}");
    assert_eq!(server.hits("/loop"), 4, "the first request and 3 redirects");
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn not_found_names_url_and_status_and_is_not_retried() {
    let server = Server::start(|_, _| status(404, &[]));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/missing.tar.gz");
    let err = get(&fetcher(), &url, None, dir.path()).await.unwrap_err();
    assert!(
        matches!(err, HttpError::Status { status, attempts: 1, .. } if status == 404),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("GET {url}: 404 Not Found"));
    assert_eq!(server.hits("/missing.tar.gz"), 1);
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn a_status_error_after_a_redirect_names_both_urls() {
    let server = Server::start(|path, _| match path {
        "/a" => status(302, &[("Location", "/gone")]),
        _ => status(410, &[]),
    });
    let dir = tempfile::tempdir().unwrap();
    let err = get(&fetcher(), &server.url("/a"), None, dir.path())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "GET {}: 410 Gone (redirected to {})",
            server.url("/a"),
            server.url("/gone")
        )
    );
}

#[tokio::test]
async fn service_unavailable_then_ok_is_retried() {
    let server = Server::start(|_, nth| {
        if nth == 1 {
            status(503, &[("Retry-After", "0")])
        } else {
            ok(b"second time lucky")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let got = get(&fetcher(), &server.url("/flaky"), None, dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), b"second time lucky");
    assert_eq!(server.hits("/flaky"), 2);
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let server = Server::start(|_, nth| {
        if nth < 3 {
            status(429, &[])
        } else {
            ok(b"finally")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    get(&fetcher(), &server.url("/busy"), None, dir.path())
        .await
        .unwrap();
    assert_eq!(server.hits("/busy"), 3);
}

#[tokio::test]
async fn a_persistent_server_error_gives_up_after_the_configured_attempts() {
    let server = Server::start(|_, _| status(500, &[]));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/broken");
    let err = get(&fetcher(), &url, None, dir.path()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("GET {url}: 500 Internal Server Error (after 3 attempts)")
    );
    assert_eq!(server.hits("/broken"), 3);
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn a_truncated_body_is_retried_from_the_start() {
    let server = Server::start(|_, nth| {
        if nth == 1 {
            Reply::Short {
                length: 1000,
                sent: 10,
                pause: Duration::ZERO,
            }
        } else {
            ok(b"complete body")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    let got = fetcher()
        .fetch(
            &server.url("/cut"),
            None,
            dir.path(),
            "file",
            &mut |n, total| calls.push((n, total)),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), b"complete body");
    assert_eq!(server.hits("/cut"), 2);
    assert_eq!(calls.first(), Some(&(0, Some(1000))));
    assert_eq!(calls.last(), Some(&(13, Some(13))));
    assert!(
        calls.contains(&(0, Some(13))),
        "second try restarts: {calls:?}"
    );
    assert_eq!(entries(dir.path()), ["file"]);
}

#[tokio::test]
async fn a_stalled_body_times_out_and_leaves_nothing() {
    let server = Server::start(|_, _| Reply::Short {
        length: 1000,
        sent: 10,
        pause: Duration::from_secs(3),
    });
    let dir = tempfile::tempdir().unwrap();
    let f = HttpFetcher::new(HttpConfig {
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            ..HttpConfig::default().retry
        },
        read_timeout: Duration::from_millis(300),
        proxy_from_env: false,
        ..HttpConfig::default()
    })
    .unwrap();
    let start = std::time::Instant::now();
    let err = get(&f, &server.url("/stall"), None, dir.path())
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "gave up by timeout"
    );
    assert!(
        matches!(err, HttpError::Request { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(server.hits("/stall"), 2);
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/x");
    let err = get(&fetcher(), &url, None, dir.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, HttpError::Request { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(msg.starts_with(&format!("GET {url}: ")), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn checksum_match_keeps_the_file() {
    let server = Server::start(|_, _| ok(b"pinned content"));
    let dir = tempfile::tempdir().unwrap();
    let sum = sha256_of(b"pinned content");
    let got = get(&fetcher(), &server.url("/p"), Some(&sum), dir.path())
        .await
        .unwrap();
    assert_eq!(got.digest.to_string(), sum);
    assert_eq!(std::fs::read(&got.path).unwrap(), b"pinned content");
}

#[tokio::test]
async fn checksum_mismatch_names_both_digests_and_leaves_nothing_behind() {
    let server = Server::start(|_, _| ok(b"tampered content"));
    let dir = tempfile::tempdir().unwrap();
    // A file already there under the name must survive a failed download.
    std::fs::write(dir.path().join("file"), b"previous").unwrap();
    let url = server.url("/p");
    let expected = sha256_of(b"pinned content");
    let actual = sha256_of(b"tampered content");
    let err = get(&fetcher(), &url, Some(&expected), dir.path())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("checksum mismatch for {url}: expected {expected}, got {actual} (16 bytes)")
    );
    assert_eq!(entries(dir.path()), ["file"]);
    assert_eq!(std::fs::read(dir.path().join("file")).unwrap(), b"previous");
    assert_eq!(server.hits("/p"), 1, "a mismatch is not retried");
}

#[tokio::test]
async fn a_bad_checksum_or_url_fails_before_any_request() {
    let server = Server::start(|_, _| ok(b"x"));
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/x");
    let f = fetcher();
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    let err = get(&f, &url, Some(&sha512), dir.path()).await.unwrap_err();
    assert!(
        matches!(&err, HttpError::UnsupportedChecksumAlgorithm { algorithm, .. } if algorithm == "sha512"),
        "{err:?}"
    );
    let err = get(&f, "ftp://127.0.0.1/x", None, dir.path())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported url scheme \"ftp\" in ftp://127.0.0.1/x (only http and https can be downloaded)"
    );
    let err = get(&f, "not a url", None, dir.path()).await.unwrap_err();
    assert!(matches!(err, HttpError::InvalidUrl { .. }), "{err:?}");
    for name in ["../escape", "a/b", "", ".."] {
        let err = f
            .fetch(&url, None, dir.path(), name, &mut |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, HttpError::InvalidFilename { .. }),
            "{name}: {err:?}"
        );
    }
    assert_eq!(server.hits("/x"), 0);
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn a_password_in_the_url_is_not_shown_in_errors() {
    let server = Server::start(|_, _| status(403, &[]));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://user:s3cret@{}/private", server.addr);
    let err = get(&fetcher(), &url, None, dir.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(
        msg.contains(&format!("http://user:xxxxx@{}/private", server.addr)),
        "{msg}"
    );
    assert!(msg.ends_with("403 Forbidden"), "{msg}");
}

#[tokio::test]
async fn a_big_body_streams_to_disk_with_increasing_progress() {
    const SIZE: u64 = 20 * 1024 * 1024;
    let server = Server::start(|_, _| Reply::Big { size: SIZE });
    let dir = tempfile::tempdir().unwrap();
    let mut calls: Vec<(u64, Option<u64>)> = Vec::new();
    let got = fetcher()
        .fetch(
            &server.url("/big.bin"),
            None,
            dir.path(),
            "big.bin",
            &mut |n, total| calls.push((n, total)),
        )
        .await
        .unwrap();

    let mut want = Sha256::new();
    let mut i = 0u64;
    while i < SIZE {
        let n = (SIZE - i).min(1 << 20);
        let piece: Vec<u8> = (i..i + n).map(big_byte).collect();
        want.update(&piece);
        i += n;
    }
    assert_eq!(got.digest, Digest::from_hasher(want));
    assert_eq!(got.size, SIZE);
    assert_eq!(std::fs::metadata(&got.path).unwrap().len(), SIZE);
    assert!(calls.len() > 20, "only {} progress calls", calls.len());
    assert!(calls.iter().all(|&(_, total)| total == Some(SIZE)));
    assert_eq!(calls.first().unwrap().0, 0);
    assert_eq!(calls.last().unwrap().0, SIZE);
    assert!(
        calls.windows(2).all(|w| w[0].0 < w[1].0),
        "progress must increase"
    );
}

#[test]
fn checksum_digest_accepts_sha256_only() {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let d = checksum_digest(&format!("sha256:{hex}")).unwrap();
    assert_eq!(d, Digest::of(b""));

    for algorithm in ["sha384", "sha512", "md5"] {
        let err = checksum_digest(&format!("{algorithm}:{hex}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "unsupported checksum algorithm \"{algorithm}\" in \"{algorithm}:{hex}\" (only sha256 is supported)"
            )
        );
    }
    for bad in [
        hex.to_string(),
        "sha256:abc".to_string(),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{hex}00"),
        "sha256:".to_string(),
    ] {
        let err = checksum_digest(&bad).unwrap_err();
        assert!(
            matches!(&err, HttpError::InvalidChecksum { checksum, .. } if *checksum == bad),
            "{bad}: {err:?}"
        );
    }
}

/// The backoff itself is pinned in `forge_snapshotter::retry`; this pins that a download hands the
/// server's `Retry-After` to it.
#[tokio::test]
async fn retry_after_from_the_server_is_waited_for() {
    let server = Server::start(|_, nth| {
        if nth == 1 {
            status(503, &[("Retry-After", "1")])
        } else {
            ok(b"after a pause")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = HttpFetcher::new(HttpConfig {
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
        },
        proxy_from_env: false,
        ..HttpConfig::default()
    })
    .unwrap();
    let start = std::time::Instant::now();
    get(&f, &server.url("/later"), None, dir.path())
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "retried after {:?}, before the server's Retry-After",
        start.elapsed()
    );
    assert_eq!(server.hits("/later"), 2);
}
