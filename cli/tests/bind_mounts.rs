//! `RUN --mount=type=bind` of the build context end to end, as root and rootless as
//! $FORGE_TEST_USER with the embedded runner, as root with the containerd runner and under the
//! chroot isolation: what a step sees through the bind (the files `.dockerignore` keeps, their
//! content, modes and owners), that it cannot change the user's checkout through it, and that a
//! link in the context never binds what lies outside it. A read-only bind of a part of the context
//! that nothing was left out of, owned so that it looks the same, is the checkout itself (the step
//! sees its inodes); any other is a view made for the step.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use forge_testsupport::{TestUser, walk};

mod common;
use common::{chown_tree, printed, rootless_prerequisites};

/// Who runs forge, and how.
#[derive(Clone, Copy)]
enum Who<'a> {
    /// Root with the embedded runner (namespaces).
    Root,
    /// The test user, rootless.
    User(&'a TestUser),
    /// Root with the containerd runner at this address.
    Containerd(&'a str),
    /// Root with the chroot isolation.
    Chroot,
}

impl Who<'_> {
    fn name(&self) -> &'static str {
        match self {
            Who::Root => "root",
            Who::User(_) => "rootless",
            Who::Containerd(_) => "containerd",
            Who::Chroot => "chroot",
        }
    }

    /// Whether the step's bind is a bind (the chroot isolation copies it into the step's root,
    /// where the step may write the copy; the checkout stays as it was all the same).
    fn binds(&self) -> bool {
        !matches!(self, Who::Chroot)
    }
}

/// A directory under /tmp the test user can reach, with a copy of forge.
struct Scratch {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Scratch {
    fn new(user: Option<&TestUser>) -> Scratch {
        let dir = forge_testsupport::shared_scratch("forge-bind-", user);
        let bin = forge_testsupport::install_exe(env!("CARGO_BIN_EXE_forge"), dir.path());
        Scratch { dir, bin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `forge build --progress plain -o type=local,dest=<out> <ctx>` as `who`, with a store of
    /// its own per way of running.
    fn build(&self, who: Who<'_>, ctx: &Path, out: &Path) -> Output {
        self.build_with(who, ctx, out, &[])
    }

    /// [`Scratch::build`] with `extra` arguments.
    fn build_with(&self, who: Who<'_>, ctx: &Path, out: &Path, extra: &[&str]) -> Output {
        let mut cmd = match who {
            Who::User(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user.name, "--"]).arg(&self.bin);
                c
            }
            _ => Command::new(&self.bin),
        };
        cmd.arg("build").args(["--progress", "plain", "--no-cache"]);
        match who {
            Who::Containerd(address) => {
                cmd.arg("--runner=containerd")
                    .env("CONTAINERD_ADDRESS", address);
            }
            Who::Chroot => {
                cmd.arg("--isolation=chroot");
            }
            Who::Root | Who::User(_) => {}
        }
        cmd.args(extra)
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(ctx)
            .current_dir(self.dir.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("FORGE_ROOT", self.path(&format!("store-{}", who.name())));
        cmd.output().expect("run forge")
    }
}

fn built(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: forge build failed\n{}",
        printed(out)
    );
}

fn write(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Everything about a tree a step could change: each entry's path, type and mode, owner, size,
/// mtime, and a file's content or a link's target.
fn fingerprint(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .map(|p| {
            let md = fs::symlink_metadata(&p).unwrap();
            let what = if md.is_file() {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            format!(
                "{} {:o} {}:{} {} {}.{} {what:?}",
                p.strip_prefix(root).unwrap().display(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.mtime(),
                md.mtime_nsec()
            )
        })
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The step's attempts to change a bound tree at `at` (a directory) or `file`, one line each:
/// `refused: <command>` or `allowed: <command>`.
fn attempts(at: &str, file: &str) -> String {
    [
        format!("echo x > {at}/a.txt"),
        format!("echo x >> {at}/a.txt"),
        format!("rm -f {at}/a.txt"),
        format!("chmod 777 {at}/a.txt"),
        format!("chown 1:1 {at}/a.txt"),
        format!("touch {at}/a.txt"),
        format!("touch {at}/new"),
        format!("mkdir {at}/dir"),
        format!("mv {at}/a.txt {at}/moved"),
        format!("ln {at}/a.txt {at}/hard"),
        format!("rm -rf {at}/sub"),
        format!("chmod 700 {at}"),
        format!("echo x > {file}"),
        format!("chmod 777 {file}"),
        format!("touch {file}"),
    ]
    .iter()
    .map(|c| {
        format!(
            "if sh -c '{c}' 2>/dev/null; then echo \"allowed: {c}\"; else echo \"refused: {c}\"; fi\n"
        )
    })
    .collect()
}

/// (a), (b): a read-only bind of a context directory (and of a file) shows its files, content and
/// modes; the step's every attempt to write, create, remove, chmod or chown through it fails, and
/// the checkout is byte for byte, mode for mode, time for time what it was. A file `.dockerignore`
/// leaves out elsewhere in the context does not stop the bind from being the checkout itself: the
/// step sees the checkout's own inodes (without a view to make, nothing is linked or copied).
#[test]
fn a_read_only_bind_of_the_context_shows_the_checkout_and_cannot_change_it() {
    let Some((busybox, user)) =
        rootless_prerequisites("the test switches to FORGE_TEST_USER and runs containerd")
    else {
        return;
    };
    let containerd = forge_testsupport::containerd().map(|a| a.display().to_string());
    let scratch = Scratch::new(Some(&user));
    let mut ways = vec![Who::Root, Who::User(&user), Who::Chroot];
    if let Some(address) = &containerd {
        ways.push(Who::Containerd(address));
    }
    for who in ways {
        let name = who.name();
        let ctx = scratch.path(&format!("ctx-{name}"));
        write(&ctx, "src/a.txt", "alpha\n", 0o644);
        write(&ctx, "src/run.sh", "#!/bin/sh\n", 0o755);
        write(&ctx, "src/sub/b.txt", "beta\n", 0o600);
        write(&ctx, "notes.log", "ignored\n", 0o644);
        write(&ctx, ".dockerignore", "*.log\n", 0o644);
        write(
            &ctx,
            "Dockerfile",
            &format!(
                "FROM {busybox}\n\
                 RUN --mount=type=bind,source=src,target=/src \
                     --mount=type=bind,source=src/a.txt,target=/file.txt <<'EOF'\n\
                 cat /src/a.txt /src/sub/b.txt /file.txt > /seen\n\
                 ls -A /src > /listing\n\
                 stat -c '%i %u:%g %a' /src /src/a.txt /src/run.sh /src/sub/b.txt /file.txt > /stat\n\
                 {{\n{}}} > /attempts\n\
                 EOF\n",
                attempts("/src", "/file.txt")
            ),
            0o644,
        );
        if let Who::User(u) = who {
            chown_tree(&ctx, u);
        }
        let before = fingerprint(&ctx);
        let out = scratch.path(&format!("out-{name}"));
        built(name, &scratch.build(who, &ctx, &out));

        assert_eq!(read(&out.join("seen")), "alpha\nbeta\nalpha\n", "{name}");
        assert_eq!(read(&out.join("listing")), "a.txt\nrun.sh\nsub\n", "{name}");
        let stat = read(&out.join("stat"));
        let stat: Vec<Vec<&str>> = stat.lines().map(|l| l.split(' ').collect()).collect();
        // Root's files are root's; the user's own are namespace root's (the user, mapped to 0).
        let modes: Vec<(&str, &str)> = stat.iter().map(|f| (f[1], f[2])).collect();
        assert_eq!(
            modes,
            [
                ("0:0", "755"),
                ("0:0", "644"),
                ("0:0", "755"),
                ("0:0", "600"),
                ("0:0", "644")
            ],
            "{name}"
        );
        if who.binds() {
            let host_ino = |rel: &str| fs::metadata(ctx.join(rel)).unwrap().ino().to_string();
            assert_eq!(
                [stat[0][0], stat[1][0], stat[4][0]],
                [
                    host_ino("src"),
                    host_ino("src/a.txt"),
                    host_ino("src/a.txt")
                ],
                "{name}: the bind is not the checkout itself"
            );
            let tried = read(&out.join("attempts"));
            assert!(
                tried.lines().count() == 15 && tried.lines().all(|l| l.starts_with("refused: ")),
                "{name}: the step changed the bound checkout:\n{tried}"
            );
        }
        assert_eq!(
            fingerprint(&ctx),
            before,
            "{name}: the checkout changed under the build"
        );
    }
}

/// (c): a file and a directory `.dockerignore` leaves out below the bound directory are not in the
/// step's bind (a view of what is kept, not the checkout), and a read of the ignored file fails; a
/// bind beside them, of a directory nothing was left out of, is the checkout itself.
#[test]
fn what_dockerignore_leaves_out_below_a_bind_stays_out_of_it() {
    let Some((busybox, user)) = rootless_prerequisites("the test switches to FORGE_TEST_USER")
    else {
        return;
    };
    let scratch = Scratch::new(Some(&user));
    for who in [Who::Root, Who::User(&user)] {
        let name = who.name();
        let ctx = scratch.path(&format!("ctx-{name}"));
        write(&ctx, "app/main.c", "int main;\n", 0o644);
        write(&ctx, "app/.env", "API_KEY=hunter2\n", 0o644);
        write(&ctx, "app/private/key", "hunter3\n", 0o644);
        write(&ctx, "app/private/pub/ok", "ok\n", 0o644);
        write(&ctx, "docs/guide.md", "guide\n", 0o644);
        write(&ctx, ".dockerignore", "app/.env\napp/private/key\n", 0o644);
        write(
            &ctx,
            "Dockerfile",
            &format!(
                "FROM {busybox}\n\
                 RUN --mount=type=bind,source=app,target=/app --mount=type=bind,source=docs,target=/docs \
                 sh -c 'ls -AR /app > /listing; cat /app/.env > /env 2>/dev/null; \
                 cat /app/main.c /app/private/pub/ok /docs/guide.md > /seen; \
                 stat -c %i /app /docs > /inodes; true'\n"
            ),
            0o644,
        );
        if let Who::User(u) = who {
            chown_tree(&ctx, u);
        }
        let out = scratch.path(&format!("out-{name}"));
        built(name, &scratch.build(who, &ctx, &out));
        let listing = read(&out.join("listing"));
        assert!(
            listing.contains("main.c") && listing.contains("ok"),
            "{name}: {listing}"
        );
        assert!(
            !listing.contains(".env") && !listing.contains("key"),
            "{name}: ignored entries in the bind:\n{listing}"
        );
        assert_eq!(read(&out.join("env")), "", "{name}");
        assert_eq!(read(&out.join("seen")), "int main;\nok\nguide\n", "{name}");
        let inodes = read(&out.join("inodes"));
        let inodes: Vec<&str> = inodes.lines().collect();
        let host_ino = |rel: &str| fs::metadata(ctx.join(rel)).unwrap().ino().to_string();
        assert_ne!(inodes[0], host_ino("app"), "{name}: /app is the checkout");
        assert_eq!(inodes[1], host_ino("docs"), "{name}: /docs is a view");
    }
}

/// (d): rootless, a checkout another user owns (root, as a CI checkout often is) is bound as a
/// view, as it always was: its files show as the view shows them (copies chowned to the overflow
/// id 65534 where the user's subordinate range maps it, as root's otherwise), readable, and the
/// checkout is unchanged.
#[test]
fn a_checkout_of_another_owner_bound_rootless_shows_as_before() {
    let Some((busybox, user)) = rootless_prerequisites("the test switches to FORGE_TEST_USER")
    else {
        return;
    };
    let scratch = Scratch::new(Some(&user));
    // Root's, as the scratch directory's files are when root makes them.
    let ctx = scratch.path("ctx");
    write(&ctx, "src/a.txt", "alpha\n", 0o644);
    write(&ctx, "src/tool", "#!/bin/sh\n", 0o755);
    write(
        &ctx,
        "Dockerfile",
        &format!(
            "FROM {busybox}\n\
             RUN --mount=type=bind,source=src,target=/src \
             sh -c 'stat -c \"%u:%g %a\" /src /src/a.txt /src/tool > /stat; cat /src/a.txt > /seen; \
             echo x > /src/a.txt 2>/dev/null && echo written > /written; true'\n"
        ),
        0o644,
    );
    assert_eq!(fs::metadata(ctx.join("src/a.txt")).unwrap().uid(), 0);
    let before = fingerprint(&ctx);
    let out = scratch.path("out");
    built("rootless", &scratch.build(Who::User(&user), &ctx, &out));
    let mapped = user.subuid.count >= 65534 && user.subgid.count >= 65534;
    let owner = if mapped { "65534:65534" } else { "0:0" };
    assert_eq!(
        read(&out.join("stat")),
        format!("{owner} 755\n{owner} 644\n{owner} 755\n")
    );
    assert_eq!(read(&out.join("seen")), "alpha\n");
    assert!(!out.join("written").exists());
    assert_eq!(fingerprint(&ctx), before);
}

/// (e): links never lead a bind out of the context, whether the bind is the checkout itself or a
/// view: a link to `/` binds the context's root, a source through a link to a host directory
/// names nothing in the context (the build fails), and a link inside a bound directory that
/// points at a host directory resolves in the step's own filesystem.
#[test]
fn links_in_the_context_never_bind_what_lies_outside_it() {
    let Some((busybox, user)) = rootless_prerequisites("the test switches to FORGE_TEST_USER")
    else {
        return;
    };
    let scratch = Scratch::new(Some(&user));
    // A host directory the test user can read, holding what must never be seen.
    let host = scratch.path("host-secrets");
    write(&host, "secret", "HOST SECRET\n", 0o644);
    let host = host.display().to_string();
    for who in [Who::Root, Who::User(&user)] {
        let name = who.name();
        let ctx = scratch.path(&format!("ctx-{name}"));
        write(&ctx, "src/f.txt", "inside\n", 0o644);
        symlink("/", ctx.join("escape")).unwrap();
        symlink(&host, ctx.join("hostdir")).unwrap();
        symlink(&host, ctx.join("src/out")).unwrap();
        symlink("../../../../../../..", ctx.join("src/up")).unwrap();
        write(
            &ctx,
            "Dockerfile",
            &format!(
                "FROM {busybox}\n\
                 RUN --mount=type=bind,source=escape,target=/e --mount=type=bind,source=src,target=/s \
                 sh -c 'ls -A /e > /root-listing; cat /e/src/f.txt > /seen; \
                 cat /e{host}/secret /s/out/secret /s/up{host}/secret /e/hostdir/secret 2>/dev/null; true'\n"
            ),
            0o644,
        );
        if let Who::User(u) = who {
            chown_tree(&ctx, u);
        }
        let out = scratch.path(&format!("out-{name}"));
        let o = scratch.build(who, &ctx, &out);
        built(name, &o);
        assert!(
            !printed(&o).contains("HOST SECRET"),
            "{name}: {}",
            printed(&o)
        );
        assert_eq!(
            read(&out.join("root-listing")),
            "Dockerfile\nescape\nhostdir\nsrc\n",
            "{name}: a link to / bound something else than the context's root"
        );
        assert_eq!(read(&out.join("seen")), "inside\n", "{name}");

        for source in ["hostdir", "hostdir/secret", "src/out", "src/up/etc"] {
            write(
                &ctx,
                "Dockerfile",
                &format!(
                    "FROM {busybox}\n\
                     RUN --mount=type=bind,source={source},target=/m \
                     sh -c 'cat /m /m/secret /m/passwd 2>/dev/null; ls -A /m; true'\n"
                ),
                0o644,
            );
            if let Who::User(u) = who {
                chown_tree(&ctx, u);
            }
            let o = scratch.build(who, &ctx, &scratch.path(&format!("out-{name}-m")));
            let said = printed(&o);
            assert!(
                !said.contains("HOST SECRET") && !said.contains("root:x:0:0"),
                "{name}: source={source} reached the host:\n{said}"
            );
            assert!(!o.status.success(), "{name}: source={source}:\n{said}");
        }
    }
}

/// A cache mount seeded from a directory given with `--build-context` (`from=NAME,source=PATH`)
/// starts with what is there, with its modes and with owners as the view showed them: the
/// user's own files as root's, rootless, and another owner's (root's) as copies chowned to the
/// overflow id where the user's range maps it. The seed directory is not changed by the step's
/// writes to the cache.
#[test]
fn a_cache_mount_seeded_from_a_build_context_starts_with_its_files() {
    let Some((busybox, user)) = rootless_prerequisites("the test switches to FORGE_TEST_USER")
    else {
        return;
    };
    let scratch = Scratch::new(Some(&user));
    let mapped = user.subuid.count >= 65534 && user.subgid.count >= 65534;
    let foreign = if mapped { "65534:65534" } else { "0:0" };
    for (name, who, own) in [
        ("root", Who::Root, true),
        ("rootless", Who::User(&user), true),
        ("rootless-foreign", Who::User(&user), false),
    ] {
        let seeds = scratch.path(&format!("seeds-{name}"));
        write(&seeds, "sub/f.txt", "seeded\n", 0o604);
        write(&seeds, "sub/deeper/g.txt", "deeper\n", 0o644);
        write(&seeds, "elsewhere.txt", "not seeded\n", 0o644);
        let ctx = scratch.path(&format!("ctx-{name}"));
        write(
            &ctx,
            "Dockerfile",
            &format!(
                "FROM {busybox}\n\
                 RUN --mount=type=cache,id=seeded-{name},target=/c,from=seeds,source=/sub \
                 sh -c 'ls -A /c > /listing; cat /c/f.txt /c/deeper/g.txt > /seen; \
                 stat -c \"%u:%g %a\" /c/f.txt /c/deeper > /stat; echo new > /c/f.txt; touch /c/added'\n"
            ),
            0o644,
        );
        if let Who::User(u) = who {
            chown_tree(&ctx, u);
            if own {
                chown_tree(&seeds, u);
            }
        }
        let before = fingerprint(&seeds);
        let out = scratch.path(&format!("out-{name}"));
        let seeds_arg = format!("seeds={}", seeds.display());
        built(
            name,
            &scratch.build_with(who, &ctx, &out, &["--build-context", &seeds_arg]),
        );
        assert_eq!(read(&out.join("listing")), "deeper\nf.txt\n", "{name}");
        assert_eq!(read(&out.join("seen")), "seeded\ndeeper\n", "{name}");
        let owner = if own { "0:0" } else { foreign };
        assert_eq!(
            read(&out.join("stat")),
            format!("{owner} 604\n{owner} 755\n"),
            "{name}"
        );
        assert_eq!(fingerprint(&seeds), before, "{name}: the seed changed");
    }
}

/// Unmounts a test's mount when dropped, whatever the test's end.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A filesystem mounted inside the bound directory (a tmpfs in a checkout) is not writable
/// through the bind either: runc's `ro` (the containerd runner) makes only the bind's own mount
/// read-only, so such a directory is bound as a view, and the mount keeps what it held.
#[test]
fn a_mount_below_a_bound_directory_cannot_be_written_through_the_bind() {
    if !forge_testsupport::root("the test mounts a tmpfs in the context") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let containerd = forge_testsupport::containerd().map(|a| a.display().to_string());
    let scratch = Scratch::new(None);
    let mut ways = vec![Who::Root];
    if let Some(address) = &containerd {
        ways.push(Who::Containerd(address));
    }
    for who in ways {
        let name = who.name();
        let ctx = scratch.path(&format!("ctx-{name}"));
        write(&ctx, "src/a.txt", "alpha\n", 0o644);
        let mnt = ctx.join("src/mnt");
        fs::create_dir_all(&mnt).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", mnt.display());
        let _mounted = MountGuard(mnt.clone());
        write(&mnt, "inside.txt", "on the tmpfs\n", 0o644);
        write(
            &ctx,
            "Dockerfile",
            &format!(
                "FROM {busybox}\n\
                 RUN --mount=type=bind,source=src,target=/src \
                 sh -c 'cat /src/mnt/inside.txt > /seen; echo x > /src/mnt/inside.txt 2>/dev/null && echo written > /written; \
                 touch /src/mnt/new 2>/dev/null && echo created >> /written; true'\n"
            ),
            0o644,
        );
        let before = fingerprint(&ctx);
        let out = scratch.path(&format!("out-{name}"));
        built(name, &scratch.build(who, &ctx, &out));
        assert_eq!(read(&out.join("seen")), "on the tmpfs\n", "{name}");
        assert!(
            !out.join("written").exists(),
            "{name}: {}",
            read(&out.join("written"))
        );
        assert_eq!(fingerprint(&ctx), before, "{name}");
    }
}

/// Regression (containerd sweep 01): a context given relative to the working directory (`forge
/// build --runner containerd .`) went to containerd as it was, and runc resolved it inside the
/// task's bundle: the step's bind of the context showed its own config.json and rootfs.
#[test]
fn a_relative_context_is_bound_as_itself_by_the_containerd_runner() {
    if !forge_testsupport::root("the containerd runner is driven as root") {
        return;
    }
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(address) = forge_testsupport::containerd().map(|a| a.display().to_string()) else {
        return;
    };
    let scratch = Scratch::new(None);
    let ctx = scratch.path("ctx-relative");
    write(&ctx, "sub/a.txt", "alpha\n", 0o644);
    write(
        &ctx,
        "Dockerfile",
        &format!(
            "FROM {busybox}\n\
             RUN --mount=type=bind,target=/ctx ls /ctx > /listed\n\
             RUN --mount=type=bind,source=sub,target=/sub cat /sub/a.txt > /sub.txt\n"
        ),
        0o644,
    );
    let out = scratch.path("out-relative");
    let o = scratch.build(Who::Containerd(&address), Path::new("ctx-relative"), &out);
    built("containerd, relative context", &o);
    assert_eq!(read(&out.join("listed")), "Dockerfile\nsub\n");
    assert_eq!(read(&out.join("sub.txt")), "alpha\n");
}
