//! Where pull finds registry logins: Docker's config.json (`auths`, `credHelpers`, `credsStore`)
//! and podman's auth.json, in podman's order, with helpers run through the
//! `docker-credential-<name>` protocol (a shell-script helper stands in for a real one).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use forge_snapshotter::registry::{AuthError, AuthResolver, Credential};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn basic(u: &str, p: &str) -> Option<Credential> {
    Some(Credential::Basic {
        username: u.into(),
        password: p.into(),
    })
}

fn write(path: &Path, json: serde_json::Value) {
    std::fs::write(path, json.to_string()).unwrap();
}

/// A helper that answers for `known` with user/secret and says "not found" for anything else.
fn helper(dir: &Path, name: &str, known: &str, user: &str, secret: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = \"{known}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn docker_config_auths_in_every_key_form() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    write(
        &cfg,
        serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
            "http://127.0.0.1:5000": {"auth": b64("local:pw:with:colons")},
            "quay.io": {"username": "q", "password": "qp"},
            "ghcr.io": {"identitytoken": "refresh-me"},
        }}),
    );
    let r = AuthResolver::with_files([cfg.clone()]);
    assert_eq!(
        r.credential("docker.io", "library/busybox").unwrap(),
        basic("hubuser", "hubpass")
    );
    assert_eq!(
        r.credential("127.0.0.1:5000", "x").unwrap(),
        basic("local", "pw:with:colons")
    );
    assert_eq!(r.credential("quay.io", "a/b").unwrap(), basic("q", "qp"));
    assert_eq!(
        r.credential("ghcr.io", "a").unwrap(),
        Some(Credential::IdentityToken("refresh-me".into()))
    );
    assert_eq!(r.credential("example.com", "a").unwrap(), None);
}

#[test]
fn podman_files_come_first_and_scoped_keys_win() {
    let dir = tempfile::tempdir().unwrap();
    let podman = dir.path().join("auth.json");
    let docker = dir.path().join("config.json");
    write(
        &podman,
        serde_json::json!({"auths": {
            "registry.example.com": {"auth": b64("podman:any")},
            "registry.example.com/team": {"auth": b64("podman:team")},
            "registry.example.com/team/app": {"auth": b64("podman:app")},
        }}),
    );
    write(
        &docker,
        serde_json::json!({"auths": {
            "registry.example.com": {"auth": b64("docker:x")},
            "other.example.com": {"auth": b64("docker:other")},
        }}),
    );
    let r = AuthResolver::with_files([podman, docker]);
    assert_eq!(
        r.credential("registry.example.com", "team/app").unwrap(),
        basic("podman", "app")
    );
    assert_eq!(
        r.credential("registry.example.com", "team/lib").unwrap(),
        basic("podman", "team")
    );
    assert_eq!(
        r.credential("registry.example.com", "solo").unwrap(),
        basic("podman", "any")
    );
    // Nothing for it in the first file: the next file answers.
    assert_eq!(
        r.credential("other.example.com", "x").unwrap(),
        basic("docker", "other")
    );
}

#[test]
fn missing_files_are_skipped_and_broken_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let r = AuthResolver::with_files([dir.path().join("absent.json")]);
    assert_eq!(r.credential("docker.io", "library/x").unwrap(), None);
    let err = AuthResolver::with_files([broken.clone()])
        .credential("docker.io", "library/x")
        .unwrap_err();
    assert!(matches!(err, AuthError::Parse { .. }));
    assert!(
        err.to_string().contains(&broken.display().to_string()),
        "{err}"
    );

    let bad_b64 = dir.path().join("bad.json");
    write(
        &bad_b64,
        serde_json::json!({"auths": {"quay.io": {"auth": "%%%"}}}),
    );
    let err = AuthResolver::with_files([bad_b64])
        .credential("quay.io", "x")
        .unwrap_err();
    assert!(err.to_string().contains("quay.io"), "{err}");
}

#[test]
fn cred_helpers_and_creds_store_through_the_helper_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    helper(&bin, "fake", "registry.example.com", "helped", "h-secret");
    helper(
        &bin,
        "store",
        "https://index.docker.io/v1/",
        "hub-from-store",
        "s-secret",
    );
    let cfg = dir.path().join("config.json");
    write(
        &cfg,
        serde_json::json!({
            "credHelpers": {"registry.example.com": "fake"},
            "credsStore": "store",
            "auths": {"inline.example.com": {"auth": b64("inline:pw")}},
        }),
    );
    let r = AuthResolver::with_files([cfg]).helper_path(&bin);
    assert_eq!(
        r.credential("registry.example.com", "x").unwrap(),
        basic("helped", "h-secret")
    );
    // Docker Hub is asked of the store by its legacy server URL.
    assert_eq!(
        r.credential("docker.io", "library/busybox").unwrap(),
        basic("hub-from-store", "s-secret")
    );
    // The store has nothing for this one: the inline entry answers.
    assert_eq!(
        r.credential("inline.example.com", "x").unwrap(),
        basic("inline", "pw")
    );
    assert_eq!(r.credential("nowhere.example.com", "x").unwrap(), None);

    // A helper that is not installed is an error naming it.
    let cfg2 = dir.path().join("config2.json");
    write(&cfg2, serde_json::json!({"credsStore": "not-installed"}));
    let err = AuthResolver::with_files([cfg2])
        .helper_path(&bin)
        .credential("quay.io", "x")
        .unwrap_err();
    assert!(
        err.to_string().contains("docker-credential-not-installed"),
        "{err}"
    );
}
