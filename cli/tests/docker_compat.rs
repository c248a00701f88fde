//! `forge build` where a Docker user's command line reaches for docker's flags (issue 14).

mod common;

use std::fs;

use common::{forge, printed};

/// `--add-host NAME:IP` puts the name in every RUN step's /etc/hosts, is part of the step's key
/// (another address runs the step again, as BuildKit does), and refuses what docker's daemon
/// would resolve itself (`host-gateway`) or what is no address.
#[test]
fn add_host_reaches_run_steps_and_their_cache_key() {
    if !forge_testsupport::root_and_busybox("builds use the embedded runner as root") {
        return;
    }
    let Some(image) = forge_testsupport::busybox_image() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-add-host");
    let root = ws.path().join("store");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nRUN cat /etc/hosts > /hosts.txt\n"),
    )
    .unwrap();
    let build = |host: &str, out: &str| {
        let dest = ws.path().join(out);
        let o = forge(
            &root,
            &[
                "build",
                "--progress",
                "plain",
                "--add-host",
                host,
                "-o",
                &format!("type=local,dest={}", dest.display()),
                &ctx.to_string_lossy(),
            ],
        );
        assert!(o.status.success(), "{}", printed(&o));
        fs::read_to_string(dest.join("hosts.txt")).unwrap()
    };
    let first = build("registry.internal:10.1.2.3", "one");
    assert!(first.contains("10.1.2.3\tregistry.internal"), "{first}");
    let v6 = build("registry.internal=[fd00::7]", "two");
    assert!(v6.contains("fd00::7\tregistry.internal"), "{v6}");
    assert!(
        !v6.contains("10.1.2.3"),
        "the earlier address came from the cache:\n{v6}"
    );

    for (bad, why) in [
        (
            "gw:host-gateway",
            "host-gateway is docker's daemon's address",
        ),
        ("nohost", "expected NAME:IP"),
        ("name:999.1.1.1", "is not an IP address"),
    ] {
        let o = forge(&root, &["build", "--add-host", bad, &ctx.to_string_lossy()]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", printed(&o));
        assert!(printed(&o).contains(why), "{bad}: {}", printed(&o));
    }
}

/// `--label KEY` (no value) is an empty label, as docker makes it; `--build-arg
/// SOURCE_DATE_EPOCH=N` (BuildKit's form) fixes the image's time and stays a build argument.
#[test]
fn a_bare_label_is_empty_and_source_date_epoch_comes_as_a_build_arg() {
    if !forge_testsupport::root_and_busybox("builds use the embedded runner as root") {
        return;
    }
    let Some(image) = forge_testsupport::busybox_image() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-label-epoch");
    let root = ws.path().join("store");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}\nARG SOURCE_DATE_EPOCH\nRUN echo \"epoch $SOURCE_DATE_EPOCH\" > /epoch\n"
        ),
    )
    .unwrap();
    let o = forge(
        &root,
        &[
            "build",
            "-q",
            "-t",
            "local/epoch:1",
            "--label",
            "org.example.flag",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            &ctx.to_string_lossy(),
        ],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let inspected = forge(&root, &["inspect", "local/epoch:1"]);
    let doc: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        doc["config"]["config"]["Labels"]["org.example.flag"], "",
        "{doc}"
    );
    assert_eq!(doc["config"]["created"], "2023-11-14T22:13:20Z", "{doc}");

    let bad = forge(
        &root,
        &[
            "build",
            "--build-arg",
            "SOURCE_DATE_EPOCH=soon",
            &ctx.to_string_lossy(),
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        printed(&bad).contains("--build-arg SOURCE_DATE_EPOCH=\"soon\" is not a number of seconds"),
        "{}",
        printed(&bad)
    );
}

/// `# syntax=` naming another frontend is said (forge builds with its own); docker/dockerfile
/// forms pass quietly.
#[test]
fn a_syntax_directive_naming_another_frontend_is_warned_about() {
    let ws = forge_testsupport::scratch("forge-syntax");
    for (directive, warned) in [
        ("example.com/frontends/custom:2", true),
        ("docker/dockerfile:1.7-labs", false),
    ] {
        let ctx = ws.path().join(if warned { "other" } else { "builtin" });
        fs::create_dir_all(&ctx).unwrap();
        fs::write(
            ctx.join("Dockerfile"),
            format!("# syntax={directive}\nFROM scratch\nCOPY Dockerfile /\n"),
        )
        .unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
            .arg("graph")
            .arg(&ctx)
            .output()
            .unwrap();
        let out = printed(&o);
        assert!(o.status.success(), "{out}");
        assert_eq!(
            out.contains(&format!(
                "line 1: `# syntax={directive}` names a frontend forge does not run"
            )),
            warned,
            "{out}"
        );
    }
}
