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

/// This process's roots, loaded on first use.
pub fn trust_roots() -> &'static TrustRoots {
    static ROOTS: OnceLock<TrustRoots> = OnceLock::new();
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
    if trust_roots().source == RootSource::System {
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

#[cfg(test)]
mod tests {
    use super::*;

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
