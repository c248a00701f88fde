//! Issue 13: `forge build` inside the containers CI services give, started by a real docker with its
//! default settings (no `--privileged`, no added capability, the default seccomp profile), and with
//! the settings that allow more. Inside, forge probes what it may do, picks the best isolation and
//! builds a multi-stage Dockerfile (COPY, ADD, RUN with a cache mount, a setuid binary run by a
//! non-root user) and pushes it to the loopback registry; docker then pulls and runs the image.
//!
//! The container shares the host's network (`--network host`: the test dockerd has no bridge), which
//! is how it reaches the registry on 127.0.0.1; that grants no privilege.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::printed;
use forge_testsupport::Docker;

/// What the image built here prints when docker runs it: the COPY and ADD contents, the cache
/// mount's count, and `id -u` of a non-root step next to what a setuid-root copy of `id` says (0:
/// setuid works in steps, as in BuildKit's).
const EXPECTED: &str = "hello\ninner\n1\nuser:1000 setuid:0\n";

struct Setup {
    docker: Docker,
    ws: tempfile::TempDir,
    ctx: PathBuf,
    registry: String,
    debian: String,
}

fn setup(name: &str) -> Option<Setup> {
    if !forge_testsupport::root("docker runs containers as root here") {
        return None;
    }
    let docker = forge_testsupport::docker()?;
    let registry = forge_testsupport::registry()?;
    let debian = forge_testsupport::debian_image()?;
    let busybox = forge_testsupport::busybox_image()?;
    let ws = forge_testsupport::scratch(name);
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(ctx.join("data")).unwrap();
    fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    fs::write(ctx.join("data/inner.txt"), "inner\n").unwrap();
    // ADD extracts a local tar: made by tar(1), the judge, not by forge.
    let tar = Command::new("tar")
        .args(["-cf", "data.tar", "-C", "data", "inner.txt"])
        .current_dir(&ctx)
        .status()
        .unwrap();
    assert!(tar.success());
    fs::remove_dir_all(ctx.join("data")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {debian} AS build\n\
             COPY hello.txt /src/hello.txt\n\
             ADD data.tar /src/data/\n\
             RUN --mount=type=cache,target=/var/cache/forge-test,id=ci-containers \
                 set -e; echo run >> /var/cache/forge-test/count; \
                 cat /src/hello.txt /src/data/inner.txt > /out.txt; \
                 wc -l < /var/cache/forge-test/count >> /out.txt; \
                 test -c /dev/null; echo quiet > /dev/null\n\
             RUN useradd -m dev && cp /usr/bin/id /usr/local/bin/rootid && \
                 chmod u+s /usr/local/bin/rootid\n\
             USER dev\n\
             RUN echo \"user:$(id -u) setuid:$(rootid -u)\" > /home/dev/u.txt\n\
             FROM {busybox}\n\
             COPY --from=build /out.txt /out.txt\n\
             COPY --from=build /home/dev/u.txt /u.txt\n\
             CMD [\"cat\", \"/out.txt\", \"/u.txt\"]\n"
        ),
    )
    .unwrap();
    docker.pull(&debian);
    Some(Setup {
        docker,
        ws,
        ctx,
        registry,
        debian,
    })
}

impl Setup {
    /// `forge ARGS` in a fresh container of the Debian image, with `docker_args` added to
    /// `docker run`; forge is the binary under test, bound in read-only, its store in the
    /// container's own filesystem.
    fn forge_in_container(&self, docker_args: &[&str], args: &[&str]) -> Output {
        self.forge_in_container_with(&self.ctx, docker_args, args)
    }

    /// [`Setup::forge_in_container`] with `ctx` bound at /ctx instead of the setup's context.
    fn forge_in_container_with(
        &self,
        ctx: &std::path::Path,
        docker_args: &[&str],
        args: &[&str],
    ) -> Output {
        let forge = env!("CARGO_BIN_EXE_forge");
        self.docker
            .cmd()
            .args(["run", "--rm", "--network", "host"])
            .args(docker_args)
            .args(["-e", "SOURCE_DATE_EPOCH=0", "-v"])
            .arg(format!("{forge}:/usr/local/bin/forge:ro"))
            .arg("-v")
            .arg(format!("{}:/ctx:ro", ctx.display()))
            .arg(&self.debian)
            .arg("forge")
            .args(args)
            .output()
            .unwrap()
    }

    fn reference(&self, tag: &str) -> String {
        format!(
            "{}/forge-test/ci-containers-{}:{tag}",
            self.registry,
            forge_testsupport::unique()
        )
    }

    /// Builds and pushes in a container, then has docker pull and run the image; returns forge's
    /// output and the image reference.
    fn build_push_run(&self, docker_args: &[&str], tag: &str) -> (String, String) {
        let image = self.reference(tag);
        let o = self.forge_in_container(
            docker_args,
            &[
                "build",
                "--progress",
                "plain",
                "-t",
                &image,
                "--push",
                "/ctx",
            ],
        );
        let out = printed(&o);
        assert!(o.status.success(), "docker run {docker_args:?}: {out}");
        self.docker.pull(&image);
        assert_eq!(self.docker.run_offline(&image), EXPECTED, "{out}");
        (out, image)
    }
}

/// A registry blob or manifest, fetched with curl (an independent client).
fn fetch(registry: &str, path: &str, accept: &str) -> Vec<u8> {
    let o = Command::new("curl")
        .args(["-fsS", "-H", &format!("Accept: {accept}")])
        .arg(format!("http://{registry}/v2/{path}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", printed(&o));
    o.stdout
}

/// The layer digests of `image` (a `registry/repo:tag` reference), in order.
fn layers(registry: &str, image: &str) -> Vec<String> {
    let rest = image.strip_prefix(&format!("{registry}/")).unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    let manifest = fetch(
        registry,
        &format!("{repo}/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{repo}@{}", l["digest"].as_str().unwrap()))
        .collect()
}

/// The entries of a pushed layer as tar(1) lists them: mode, owner, name.
fn entries(registry: &str, layer: &str) -> Vec<String> {
    let (repo, digest) = layer.split_once('@').unwrap();
    let blob = fetch(
        registry,
        &format!("{repo}/blobs/{digest}"),
        "application/octet-stream",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer");
    fs::write(&file, blob).unwrap();
    let o = Command::new("tar")
        .arg("-tvzf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", printed(&o));
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5])
        })
        .collect();
    v.sort();
    v
}

/// Root in a container with docker's defaults: no namespace can be made and nothing mounted, so
/// forge says it uses the chroot isolation and what that gives up, and the build works. The same
/// build outside the container (namespaces, overlayfs) gives the same layers but one: overlayfs
/// copies a file up when a step opens it for writing, unchanged or not, and useradd opens
/// /etc/.pwd.lock that way, so the overlay layer carries that unchanged file and the copied
/// snapshot's diff (which compares content) does not.
#[test]
fn a_default_container_builds_as_root_with_the_chroot_isolation() {
    let Some(s) = setup("forge-ci-default") else {
        return;
    };
    let (out, inside) = s.build_push_run(&[], "default");
    assert!(
        out.contains("RUN steps are isolated with chroot, which gives up:"),
        "{out}"
    );
    assert!(out.contains("no /proc in steps"), "{out}");

    let root = s.ws.path().join("host-store");
    let outside = s.reference("host");
    let o = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--progress", "plain", "--root"])
        .arg(&root)
        .args(["-t", &outside, "--push"])
        .arg(&s.ctx)
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", printed(&o));
    assert!(!printed(&o).contains("isolated with"), "{}", printed(&o));
    let (a, b) = (layers(&s.registry, &inside), layers(&s.registry, &outside));
    assert_eq!(a.len(), b.len());
    let digest = |l: &String| l.split_once('@').unwrap().1.to_string();
    // Entries found in only one of two layers that differ.
    let (mut only_inside, mut only_outside) = (Vec::new(), Vec::new());
    for (x, y) in a.iter().zip(&b) {
        if digest(x) == digest(y) {
            continue;
        }
        let (ex, ey) = (entries(&s.registry, x), entries(&s.registry, y));
        only_outside.extend(ey.iter().filter(|e| !ex.contains(e)).cloned());
        only_inside.extend(ex.iter().filter(|e| !ey.contains(e)).cloned());
    }
    assert_eq!(
        only_inside,
        Vec::<String>::new(),
        "only in the chroot build's layers"
    );
    let explained = ["-rw------- root/root etc/.pwd.lock".to_string()];
    assert!(
        only_outside.iter().all(|e| explained.contains(e)),
        "only in the overlay build's layers: {only_outside:?}"
    );
}

/// With the settings that allow namespaces (SYS_ADMIN, seccomp and AppArmor unconfined) the probe
/// picks them; with only seccomp unconfined, root still has no SYS_ADMIN, so chroot it is. Both
/// builds push an image docker runs.
#[test]
fn the_probe_picks_the_best_mode_each_container_allows() {
    let Some(s) = setup("forge-ci-modes") else {
        return;
    };
    let full = [
        "--cap-add",
        "SYS_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
    ];
    // Without CAP_NET_ADMIN a network namespace's loopback stays down: steps keep the
    // container's network, and forge says so.
    let (out, _) = s.build_push_run(&full, "sysadmin");
    assert!(
        out.contains("RUN steps are isolated with namespaces (the surrounding network)"),
        "{out}"
    );
    let info = printed(&s.forge_in_container(&full, &["info"]));
    assert!(
        info.lines()
            .any(|l| l.starts_with("isolation      namespaces (the surrounding network)")),
        "{info}"
    );
    let net_admin = [&full[..], &["--cap-add", "NET_ADMIN"]].concat();
    let (out, _) = s.build_push_run(&net_admin, "netadmin");
    assert!(
        !out.contains("isolated with"),
        "namespaces give nothing up: {out}"
    );

    let seccomp_only = ["--security-opt", "seccomp=unconfined"];
    let (out, _) = s.build_push_run(&seccomp_only, "seccomp");
    assert!(out.contains("isolated with chroot"), "{out}");
    let info = printed(&s.forge_in_container(&seccomp_only, &["info"]));
    assert!(
        info.contains(
            "namespaces   refused: unshare mount, PID, IPC, UTS and network namespaces: EPERM"
        ),
        "{info}"
    );
}

/// A non-root user: in docker's default container no user namespace can be made, and forge says
/// what would allow one; with seccomp unconfined, a user namespace works, and the probe finds that
/// a fresh /proc is refused there (docker masks paths of the container's /proc), so steps get the
/// container's /proc.
#[test]
fn a_non_root_user_gets_a_clear_refusal_or_the_namespaces_the_container_allows() {
    let Some(s) = setup("forge-ci-user") else {
        return;
    };
    let user = ["--user", "1000:1000", "-e", "HOME=/tmp"];
    let o = s.forge_in_container(&user, &["build", "/ctx"]);
    let out = printed(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("cannot enter a user namespace"), "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    for setting in [
        "--security-opt seccomp=unconfined",
        "securityContext",
        "[runners.docker]",
        "kernel.apparmor_restrict_unprivileged_userns=0",
    ] {
        assert!(out.contains(setting), "{setting} in: {out}");
    }

    let unconfined = [&user[..], &["--security-opt", "seccomp=unconfined"]].concat();
    let info = printed(&s.forge_in_container(&unconfined, &["info"]));
    assert!(
        info.lines()
            .any(|l| l.starts_with("isolation      namespaces (the surrounding /proc)")),
        "{info}"
    );
    assert!(
        info.contains("rootless with only the caller's own ids mapped"),
        "{info}"
    );

    // That user builds: without newuidmap in the image only its own id is mapped (root inside),
    // so the base must be root-owned throughout; busybox is.
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let ctx = s.ws.path().join("user-ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("hello.txt"), "hello from a user\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {busybox}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /out.txt\n\
             CMD [\"cat\", \"/out.txt\"]\n"
        ),
    )
    .unwrap();
    let image = s.reference("user");
    let o = s.forge_in_container_with(
        &ctx,
        &unconfined,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            &image,
            "--push",
            "/ctx",
        ],
    );
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("isolated with namespaces (the surrounding /proc)"),
        "{out}"
    );
    s.docker.pull(&image);
    assert_eq!(s.docker.run_offline(&image), "hello from a user\n");
}

/// C11: a root step under the chroot isolation held CAP_SYS_CHROOT, with which root leaves a
/// chroot (chroot into a subdirectory, then `..` up past the old root): it read the job's
/// environment in the container's /proc and forge's registry credentials, and wrote the store.
/// The step no longer gets it: chroot(2) fails (busybox's `chroot` applet is the probe), while a
/// granted `RUN --security=insecure` step keeps it, and forge's note says so. Nor CAP_MKNOD: a
/// step made /dev/kmsg in its root, a directory of the machine's, and wrote the machine's kernel log.
#[test]
fn chroot_steps_cannot_chroot_or_mknod_unless_insecure() {
    if !forge_testsupport::root_and_busybox("the chroot isolation needs root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-chroot-caps");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let build = |dockerfile: &str, extra: &[&str]| {
        fs::write(
            ctx.join("Dockerfile"),
            format!("FROM {busybox}\n{dockerfile}"),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_forge"))
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--isolation",
                "chroot",
                "--root",
            ])
            .arg(ws.path().join("store"))
            .args(extra)
            .arg(&ctx)
            .output()
            .unwrap()
    };
    let o = build("RUN chroot / true\n", &[]);
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.contains("less CAP_SYS_CHROOT"), "{text}");
    assert!(text.contains("and CAP_MKNOD"), "{text}");
    // Nor a device node: the root is a directory of the machine's, which no nodev mount holds, so
    // /dev/kmsg made there took a line into the machine's kernel log.
    let o = build(
        "RUN mknod /km c 1 11 && echo forge-chroot-mknod > /km\n",
        &[],
    );
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    // Another step as root still has the rest of docker's set (chown, fifos).
    let o = build(
        "RUN chown 12:34 /tmp && ls -ldn /tmp && mkfifo /tmp/f\n",
        &[],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let o = build(
        "RUN --security=insecure chroot / true\n",
        &["--allow", "security.insecure"],
    );
    assert!(o.status.success(), "{}", printed(&o));
}

/// C14, C15: a container started with `--cap-drop ALL`, or a store on a noexec tmpfs (docker's
/// `--tmpfs` default), passed the chroot probe and failed later, deep in a base image's unpack
/// ("changing the owner: Operation not permitted", blamed on a RUN step) or at the step's exec
/// ("exec /bin/sh: Permission denied"). The probe now refuses both, naming the capability or the
/// mount and what to do. Played on this host: setpriv drops CAP_CHOWN from forge's bounding set,
/// and a tmpfs mounted noexec holds the store.
#[test]
fn the_chroot_probe_names_a_dropped_capability_or_a_noexec_store() {
    if !forge_testsupport::root_and_busybox("the chroot isolation needs root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(_) = forge_testsupport::tool("setpriv") else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-chroot-probe");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {busybox}\nRUN true\n"),
    )
    .unwrap();
    let forge = env!("CARGO_BIN_EXE_forge");
    let o = Command::new("setpriv")
        .args(["--bounding-set", "-chown", "--", forge])
        .args(["build", "--isolation", "chroot", "--root"])
        .arg(ws.path().join("store"))
        .arg(&ctx)
        .output()
        .unwrap();
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("--isolation chroot does not work here: this process lacks CAP_CHOWN"),
        "{text}"
    );

    let noexec = ws.path().join("noexec");
    fs::create_dir_all(&noexec).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs"])
        .arg(&noexec)
        .status()
        .unwrap();
    assert!(mounted.success());
    let store = noexec.join("store");
    let o = Command::new(forge)
        .args(["build", "--isolation", "chroot", "--root"])
        .arg(&store)
        .arg(&ctx)
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&noexec).status();
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "the store {} is on a filesystem mounted noexec",
            store.display()
        )),
        "{text}"
    );
}

/// On this host with `--isolation chroot` (as in a default container): a step has no network
/// namespace, so the build's proxy arguments reach it as they are (as on the host's network, and
/// still in no image config), and a step that needs a namespace of its own is refused, naming why.
#[test]
fn chroot_steps_get_the_proxy_arguments_and_refuse_network_none() {
    if !forge_testsupport::root_and_busybox("the chroot isolation needs root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-chroot-proxy");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {busybox}\nRUN echo \"proxy=$HTTP_PROXY\" > /proxy.txt\n"),
    )
    .unwrap();
    let out = ws.path().join("out");
    let build = |ctx: &std::path::Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_forge"))
            .args([
                "build",
                "--progress",
                "plain",
                "--isolation",
                "chroot",
                "--root",
            ])
            .arg(ws.path().join("store"))
            .args(extra)
            .arg(ctx)
            .output()
            .unwrap()
    };
    let dest = format!("type=local,dest={}", out.display());
    let o = build(
        &ctx,
        &["--build-arg", "HTTP_PROXY=http://127.0.0.1:9", "-o", &dest],
    );
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        fs::read_to_string(out.join("proxy.txt")).unwrap(),
        "proxy=http://127.0.0.1:9\n"
    );

    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {busybox}\nRUN --network=none true\n"),
    )
    .unwrap();
    let o = build(&ctx, &[]);
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("a step without a network (RUN --network=none, or --network none) needs a network namespace of its own, which the chroot isolation here cannot give"),
        "{text}"
    );
}
