//! The certificates forge trusts for https: the platform's, read once per process (the system
//! store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), else Mozilla's set bundled in the binary.
//! Always a non-empty list, so that setting up a client never fails for want of roots: a container
//! without CA certificates still reaches plain-http and `--insecure-registry` registries, and an
//! https one with the bundled roots. (reqwest's own platform verifier refuses to start without a
//! system store, and oci-client then falls back to a client that panics.)

use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// Where the trusted roots came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSource {
    /// The platform's store (or the files the SSL_CERT_* variables name).
    System,
    /// The platform had none that parsed: Mozilla's roots, built into forge.
    Bundled,
}

/// The roots and their source.
#[derive(Debug)]
pub struct TrustRoots {
    pub certs: Vec<CertificateDer<'static>>,
    pub source: RootSource,
}

/// Installs rustls's crypto provider (ring) for the whole process, once. forge's HTTP clients
/// (oci-client's, login's, `ADD <url>`'s, gix's for git contexts) are built without a provider of
/// their own so that aws-lc is not compiled, and rustls panics at the first client built before
/// one is installed. [`trust_roots`] calls this, so a client made with forge's roots has it; one
/// that is not (gix's) calls it itself. Cheap, and unlike the roots it reads nothing.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Another part of the process may have installed one already; that one is fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

static ROOTS: OnceLock<TrustRoots> = OnceLock::new();

/// Starts loading the roots on a thread of their own, once per process and unless they are
/// loaded already: a build whose registries speak https calls this as it starts, so that its
/// first request (a base image's manifest, soon after) finds them ready instead of reading and
/// parsing a few hundred files first (about 2.5 ms of CPU on Debian). Only once the process may
/// have threads (after any namespace set-up).
pub fn load_in_background() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if ROOTS.get().is_none() {
        STARTED.call_once(|| {
            // Without the thread the first use loads them, as before.
            let _ = std::thread::Builder::new()
                .name("forge-roots".into())
                .spawn(|| {
                    trust_roots();
                });
        });
    }
}

/// This process's roots, loaded on first use. Every client these roots go into also needs the
/// crypto provider, which is installed here too.
pub fn trust_roots() -> &'static TrustRoots {
    install_crypto_provider();
    ROOTS.get_or_init(|| {
        // Unreadable or unparsable files are skipped by the loader (reported in `errors`); what
        // matters here is whether anything usable remains.
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            TrustRoots {
                certs: webpki_root_certs::TLS_SERVER_ROOT_CERTS.to_vec(),
                source: RootSource::Bundled,
            }
        } else {
            TrustRoots {
                certs: found.certs,
                source: RootSource::System,
            }
        }
    })
}

/// Makes reqwest's platform verifier find roots too. oci-client builds a default reqwest client
/// (which reads the platform store, and panics when it is empty) even when it is handed roots, so
/// on a machine without CA certificates the bundled set is written to an anonymous memory file and
/// `SSL_CERT_FILE` names it (`/proc/self/fd/N`). Does nothing when the platform has roots. Steps
/// never see the variable: their environment is built, not inherited.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists (first thing in `main`).
pub unsafe fn prepare_process() -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    // Loading the whole store costs milliseconds at every start (a few hundred files on Debian),
    // which a build that never leaves the store would pay for nothing: one file that holds a
    // certificate is enough to know the platform has roots.
    if platform_store_has_a_certificate() || trust_roots().source == RootSource::System {
        return Ok(());
    }
    // SAFETY: a valid NUL-terminated name; the returned descriptor is checked.
    let fd = unsafe { libc::memfd_create(c"forge-ca-roots".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    for cert in &trust_roots().certs {
        writeln!(file, "-----BEGIN CERTIFICATE-----")?;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert);
        for chunk in b64.as_bytes().chunks(64) {
            file.write_all(chunk)?;
            file.write_all(b"\n")?;
        }
        writeln!(file, "-----END CERTIFICATE-----")?;
    }
    // Kept open for the process's life: the path below names it.
    let fd = file.into_raw_fd();
    // SAFETY: the caller guarantees no other thread reads or writes the environment now.
    unsafe { std::env::set_var("SSL_CERT_FILE", format!("/proc/self/fd/{fd}")) };
    Ok(())
}

/// Whether the store the loader reads ([`rustls_native_certs::load_native_certs`]: the files the
/// SSL_CERT_* variables name when either is set, else the bundle and directories openssl-probe
/// finds) has a file holding a PEM certificate. Looks at the bundle and at most a few files of
/// each directory, parsing nothing.
fn platform_store_has_a_certificate() -> bool {
    use std::path::PathBuf;
    let file = std::env::var_os("SSL_CERT_FILE");
    let dirs = std::env::var_os("SSL_CERT_DIR");
    let (file, dirs): (Option<PathBuf>, Vec<PathBuf>) = if file.is_some() || dirs.is_some() {
        let dirs = dirs
            .map(|d| {
                std::env::split_paths(&d)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        (file.map(PathBuf::from), dirs)
    } else {
        let probed = openssl_probe::probe();
        (probed.cert_file, probed.cert_dir)
    };
    file.as_deref().is_some_and(holds_a_certificate)
        || dirs.iter().any(|dir| {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .take(8)
                    .any(|e| holds_a_certificate(&e.path()))
            })
        })
}

/// Whether the first 256 KiB of `path` hold a PEM certificate's first line.
fn holds_a_certificate(path: &std::path::Path) -> bool {
    use std::io::Read;
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(256 * 1024).read_to_end(&mut head))
        .is_ok_and(|_| head.windows(BEGIN.len()).any(|w| w == BEGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_told_by_its_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("bundle.pem");
        std::fs::write(&pem, "# a comment\n-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(holds_a_certificate(&pem));
        assert!(!holds_a_certificate(&empty));
        assert!(!holds_a_certificate(&dir.path().join("missing.pem")));
        assert!(
            !holds_a_certificate(dir.path()),
            "a directory is not a bundle"
        );
    }

    #[test]
    fn there_are_always_roots() {
        let roots = trust_roots();
        assert!(!roots.certs.is_empty());
        if roots.source == RootSource::Bundled {
            assert_eq!(
                roots.certs.len(),
                webpki_root_certs::TLS_SERVER_ROOT_CERTS.len()
            );
        }
    }
}
