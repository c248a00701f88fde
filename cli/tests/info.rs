//! `forge info` (issue 13): what it reports agrees with what the test reads itself.

mod common;

use std::process::Command;

use common::printed;

fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(key)
                .filter(|r| r.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no {key} line in:\n{out}"))
        .trim()
}

#[test]
fn info_reports_the_isolation_a_build_gets_and_the_store() {
    if !forge_testsupport::root("forge info is run as root and as FORGE_TEST_USER") {
        return;
    }
    let Some(user) = forge_testsupport::test_user() else {
        return;
    };
    let ws = forge_testsupport::shared_scratch("forge-info", Some(&user));
    let root_store = ws.path().join("root-store");
    let o = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["info", "--root"])
        .arg(&root_store)
        .output()
        .unwrap();
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(field(&out, "user"), "root (uid 0, gid 0)");
    assert_eq!(
        field(&out, "user namespace"),
        "root on the host: no user namespace needed"
    );
    // The probe a build runs: on this host, as root, every namespace and a fresh /proc.
    assert_eq!(field(&out, "isolation"), "namespaces", "{out}");
    assert_eq!(field(&out, "namespaces"), "work", "{out}");
    assert_eq!(
        field(&out, "chroot"),
        "works, device nodes can be made",
        "{out}"
    );
    assert!(
        field(&out, "store").starts_with(&root_store.display().to_string()),
        "{out}"
    );
    assert!(field(&out, "store").contains("GiB free of"), "{out}");
    let snapshotter = field(&out, "snapshotter");
    assert!(
        ["overlayfs ", "fuse-overlayfs ", "copy "]
            .iter()
            .any(|b| snapshotter.starts_with(b)),
        "{out}"
    );

    let forge = forge_testsupport::install_exe(env!("CARGO_BIN_EXE_forge"), ws.path());
    let user_store = ws.path().join("user-store");
    let o = Command::new("runuser")
        .args(["-u", &user.name, "--", "env"])
        .arg(format!("FORGE_ROOT={}", user_store.display()))
        .arg(&forge)
        .arg("info")
        .output()
        .unwrap();
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        field(&out, "user"),
        format!("{} (uid {}, gid {})", user.name, user.uid, user.gid)
    );
    let (u, g) = (&user.subuid, &user.subgid);
    assert_eq!(
        field(&out, "user namespace"),
        format!(
            "rootless: a user namespace with uids {}-{} ({} ids) and gids {}-{} ({} ids) mapped",
            u.start,
            u.start as u64 + u.count as u64 - 1,
            u.count,
            g.start,
            g.start as u64 + g.count as u64 - 1,
            g.count
        )
    );
    assert!(
        field(&out, "store").starts_with(&user_store.display().to_string()),
        "{out}"
    );
    // Made as a build makes it: the user's alone (it was made with the umask's mode).
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(&user_store).unwrap().mode() & 0o7777,
        0o700
    );

    // Without a home (HOME and XDG_DATA_HOME unset, no --root) there is no store: that is said
    // on its line, and the rest is still printed (it stopped at the store), with exit 1.
    let o = Command::new("runuser")
        .args([
            "-u",
            &user.name,
            "--",
            "env",
            "-u",
            "HOME",
            "-u",
            "XDG_DATA_HOME",
            "-u",
        ])
        .arg("FORGE_ROOT")
        .arg(&forge)
        .arg("info")
        .output()
        .unwrap();
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(field(&out, "store").starts_with("none: "), "{out}");
    assert!(
        field(&out, "snapshotter").starts_with("not probed"),
        "{out}"
    );
    field(&out, "tls roots");
    field(&out, "containerd");
}

/// `forge info` names the registries the credential files configure, and the file, never a
/// secret; with no file, it says every registry is anonymous.
#[test]
fn info_names_the_registries_with_credentials_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpzM2NyZXQ="},
            "https://index.docker.io/v1/": {"auth": "dXNlcjpzM2NyZXQ="}},
            "credHelpers": {"ghcr.io": "pass"}, "credsStore": "secretservice"}"#,
    )
    .unwrap();
    let info = |config: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["info", "--root"])
            .arg(dir.path().join("store"))
            .env("DOCKER_CONFIG", config)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        let out = printed(&o);
        assert!(o.status.success(), "{out}");
        out
    };
    let out = info(&docker);
    assert_eq!(
        field(&out, "registries"),
        format!(
            "127.0.0.1:5000, docker.io, ghcr.io; others through docker-credential-secretservice \
             (in {})",
            docker.join("config.json").display()
        )
    );
    assert!(!out.contains("dXNlcjpzM2NyZXQ="), "{out}");
    let out = info(&dir.path().join("none"));
    assert_eq!(
        field(&out, "registries"),
        "no credentials configured (every registry anonymous)"
    );
}

/// The mirrors a `registries.conf` sets are listed with the file they come from; a file that
/// does not parse is said so, naming it.
#[test]
fn info_lists_the_registry_mirrors() {
    let dir = forge_testsupport::scratch("forge-info-mirrors-");
    let conf = dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        "[[registry]]\nprefix = \"docker.io\"\nblocked = true\n\n[[registry.mirror]]\n\
         location = \"127.0.0.1:5000/hub\"\n",
    )
    .unwrap();
    let info = |conf: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["info", "--root"])
            .arg(dir.path().join("store"))
            .env("FORGE_REGISTRIES_CONF", conf)
            .output()
            .unwrap();
        printed(&o)
    };
    let out = info(&conf);
    assert_eq!(
        field(&out, "mirrors"),
        format!(
            "docker.io -> 127.0.0.1:5000/hub (the registry itself blocked) (in {})",
            conf.display()
        ),
        "{out}"
    );
    std::fs::write(&conf, "[[registry]\n").unwrap();
    let out = info(&conf);
    let line = field(&out, "mirrors");
    assert!(
        line.starts_with("cannot read registries.conf") && line.contains("registries.conf"),
        "{out}"
    );
}
