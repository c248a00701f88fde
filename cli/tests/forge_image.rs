//! Issue 13: the static forge binary and forge's own image (image/build.sh, made by
//! .ci/setup.d/70-forge-image.sh), run by a real docker with its default settings.

mod common;

use std::fs;

use common::printed;

/// `$VAR` (set by .ci/setup.d/70-forge-image.sh), or `None` after a SKIP line.
fn from_env(var: &str) -> Option<String> {
    std::env::var(var).ok().or_else(|| {
        forge_testsupport::skip(format_args!(
            "{var} is not set (run .ci/setup.d/70-forge-image.sh)"
        ))
    })
}

/// The static binary in a busybox container, which has no CA certificates at all: pulling from the
/// loopback registry over plain http works, and a registry that must be reached over https (a name
/// that is not loopback, pointed at the plain-http registry by --add-host) fails with an error
/// naming it, never a panic.
#[test]
fn the_static_binary_needs_no_ca_certificates_for_plain_http() {
    if !forge_testsupport::root("docker runs containers as root here") {
        return;
    }
    let Some(docker) = forge_testsupport::docker() else {
        return;
    };
    let Some(forge) = from_env("FORGE_TEST_STATIC_FORGE") else {
        return;
    };
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let port = busybox
        .split('/')
        .next()
        .and_then(|r| r.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap();
    docker.pull(&busybox);
    let run = |args: &[&str]| {
        docker
            .cmd()
            .args(["run", "--rm", "--network", "host"])
            .args(["--add-host", "registry.test:127.0.0.1", "-v"])
            .arg(format!("{forge}:/forge:ro"))
            .arg(&busybox)
            .arg("/forge")
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["info"]);
    assert!(
        printed(&o).contains("tls roots      ") && printed(&o).contains("bundled"),
        "no CA certificates in busybox: the bundled roots: {}",
        printed(&o)
    );
    let o = run(&["pull", "--root", "/tmp/store", &busybox]);
    assert!(o.status.success(), "{}", printed(&o));
    let remote = format!("registry.test:{port}/forge-test/busybox:latest");
    let o = run(&["pull", "--root", "/tmp/store", &remote]);
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains(&format!("registry.test:{port}")), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// forge's image, as root in a container with docker's defaults, builds and pushes an image that
/// docker then runs; `forge version` in it says it is the static build.
#[test]
fn forges_image_builds_and_pushes_in_a_default_container() {
    if !forge_testsupport::root("docker runs containers as root here") {
        return;
    }
    let Some(docker) = forge_testsupport::docker() else {
        return;
    };
    let Some(image) = from_env("FORGE_TEST_FORGE_IMAGE") else {
        return;
    };
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-image");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("msg.txt"), "from forge's image\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {busybox}\nCOPY msg.txt /msg.txt\nRUN cat /msg.txt > /out.txt && \
             test -c /dev/null\nCMD [\"cat\", \"/out.txt\"]\n"
        ),
    )
    .unwrap();
    docker.pull(&image);
    let target = format!(
        "{registry}/forge-test/from-forge-image-{}:1",
        forge_testsupport::unique()
    );
    let o = docker
        .cmd()
        .args(["run", "--rm", "--network", "host", "-v"])
        .arg(format!("{}:/workspace:ro", ctx.display()))
        .arg(&image)
        .args([
            "forge",
            "build",
            "--progress",
            "plain",
            "-t",
            &target,
            "--push",
            ".",
        ])
        .output()
        .unwrap();
    let text = printed(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("isolated with chroot"), "{text}");
    docker.pull(&target);
    assert_eq!(docker.run_offline(&target), "from forge's image\n");
    // A shell for CI services' job scripts.
    let sh = docker
        .cmd()
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            "forge version",
        ])
        .output()
        .unwrap();
    assert!(sh.status.success(), "{}", printed(&sh));
}
