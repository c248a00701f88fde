//! Issue 13, TLS roots that never panic: in a container without CA certificates (here: SSL_CERT_FILE
//! and SSL_CERT_DIR naming nothing, which the platform store honours) forge pulls from a plain-http
//! registry as before, and an https registry's failure is an error naming the registry, never the
//! panic `Client::new(): No CA certificates were loaded from the system`.

use std::process::Command;

mod common;
use common::printed;

/// `forge ARGS` with no CA certificates to be found.
fn forge_without_roots(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .env("SSL_CERT_FILE", "/nonexistent/forge-test-ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent/forge-test-certs")
        .output()
        .expect("run forge")
}

/// A name of this machine's loopback that forge does not take for loopback (so it speaks https to
/// it), from /etc/hosts.
fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts.lines().find_map(|l| {
        let mut words = l.split('#').next()?.split_whitespace();
        let ip: std::net::IpAddr = words.next()?.parse().ok()?;
        if !ip.is_loopback() {
            return None;
        }
        words.find(|w| *w != "localhost").map(str::to_string)
    })
}

#[test]
fn without_ca_certificates_plain_http_works_and_https_fails_naming_the_registry() {
    let Some(image) = forge_testsupport::busybox_image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = forge_without_roots(&root, &["pull", &image]);
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    let Some(alias) = loopback_alias() else {
        forge_testsupport::missing("/etc/hosts names no loopback alias besides localhost");
        return;
    };
    // A port that answers but speaks no TLS: the handshake fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            drop(conn);
        }
    });
    let registry = format!("{alias}:{port}");
    let out = forge_without_roots(&root, &["pull", &format!("{registry}/x:1")]);
    let text = printed(&out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains(&format!("error: registry {registry}")),
        "{text}"
    );
}
