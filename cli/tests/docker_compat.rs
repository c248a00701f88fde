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
