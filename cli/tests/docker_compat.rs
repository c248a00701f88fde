//! `forge build` where a Docker user's command line reaches for docker's flags (issue 14).

mod common;

use std::fs;

use common::{forge, printed};

/// A build workspace: a scratch dir with a store and a context whose Dockerfile is `FROM` the
/// busybox test image followed by `rest`; `None` (after a SKIP line) without root or busybox.
struct Workspace {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    ctx: std::path::PathBuf,
}

/// A usage error: exit status 2 and `why` in what forge printed.
#[track_caller]
fn refused(o: &std::process::Output, why: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", printed(o));
    assert!(printed(o).contains(why), "{why:?} in:\n{}", printed(o));
}

fn workspace(name: &str, rest: &str) -> Option<Workspace> {
    if !forge_testsupport::root_and_busybox("builds use the embedded runner as root") {
        return None;
    }
    let image = forge_testsupport::busybox_image()?;
    let dir = forge_testsupport::scratch(name);
    let root = dir.path().join("store");
    let ctx = dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), format!("FROM {image}\n{rest}")).unwrap();
    Some(Workspace { dir, root, ctx })
}

/// `--add-host NAME:IP` puts the name in every RUN step's /etc/hosts, is part of the step's key
/// (another address runs the step again, as BuildKit does), and refuses what docker's daemon
/// would resolve itself (`host-gateway`) or what is no address.
#[test]
fn add_host_reaches_run_steps_and_their_cache_key() {
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-add-host", "RUN cat /etc/hosts > /hosts.txt\n")
    else {
        return;
    };
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
        refused(&o, why);
    }
}

/// `--label KEY` (no value) is an empty label, as docker makes it; `--build-arg
/// SOURCE_DATE_EPOCH=N` (BuildKit's form) fixes the image's time and stays a build argument.
#[test]
fn a_bare_label_is_empty_and_source_date_epoch_comes_as_a_build_arg() {
    let Some(Workspace {
        dir: _ws,
        root,
        ctx,
    }) = workspace(
        "forge-label-epoch",
        "ARG SOURCE_DATE_EPOCH\nRUN echo \"epoch $SOURCE_DATE_EPOCH\" > /epoch\n",
    )
    else {
        return;
    };
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
    refused(
        &bad,
        "--build-arg SOURCE_DATE_EPOCH=\"soon\" is not a number of seconds",
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

/// A tiny upstream proxy on the test's loopback: answers every request with `body` and keeps
/// each request's first line.
fn upstream_proxy(body: &'static str) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            log.lock().unwrap().push(first.trim_end().to_string());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// `--build-arg HTTP_PROXY=...` (a predefined proxy argument, no ARG line): a sandboxed RUN step
/// still talks to forge's proxy, which goes through the given one; the argument is in neither the
/// step's key (another proxy address reuses the step) nor the image.
#[test]
fn proxy_build_args_lead_forges_proxy_through_the_users_proxy() {
    let Some(Workspace { dir: ws, root, ctx }) = workspace(
        "forge-proxy-args",
        "RUN wget -q -O /got.txt http://forge-upstream.invalid/file\n",
    ) else {
        return;
    };
    let (port, seen) = upstream_proxy("hello from the upstream proxy");
    let build = |proxy_port: u16, out: &str| {
        let dest = ws.path().join(out);
        let o = forge(
            &root,
            &[
                "build",
                "--progress",
                "plain",
                "-t",
                "local/proxied:1",
                "--build-arg",
                &format!("HTTP_PROXY=http://127.0.0.1:{proxy_port}"),
                "-o",
                &format!("type=local,dest={}", dest.display()),
                &ctx.to_string_lossy(),
            ],
        );
        (o.status.success(), printed(&o), dest)
    };
    let (ok, out, dest) = build(port, "one");
    assert!(ok, "{out}");
    assert_eq!(
        fs::read_to_string(dest.join("got.txt")).unwrap(),
        "hello from the upstream proxy"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["GET http://forge-upstream.invalid/file HTTP/1.1"],
        "the upstream proxy did not get the request in absolute form"
    );
    assert!(!out.contains("not consumed"), "{out}");

    // Another proxy address: the step is reused, and nothing of the argument is in the image.
    let (ok, out, _) = build(port + 1, "two");
    assert!(ok, "{out}");
    assert!(
        out.contains("CACHED"),
        "the proxy argument changed the step's key:\n{out}"
    );
    let inspected = forge(&root, &["inspect", "local/proxied:1"]);
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(
        !text.contains("127.0.0.1:"),
        "the proxy argument is in the image:\n{text}"
    );
}

/// The names a tar holds.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// docker's output forms: `-o DIR` (the filesystem into DIR), `-o type=tar,dest=F` (the filesystem
/// as one tar), `-o -` (that tar on standard output, and then nothing else there), and one output at
/// most on standard output.
#[test]
fn output_shorthands_and_tars_on_stdout() {
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-outputs", "RUN echo out > /made-here\n")
    else {
        return;
    };
    let c = ctx.to_string_lossy().into_owned();

    let dir = ws.path().join("as-dir");
    let o = forge(&root, &["build", "-q", "-o", &dir.to_string_lossy(), &c]);
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(fs::read_to_string(dir.join("made-here")).unwrap(), "out\n");

    let file = ws.path().join("fs.tar");
    let o = forge(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=tar,dest={}", file.display()),
            &c,
        ],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let names = tar_names(&fs::read(&file).unwrap());
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "made-here"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "bin/busybox"),
        "{names:?}"
    );

    let o = forge(&root, &["build", "-q", "-o", "-", &c]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = tar_names(&o.stdout);
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "made-here"),
        "{names:?}"
    );
    assert!(
        o.stdout.ends_with(&[0u8; 1024]),
        "something follows the tar on standard output"
    );

    let o = forge(&root, &["build", "-o", "type=oci,dest=-", "-o", "-", &c]);
    refused(&o, "only one --output may write to standard output");
}

/// `-q` prints the image ID as `docker build -q` does (the config's digest, not the manifest's),
/// and nothing else; `--iidfile` holds the same ID and `--metadata-file` both digests under
/// BuildKit's keys (`containerimage.config.digest`, `containerimage.digest`).
#[test]
fn quiet_prints_the_image_id_and_the_files_carry_both_digests() {
    let Some(Workspace { dir: ws, root, ctx }) = workspace("forge-quiet-id", "RUN echo id > /id\n")
    else {
        return;
    };
    let iid = ws.path().join("iid");
    let meta = ws.path().join("meta.json");
    let o = forge(
        &root,
        &[
            "build",
            "-q",
            "-t",
            "local/quiet:1",
            "--iidfile",
            &iid.to_string_lossy(),
            "--metadata-file",
            &meta.to_string_lossy(),
            &ctx.to_string_lossy(),
        ],
    );
    assert!(o.status.success(), "{}", printed(&o));
    assert!(o.stderr.is_empty(), "-q printed on stderr: {}", printed(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let id = stdout.strip_suffix('\n').expect("one line");
    assert!(
        id.len() == 71 && id.starts_with("sha256:") && !id.contains('\n'),
        "{stdout:?}"
    );

    let inspected = forge(&root, &["inspect", "local/quiet:1"]);
    let doc: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(doc["id"], id, "the config digest: {doc}");
    assert_ne!(doc["digest"], id, "-q printed the manifest digest");
    assert_eq!(fs::read_to_string(&iid).unwrap(), id, "--iidfile");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.config.digest"], id, "{m}");
    assert_eq!(m["containerimage.digest"], doc["digest"], "{m}");

    // Without -q the manifest digest is printed (what a registry names the image by).
    let o = forge(
        &root,
        &["build", "-t", "local/quiet:2", &ctx.to_string_lossy()],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let inspected = forge(&root, &["inspect", "local/quiet:2"]);
    let doc: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        doc["digest"].as_str().unwrap()
    );

    // A failed build leaves neither file of the build before (docker removes its --iidfile): a
    // script reading them took the earlier image.
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY missing /\n").unwrap();
    let o = forge(
        &root,
        &[
            "build",
            "--iidfile",
            &iid.to_string_lossy(),
            "--metadata-file",
            &meta.to_string_lossy(),
            &ctx.to_string_lossy(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(!iid.exists(), "the earlier --iidfile is left");
    assert!(!meta.exists(), "the earlier --metadata-file is left");
}

/// Runs `forge ARGS` with Docker's config in `docker_config` (and no podman file in the way),
/// `input` on standard input and `path` before the process's PATH.
fn forge_logged(
    docker_config: &std::path::Path,
    path: Option<&std::path::Path>,
    args: &[&str],
    input: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_forge"));
    cmd.args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env("REGISTRY_AUTH_FILE", docker_config.join("podman-none.json"))
        .env("XDG_RUNTIME_DIR", docker_config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(dir) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
    }
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// `forge login` tries the credentials on a real Distribution registry with htpasswd auth before
/// keeping them in Docker's config.json (its other keys kept, mode 0600); a push then uses them;
/// a wrong password is refused naming the registry and the status, and stores nothing; `forge
/// logout` removes the entry, and the push is refused again.
#[test]
fn login_stores_what_the_registry_accepted_and_logout_removes_it() {
    use std::os::unix::fs::PermissionsExt;
    let Some(registry) = forge_testsupport::auth_registry() else {
        return;
    };
    let addr = registry.addr.as_str();
    let ws = forge_testsupport::scratch("forge-login");
    let docker = ws.path().join("docker");
    fs::create_dir_all(&docker).unwrap();
    let config = docker.join("config.json");
    let before =
        r#"{"auths":{"other.example:5000":{"auth":"dTpw"}},"proxies":{"default":{"noProxy":"x"}}}"#;
    fs::write(&config, before).unwrap();
    let ctx = forge_testsupport::Context::busybox(ws.path().join("ctx"))
        .dockerfile("FROM scratch\nCOPY busybox /bin/busybox\n")
        .into_path();
    let root = ws.path().join("store");
    let tag = format!("{addr}/forge-test/login:1");
    let push = || {
        forge_logged(
            &docker,
            None,
            &[
                "build",
                "-q",
                "--push",
                "-t",
                &tag,
                "--root",
                &root.to_string_lossy(),
                &ctx.to_string_lossy(),
            ],
            "",
        )
    };
    let o = push();
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(printed(&o).contains("wants a login"), "{}", printed(&o));

    let user = forge_testsupport::AUTH_USER;
    let o = forge_logged(
        &docker,
        None,
        &["login", addr, "-u", user, "--password-stdin"],
        "wrong-password\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    let said = printed(&o);
    assert!(
        said.contains(&format!("{addr} refused the login of {user} (status 401")),
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        before,
        "stored a refused login"
    );

    // A URL names the registry as well as host:port does.
    let password = format!("{}\n", forge_testsupport::AUTH_PASSWORD);
    let o = forge_logged(
        &docker,
        None,
        &[
            "login",
            &format!("http://{addr}/"),
            "-u",
            user,
            "--password-stdin",
        ],
        &password,
    );
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        doc["auths"][addr]["auth"], "Zm9yZ2U6cmlnaHQtcGFzc3dvcmQ=",
        "base64 of forge:right-password: {doc}"
    );
    assert_eq!(doc["auths"]["other.example:5000"]["auth"], "dTpw", "{doc}");
    assert_eq!(doc["proxies"]["default"]["noProxy"], "x", "{doc}");
    let mode = fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "config.json mode {mode:o}");

    let o = push();
    assert!(
        o.status.success(),
        "push with the stored login: {}",
        printed(&o)
    );

    let o = forge_logged(&docker, None, &["logout", addr], "");
    assert!(o.status.success(), "{}", printed(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .starts_with(&format!("Removing login credentials for {addr}")),
        "{}",
        printed(&o)
    );
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    assert!(doc["auths"].get(addr).is_none(), "{doc}");
    assert_eq!(doc["auths"]["other.example:5000"]["auth"], "dTpw", "{doc}");
    let o = push();
    assert_eq!(
        o.status.code(),
        Some(1),
        "pushed after logout: {}",
        printed(&o)
    );
    let o = forge_logged(&docker, None, &["logout", addr], "");
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("Not logged in to {addr}\n")
    );

    // What docker refuses too: --password-stdin without a user, a repository for a server.
    let o = forge_logged(
        &docker,
        None,
        &["login", addr, "--password-stdin"],
        &password,
    );
    refused(&o, "--password-stdin needs --username");
    let o = forge_logged(
        &docker,
        None,
        &[
            "login",
            &format!("{addr}/team"),
            "-u",
            user,
            "--password-stdin",
        ],
        &password,
    );
    refused(&o, "is not a registry");
}

/// With `credsStore` in Docker's config, `forge login` hands the login to that credential helper
/// (`docker-credential-NAME store`) instead of the file, a push gets it back from the helper, and
/// `forge logout` has the helper erase it.
#[test]
fn login_goes_to_the_credential_helper_docker_names() {
    use std::os::unix::fs::PermissionsExt;
    let Some(registry) = forge_testsupport::auth_registry() else {
        return;
    };
    let addr = registry.addr.as_str();
    let ws = forge_testsupport::scratch("forge-login-helper");
    let docker = ws.path().join("docker");
    let bin = ws.path().join("bin");
    fs::create_dir_all(&docker).unwrap();
    fs::create_dir_all(&bin).unwrap();
    // A helper that keeps one login in a file beside itself, as the helper protocol asks.
    let helper = bin.join("docker-credential-testkeep");
    fs::write(
        &helper,
        "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in\n\
         store) cat > \"$d/kept.json\" ;;\n\
         get) cat > /dev/null; if [ -f \"$d/kept.json\" ]; then cat \"$d/kept.json\"; \
         else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
         erase) cat > /dev/null; rm \"$d/kept.json\" ;;\n\
         esac\n",
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let config = docker.join("config.json");
    fs::write(&config, r#"{"credsStore":"testkeep"}"#).unwrap();

    let password = format!("{}\n", forge_testsupport::AUTH_PASSWORD);
    let o = forge_logged(
        &docker,
        Some(&bin),
        &[
            "login",
            addr,
            "-u",
            forge_testsupport::AUTH_USER,
            "--password-stdin",
        ],
        &password,
    );
    assert!(o.status.success(), "{}", printed(&o));
    let kept: serde_json::Value =
        serde_json::from_slice(&fs::read(bin.join("kept.json")).unwrap()).unwrap();
    assert_eq!(kept["ServerURL"], addr, "{kept}");
    assert_eq!(kept["Username"], forge_testsupport::AUTH_USER, "{kept}");
    assert_eq!(kept["Secret"], forge_testsupport::AUTH_PASSWORD, "{kept}");
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        r#"{"credsStore":"testkeep"}"#,
        "the password went to the file"
    );

    let ctx = forge_testsupport::Context::busybox(ws.path().join("ctx"))
        .dockerfile("FROM scratch\nCOPY busybox /bin/busybox\n")
        .into_path();
    let root = ws.path().join("store");
    let o = forge_logged(
        &docker,
        Some(&bin),
        &[
            "build",
            "-q",
            "--push",
            "-t",
            &format!("{addr}/forge-test/helper:1"),
            "--root",
            &root.to_string_lossy(),
            &ctx.to_string_lossy(),
        ],
        "",
    );
    assert!(
        o.status.success(),
        "push with the helper's login: {}",
        printed(&o)
    );

    let o = forge_logged(&docker, Some(&bin), &["logout", addr], "");
    assert!(o.status.success(), "{}", printed(&o));
    assert!(
        !bin.join("kept.json").exists(),
        "the helper was not asked to erase"
    );
}

/// `forge history IMAGE` lists what made the image as `docker history` does: newest first, the
/// image ID on the top line and `<missing>` below (what docker shows for a BuildKit image), sizes
/// of layers (0B for steps that made none), steps cut at 45 characters unless `--no-trunc`;
/// `--format json` has docker's keys. Without IMAGE, the pipeline's runs are listed as before.
#[test]
fn history_of_an_image_and_of_a_pipeline() {
    let long = "echo a-step-whose-command-is-longer-than-the-column > /long";
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-history", &format!("ENV STAGE=one\nRUN {long}\n"))
    else {
        return;
    };
    let o = forge(
        &root,
        &["build", "-q", "-t", "local/hist:1", &ctx.to_string_lossy()],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let inspected = forge(&root, &["inspect", "local/hist:1"]);
    let doc: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let entries = doc["config"]["history"].as_array().unwrap().len();

    let o = forge(&root, &["history", "local/hist:1"]);
    assert!(o.status.success(), "{}", printed(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("IMAGE          CREATED") && lines[0].ends_with("SIZE     COMMENT"),
        "{text}"
    );
    assert_eq!(
        lines.len(),
        entries + 1,
        "one line per history entry:\n{text}"
    );
    assert!(lines[1].starts_with(&id["sha256:".len()..][..12]), "{text}");
    assert!(
        lines[2..].iter().all(|l| l.starts_with("<missing>")),
        "{text}"
    );
    let run = lines[1];
    assert!(
        run.contains("   RUN /bin/sh -c echo a-step-whose-command-is-…   ")
            && run.contains(" ago "),
        "{text}"
    );
    assert!(!run.contains(" 0B "), "the RUN step made a layer:\n{text}");
    assert!(
        lines[2].contains("ENV STAGE=one") && lines[2].contains(" 0B "),
        "{text}"
    );

    let o = forge(&root, &["history", "--no-trunc", "local/hist:1"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with(&id), "{text}");
    assert!(text.contains(long), "{text}");

    let o = forge(&root, &["history", "--format", "json", "local/hist:1"]);
    assert!(o.status.success(), "{}", printed(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), entries);
    assert_eq!(rows[0]["ID"], id["sha256:".len()..][..12]);
    assert_eq!(rows[1]["Size"], "0B", "{rows:?}");
    for key in [
        "Comment",
        "CreatedAt",
        "CreatedBy",
        "CreatedSince",
        "ID",
        "Size",
    ] {
        assert!(rows[0].get(key).is_some(), "{key} in {:?}", rows[0]);
    }

    // The pipeline form: no IMAGE (or -f) lists runs; an IMAGE with -f is refused.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["history", "--root"])
        .arg(&root)
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "no runs of forge.yaml yet\n"
    );
    let o = forge(&root, &["history", "-f", "forge.yaml", "local/hist:1"]);
    assert_eq!(o.status.code(), Some(2), "{}", printed(&o));
    let o = forge(&root, &["history", "local/none:1"]);
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(
        printed(&o).contains("no image docker.io/local/none:1"),
        "{}",
        printed(&o)
    );
}

/// Runs `forge ARGS --root ROOT` with every https request sent to a closed loopback port (a proxy
/// that is not there), so that a request for Docker Hub fails at once, on this machine.
fn forge_offline(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--root")
        .arg(root)
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .unwrap()
}

/// `FROM busybox` with an image of that name in the store uses it as it is, as docker uses its
/// local images, says so, and asks no registry; `--pull` asks the registry (Docker Hub, here
/// unreachable: the build fails rather than use the store's copy), and so it does for a full
/// reference whose registry is down, where the default uses the store's copy with a warning.
#[test]
fn a_short_name_in_the_store_is_used_without_the_registry_unless_pull() {
    let Some(Workspace { dir: ws, root, ctx }) = workspace("forge-local-base", "") else {
        return;
    };
    let image = forge_testsupport::busybox_image().unwrap();
    let o = forge(&root, &["pull", "-q", &image]);
    assert!(o.status.success(), "{}", printed(&o));
    let o = forge(&root, &["tag", &image, "busybox"]);
    assert!(o.status.success(), "{}", printed(&o));
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo local > /x\n",
    )
    .unwrap();
    let c = ctx.to_string_lossy().into_owned();

    let o = forge_offline(&root, &["build", "--progress", "plain", &c]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("using docker.io/library/busybox:latest sha256:")
            && out.contains("from forge's store, as it is"),
        "{out}"
    );
    assert!(
        !out.contains("could not reach"),
        "the registry was asked:\n{out}"
    );

    let o = forge_offline(&root, &["build", "--progress", "plain", "--pull", &c]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("docker.io/library/busybox"), "{out}");
    assert!(!out.contains("from forge's store"), "{out}");

    // A full reference is resolved at its registry; when that is down, the default falls back on
    // the store's copy (with a warning) and --pull does not.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("127.0.0.1:{closed}/forge-test/busybox:gone");
    let o = forge(&root, &["tag", &image, &gone]);
    assert!(o.status.success(), "{}", printed(&o));
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {gone}\nRUN echo gone > /x\n"),
    )
    .unwrap();
    let o = forge(&root, &["build", "--progress", "plain", &c]);
    let out = printed(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("using the copy in the store"), "{out}");
    let o = forge(&root, &["build", "--progress", "plain", "--pull", &c]);
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{closed}")), "{out}");
    drop(ws);
}

/// `forge build --check` prints each broken rule as `docker build --check` does (rule, link,
/// message, file:line:column, the lines around it), exits 1 when any, 0 and "no warnings" when
/// none, builds nothing, and takes a base image's environment from the store for UndefinedVar.
#[test]
fn check_reports_buildkits_rules_without_building() {
    let ws = forge_testsupport::scratch("forge-check");
    let root = ws.path().join("store");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let dockerfile = ctx.join("Dockerfile");
    fs::write(
        &dockerfile,
        "FROM scratch AS Build\nCOPY . /src\nCMD run-it\nRUN false\n",
    )
    .unwrap();
    let c = ctx.to_string_lossy().into_owned();
    let o = forge(&root, &["build", "--check", &c]);
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let file = dockerfile.display();
    assert_eq!(
        out,
        format!(
            "WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
             Stage name 'Build' should be lowercase\n\
             {file}:1:1\n\
             --------------------\n   \
             1 | >>> FROM scratch AS Build\n   \
             2 |     COPY . /src\n\
             --------------------\n\n\
             WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n\
             JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n\
             {file}:3:1\n\
             --------------------\n   \
             1 |     FROM scratch AS Build\n   \
             2 |     COPY . /src\n   \
             3 | >>> CMD run-it\n   \
             4 |     RUN false\n\
             --------------------\n\n\
             Check complete, 2 warnings have been found!\n"
        )
    );
    assert!(o.stderr.is_empty(), "{}", printed(&o));
    let images = forge(&root, &["images"]);
    assert!(
        !String::from_utf8_lossy(&images.stdout).contains("Build"),
        "--check built something"
    );

    fs::write(&dockerfile, "FROM scratch AS build\nCMD [\"run-it\"]\n").unwrap();
    let o = forge(&root, &["build", "--check", &c]);
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Check complete, no warnings found.\n"
    );

    // A Dockerfile that does not parse is the located error a build gives.
    fs::write(&dockerfile, "FROM scratch\nCOPY --nope=1 a /b\n").unwrap();
    let o = forge(&root, &["build", "--check", &c]);
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(
        printed(&o).contains(&format!("error: {file}:2:")),
        "{}",
        printed(&o)
    );

    // UndefinedVar knows a base image's environment when the store holds the image.
    let Some(image) = forge_testsupport::busybox_image() else {
        return;
    };
    fs::write(
        &dockerfile,
        format!("FROM {image}\nENV P=$PATH Q=$NOT_IN_THE_IMAGE\n"),
    )
    .unwrap();
    let o = forge(&root, &["build", "--check", &c]);
    assert!(
        o.status.success(),
        "without the image its variables are not judged: {}",
        printed(&o)
    );
    let o = forge(&root, &["pull", "-q", &image]);
    assert!(o.status.success(), "{}", printed(&o));
    let o = forge(&root, &["build", "--check", &c]);
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Usage of undefined variable '$NOT_IN_THE_IMAGE'") && !out.contains("'$PATH'"),
        "{out}"
    );
    assert!(
        out.contains("Check complete, 1 warning has been found!"),
        "{out}"
    );
}

/// Answers every DNS query on `socket` with NXDOMAIN (no such name), as a resolver does for a
/// host that does not exist.
fn nxdomain_server(socket: std::net::UdpSocket) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let query = &buf[..n];
        // The question: the name's labels up to the root label, then type and class.
        let mut end = 12;
        while end < n && query[end] != 0 {
            end += usize::from(query[end]) + 1;
        }
        let Some(question) = query.get(12..end + 5) else {
            continue;
        };
        let mut answer = query[..2].to_vec();
        answer.extend_from_slice(&[0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0]);
        answer.extend_from_slice(question);
        let _ = socket.send_to(&answer, from);
    }
}

/// A base image whose registry cannot be reached says what to do instead; a host name the
/// resolver says does not exist fails at once (no retries), while a refused connection, which
/// can heal, is tried again first. The resolver is the test's own, answering NXDOMAIN on the
/// loopback of a network namespace of its own: nothing leaves the machine.
#[test]
fn unreachable_base_registries_say_what_to_do_and_nxdomain_is_not_retried() {
    if !forge_testsupport::root("a network namespace with its own resolver") {
        return;
    }
    let (Some(unshare), Some(ip)) = (
        forge_testsupport::tool("unshare"),
        forge_testsupport::tool("ip"),
    ) else {
        return;
    };
    let ws = forge_testsupport::scratch("forge-unreachable");
    let root = ws.path().join("store");
    let ctx = ws.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let resolv = ws.path().join("resolv.conf");
    fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM registry.forge-test.example/app:1\n",
    )
    .unwrap();
    let forge_bin = env!("CARGO_BIN_EXE_forge");
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {forge_bin} build --progress plain --root {} {}",
        resolv.display(),
        root.display(),
        ctx.display()
    );
    // A thread of its own enters a new network namespace; what it starts is in there too.
    let o = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the network");
        forge_testsupport::run(std::process::Command::new(ip).args(["link", "set", "lo", "up"]));
        let socket = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
        std::thread::spawn(move || nxdomain_server(socket));
        std::process::Command::new(unshare)
            .args(["-m", "sh", "-c", &script])
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("hint: no host is named registry.forge-test.example")
            && out.contains("Without a network, build from a base forge can reach"),
        "{out}"
    );
    assert!(
        !out.contains("retrying"),
        "NXDOMAIN was tried again:\n{out}"
    );

    // A refused connection may heal: it is retried, then the same advice.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM 127.0.0.1:{closed}/app:1\n"),
    )
    .unwrap();
    let o = forge(
        &root,
        &["build", "--progress", "plain", &ctx.to_string_lossy()],
    );
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("retrying manifest"), "{out}");
    // The pull and the phase it was in are marked failed, not done.
    assert!(
        out.contains(&format!("ERROR: registry 127.0.0.1:{closed}: manifest of")),
        "{out}"
    );
    assert!(
        out.contains("ERROR: base image 127.0.0.1:") && !out.contains(" DONE"),
        "{out}"
    );
    assert!(
        out.contains(&format!("hint: nothing answered at 127.0.0.1:{closed}")),
        "{out}"
    );

    // A registry that answers 404 (no such image) is not asked again either.
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {registry}/forge-test/no-such-image:1\n"),
    )
    .unwrap();
    let o = forge(
        &root,
        &["build", "--progress", "plain", &ctx.to_string_lossy()],
    );
    let out = printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("manifest unknown"), "{out}");
    assert!(!out.contains("retrying"), "a 404 was tried again:\n{out}");
    // The error names the FROM line, the registry, the reference and the status, in words
    // rather than the client library's.
    assert!(
        out.contains("Dockerfile:1:1: base image ")
            && out.contains(&format!(
                "registry {registry} has no manifest for {registry}/forge-test/no-such-image:1: status 404 from "
            ))
            && out.contains("MANIFEST_UNKNOWN"),
        "{out}"
    );
    assert!(!out.contains("OCI API error"), "{out}");
}

/// A registry that hands out bearer tokens (as Docker Hub does): `/v2/` answers 401 with a Bearer
/// challenge, the realm answers 200 with a token for `forge:right-password` and 401 otherwise.
/// Keeps the token requests' first lines.
fn token_registry() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut authorization = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    authorization = v.trim().to_string();
                }
            }
            let (status, extra, body) = if first.starts_with("GET /v2/ ") {
                (
                    "401 Unauthorized",
                    format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"forge-test\"\r\n"
                    ),
                    "{}",
                )
            } else if first.starts_with("GET /token?") {
                log.lock().unwrap().push(first.trim_end().to_string());
                // base64 of forge:right-password
                if authorization == "basic zm9yz2u6cmlnahqtcgfzc3dvcmq=" {
                    ("200 OK", String::new(), "{\"token\":\"t0k3n\"}")
                } else {
                    ("401 Unauthorized", String::new(), "{}")
                }
            } else {
                ("404 Not Found", String::new(), "{}")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// `forge login` on a registry that hands out bearer tokens asks the challenge's realm for one
/// with the credentials, naming the account and service, as `docker login` does; the realm's
/// refusal is the login's, with the realm's URL and status.
#[test]
fn login_asks_a_token_registrys_realm() {
    let (port, seen) = token_registry();
    let ws = forge_testsupport::scratch("forge-login-token");
    let docker = ws.path().join("docker");
    let addr = format!("127.0.0.1:{port}");
    let o = forge_logged(
        &docker,
        None,
        &["login", &addr, "-u", "forge", "--password-stdin"],
        "wrong\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(
        printed(&o).contains(&format!(
            "{addr} refused the login of forge (status 401 from http://127.0.0.1:{port}/token)"
        )),
        "{}",
        printed(&o)
    );
    assert!(
        !docker.join("config.json").exists(),
        "a refused login was stored"
    );

    let o = forge_logged(
        &docker,
        None,
        &["login", &addr, "-u", "forge", "--password-stdin"],
        "right-password\n",
    );
    assert!(o.status.success(), "{}", printed(&o));
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(docker.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        doc["auths"][&addr]["auth"], "Zm9yZ2U6cmlnaHQtcGFzc3dvcmQ=",
        "{doc}"
    );
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked[1].contains("account=forge") && asked[1].contains("service=forge-test"),
        "{asked:?}"
    );

    // A 401 without a challenge (a proxy that drops WWW-Authenticate, or no registry at all) is
    // said as such, and nothing is stored.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bare = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let o = forge_logged(
        &docker,
        None,
        &["login", &bare, "-u", "forge", "--password-stdin"],
        "right-password\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", printed(&o));
    assert!(
        printed(&o).contains(&format!(
            "{bare} answered status 401 from http://{bare}/v2/ without a WWW-Authenticate challenge"
        )),
        "{}",
        printed(&o)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(docker.join("config.json")).unwrap()).unwrap();
    assert!(doc["auths"].get(&bare).is_none(), "{doc}");
}

/// `-o type=registry,name=NAME` (buildx's form) names and pushes the image without `-t`; a
/// registry export with no name at all is refused, saying how to give one.
#[test]
fn an_output_name_names_and_pushes_the_image() {
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-output-name", "RUN echo named > /named\n")
    else {
        return;
    };
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let name = format!(
        "{registry}/forge-test/named:{}",
        forge_testsupport::unique()
    );
    let c = ctx.to_string_lossy().into_owned();
    let o = forge(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=registry,name={name}"),
            &c,
        ],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let stored = forge(&root, &["inspect", &name]);
    assert!(stored.status.success(), "{}", printed(&stored));
    let doc: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap();
    // The registry has it: a pull into another store gets the same manifest.
    let other = ws.path().join("other-store");
    let o = forge(&other, &["pull", "-q", &name]);
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        doc["digest"].as_str().unwrap()
    );

    let o = forge(&root, &["build", "-o", "type=registry", &c]);
    refused(&o, "or -o type=registry,name=NAME");
}

/// What a RUN step printed to `/env.NAME` in an exported filesystem.
fn env_file(dest: &std::path::Path, name: &str) -> String {
    fs::read_to_string(dest.join(format!("env.{name}")))
        .unwrap_or_else(|e| panic!("env.{name}: {e}"))
        .trim()
        .to_string()
}

/// `forge build --progress plain FLAGS -o type=local,dest=WS/OUT CTX` under `umask`, which must
/// succeed; returns the destination.
fn build_local(ws: &Workspace, flags: &[&str], out: &str, umask: &str) -> std::path::PathBuf {
    let dest = ws.dir.path().join(out);
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--progress", "plain"])
        .args(flags)
        .arg("-o")
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(&ws.ctx)
        .arg("--root")
        .arg(&ws.root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", printed(&o));
    dest
}

/// The soft and hard RLIMIT_NOFILE of this process, which forge inherits (/proc/self/limits).
fn own_nofile() -> (String, String) {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// The mount points forge makes for a RUN step's mounts, and their missing parents, are 0755 as
/// runc makes them, and so is a working directory the runner makes (one an earlier step removed),
/// as BuildKit makes it, even when forge runs under a umask of 077 (they were 0700 then); mount
/// points are gone after the step; a tmpfs mount's own root is 1777, the kernel's, as in
/// BuildKit. /dev/null is root's (forge runs as root here; rootless it is 65534, see the README).
/// Issue 14.
#[test]
fn run_step_mount_points_are_0755_whatever_forges_umask() {
    let script = "WORKDIR /wd/deep\nRUN rm -r /wd\n\
        RUN --mount=type=tmpfs,target=/made/for/tmpfs sh -c '\
        stat -c %a /made /made/for > /env.stub_modes; stat -c %a /made/for/tmpfs > /env.tmpfs_mode; \
        stat -c %a /wd /wd/deep > /env.workdir_modes; \
        stat -Lc \"%F %u:%g\" /dev/null > /env.devnull; umask > /env.umask'\n";
    let Some(ws) = workspace("forge-mount-modes", script) else {
        return;
    };
    let dest = build_local(&ws, &[], "out", "077");
    assert_eq!(env_file(&dest, "stub_modes"), "755\n755");
    assert_eq!(env_file(&dest, "tmpfs_mode"), "1777");
    assert_eq!(
        env_file(&dest, "workdir_modes"),
        "755\n755",
        "the working directory the runner made again"
    );
    assert_eq!(env_file(&dest, "devnull"), "character special file 0:0");
    // runc's default umask for the command, not forge's 077.
    assert_eq!(env_file(&dest, "umask"), "0022");
    assert!(
        !dest.join("made").exists(),
        "the mount point's parents stayed in the image"
    );
}

/// A RUN step's environment is BuildKit's sandbox (issue 14; BuildKit v0.12's executor over
/// containerd's default spec): hostname `buildkitsandbox` (forge's was `forge`), /dev/mqueue, a
/// 64 MiB /dev/shm, and the builder's own RLIMIT_NOFILE (BuildKit drops the spec's 1024).
/// `--shm-size` and `--ulimit` (docker's syntax; the last for a name wins) change the step and
/// its cache key: the second build runs the step again. Bad values are refused as docker does.
#[test]
fn run_steps_get_buildkits_sandbox_and_shm_size_and_ulimit() {
    let script = "RUN sh -c 'hostname > /env.hostname; cat /etc/hostname > /env.etc_hostname; \
        ulimit -Sn > /env.nofile_soft; ulimit -Hn > /env.nofile_hard; ulimit -Su > /env.nproc; \
        grep -E \" /dev/(mqueue|shm) \" /proc/mounts > /env.mounts'\n";
    let Some(ws) = workspace("forge-run-env", script) else {
        return;
    };
    let plain = build_local(&ws, &[], "plain", "022");
    assert_eq!(env_file(&plain, "hostname"), "buildkitsandbox");
    assert_eq!(env_file(&plain, "etc_hostname"), "buildkitsandbox");
    let (soft, hard) = own_nofile();
    assert_eq!(
        env_file(&plain, "nofile_soft"),
        soft,
        "forge's own soft limit"
    );
    assert_eq!(
        env_file(&plain, "nofile_hard"),
        hard,
        "forge's own hard limit"
    );
    let mounts = env_file(&plain, "mounts");
    assert!(
        mounts.contains("mqueue /dev/mqueue mqueue"),
        "no /dev/mqueue:\n{mounts}"
    );
    assert!(
        mounts.contains("/dev/shm tmpfs") && mounts.contains("size=65536k"),
        "/dev/shm is not 64 MiB:\n{mounts}"
    );

    let limited = build_local(
        &ws,
        &[
            "--shm-size",
            "128m",
            "--ulimit",
            "nofile=1024:2048",
            "--ulimit",
            "nproc=500",
            "--ulimit",
            "nproc=4096",
        ],
        "limited",
        "022",
    );
    assert_eq!(env_file(&limited, "nofile_soft"), "1024");
    assert_eq!(env_file(&limited, "nofile_hard"), "2048");
    assert_eq!(
        env_file(&limited, "nproc"),
        "4096",
        "the last --ulimit wins"
    );
    let mounts = env_file(&limited, "mounts");
    assert!(
        mounts.contains("size=131072k"),
        "--shm-size 128m:\n{mounts}"
    );

    let ctx = ws.ctx.to_string_lossy();
    for (bad, why) in [
        (&["--ulimit", "files=10"][..], "invalid ulimit type: files"),
        (
            &["--ulimit", "nofile=20:10"][..],
            "soft limit must be less than or equal",
        ),
        (&["--shm-size", "0"][..], "a size above 0"),
        (&["--shm-size", "12x"][..], "unknown unit"),
    ] {
        let mut args = vec!["build"];
        args.extend_from_slice(bad);
        args.push(&ctx);
        refused(&forge(&ws.root, &args), why);
    }
}

/// A one-shot-per-request HTTP server on a free loopback port serving `files` (path -> body);
/// other paths get 404. Returns the port.
fn file_server(files: Vec<(&'static str, Vec<u8>)>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            // Headers up to the blank line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let response = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    port
}

/// `forge build URL` as `docker build URL`: a tarball (here gzip, made by tar(1)) is the context, a
/// plain file is the Dockerfile with an empty context, a missing one names the URL and the status.
#[test]
fn a_url_context_is_a_tarball_or_a_dockerfile() {
    let Some(ws) = workspace("forge-url-context", "COPY hello.txt /hello.txt\n") else {
        return;
    };
    fs::write(ws.ctx.join("hello.txt"), "hello over http\n").unwrap();
    let tgz = ws.dir.path().join("ctx.tar.gz");
    let tar = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&ws.ctx)
        .args(["Dockerfile", "hello.txt"])
        .status()
        .unwrap();
    assert!(tar.success());
    let lone = fs::read_to_string(ws.ctx.join("Dockerfile"))
        .unwrap()
        .replace("COPY hello.txt /hello.txt\n", "RUN echo lone > /lone.txt\n");
    let port = file_server(vec![
        ("/ctx.tar.gz", fs::read(&tgz).unwrap()),
        ("/Dockerfile", lone.into_bytes()),
    ]);
    let build = |url: &str, out: &str| {
        let dest = ws.dir.path().join(out);
        let o = forge(
            &ws.root,
            &[
                "build",
                "--progress",
                "plain",
                "-o",
                &format!("type=local,dest={}", dest.display()),
                url,
            ],
        );
        (o, dest)
    };
    let (o, dest) = build(&format!("http://127.0.0.1:{port}/ctx.tar.gz"), "tar");
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        fs::read_to_string(dest.join("hello.txt")).unwrap(),
        "hello over http\n"
    );
    let (o, dest) = build(&format!("http://127.0.0.1:{port}/Dockerfile"), "lone");
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(fs::read_to_string(dest.join("lone.txt")).unwrap(), "lone\n");
    let missing = format!("http://127.0.0.1:{port}/nothing.tar");
    let (o, _) = build(&missing, "missing");
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains(&missing) && text.contains("404"), "{text}");
    // A git repository where nothing listens: the error names the clone and the address.
    let (o, _) = build("https://127.0.0.1:9/team/app.git#main:sub", "git");
    let text = printed(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("cloning https://127.0.0.1:9/team/app.git at main"),
        "{text}"
    );
}

/// A git repository as the context (`git://...git#ref:dir`, as `docker build` takes it), cloned
/// with gix from a `git daemon` on loopback (git(1) serves, forge does not run it): the branch the
/// fragment names, the directory inside it, no `.git`; a directory that leads out of the checkout
/// and a ref that does not exist are refused naming them.
#[test]
fn a_git_url_context_is_cloned_at_its_ref_and_directory() {
    let Some(ws) = workspace("forge-git-context", "") else {
        return;
    };
    let Some(_) = forge_testsupport::tool("git") else {
        return;
    };
    let base = fs::read_to_string(ws.ctx.join("Dockerfile")).unwrap();
    let repos = ws.dir.path().join("repos");
    let work = repos.join("app.git");
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", printed(&o));
    };
    fs::create_dir_all(work.join("sub")).unwrap();
    git(&["init", "-q", "-b", "main"]);
    fs::write(
        work.join("sub/Dockerfile"),
        format!("{base}COPY note.txt /note.txt\n"),
    )
    .unwrap();
    fs::write(work.join("sub/note.txt"), "on main\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "main"]);
    git(&["checkout", "-q", "-b", "release"]);
    fs::write(work.join("sub/note.txt"), "on release\n").unwrap();
    git(&["commit", "-q", "-am", "release"]);
    git(&["checkout", "-q", "main"]);
    let daemon = forge_testsupport::GitDaemon::serve(&repos);
    let port = daemon.port;
    let build = |fragment: &str, out: &str| {
        let dest = ws.dir.path().join(out);
        let url = format!("git://127.0.0.1:{port}/app.git{fragment}");
        let o = forge(
            &ws.root,
            &[
                "build",
                "--progress",
                "plain",
                "-o",
                &format!("type=local,dest={}", dest.display()),
                &url,
            ],
        );
        (o, dest)
    };
    let (o, dest) = build("#release:sub", "release");
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        fs::read_to_string(dest.join("note.txt")).unwrap(),
        "on release\n"
    );
    let (o, dest) = build("#:sub", "head");
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        fs::read_to_string(dest.join("note.txt")).unwrap(),
        "on main\n"
    );
    let (o, _) = build("#main:../..", "out");
    assert!(!o.status.success());
    assert!(
        printed(&o).contains("not a directory inside the repository"),
        "{}",
        printed(&o)
    );
    let (o, _) = build("#no-such-branch:sub", "none");
    assert!(!o.status.success());
    assert!(printed(&o).contains("no-such-branch"), "{}", printed(&o));
    drop(daemon);
}

/// `--build-context NAME=DIR` is read by `COPY --from=NAME` and `RUN --mount=from=NAME` (its files
/// root's, its content in the key), `NAME=docker-image://REF` stands in for an image `FROM NAME`;
/// what forge does not do (a directory as a base, replacing a stage, other schemes) is refused.
#[test]
fn build_contexts_name_directories_and_images() {
    let Some(image) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(w) = workspace(
        "forge-build-context",
        "COPY --from=docs guide.txt /guide.txt
         RUN --mount=from=docs,target=/d cat /d/guide.txt > /mounted.txt
         FROM base AS final
         COPY --from=0 /guide.txt /mounted.txt /
         RUN stat -c %u:%g /guide.txt > /owner.txt
",
    ) else {
        return;
    };
    let docs = w.dir.path().join("docs");
    fs::create_dir_all(&docs).unwrap();
    fs::write(docs.join("guide.txt"), "read me\n").unwrap();
    std::os::unix::fs::chown(docs.join("guide.txt"), Some(1234), Some(1234)).unwrap();
    let (docs_flag, base_flag) = (
        format!("docs={}", docs.display()),
        format!("base=docker-image://{image}"),
    );
    let build = |out: &str| {
        let flags = ["--build-context", &docs_flag, "--build-context", &base_flag];
        build_local(&w, &flags, out, "022")
    };
    let (root, ctx) = (&w.root, &w.ctx);
    let out = build("one");
    assert_eq!(
        fs::read_to_string(out.join("guide.txt")).unwrap(),
        "read me\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("mounted.txt")).unwrap(),
        "read me\n"
    );
    assert_eq!(fs::read_to_string(out.join("owner.txt")).unwrap(), "0:0\n");
    // The directory's content is in the key: a change is seen.
    fs::write(docs.join("guide.txt"), "read me again\n").unwrap();
    let out = build("two");
    assert_eq!(
        fs::read_to_string(out.join("mounted.txt")).unwrap(),
        "read me again\n"
    );

    let with = |context: &str, dockerfile: &str| {
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        forge(
            root,
            &["build", "--build-context", context, &ctx.to_string_lossy()],
        )
    };
    let o = with(&format!("docs={}", docs.display()), "FROM docs\n");
    assert!(!o.status.success());
    assert!(printed(&o).contains("is a directory"), "{}", printed(&o));
    let o = with(
        &format!("build={}", docs.display()),
        &format!("FROM {image} AS build\nFROM build\n"),
    );
    assert!(!o.status.success());
    assert!(
        printed(&o).contains("name of a --build-context"),
        "{}",
        printed(&o)
    );
    for (bad, why) in [
        (
            "docs=https://example.invalid/x.tar",
            "https:// build contexts are not supported",
        ),
        ("context=/tmp", "main build context's own name"),
        ("nodelimiter", "want NAME=PATH"),
    ] {
        let o = forge(
            root,
            &["build", "--build-context", bad, &ctx.to_string_lossy()],
        );
        refused(&o, why);
    }
}

/// `registries.conf` mirrors (podman's and buildah's file, here through `FORGE_REGISTRIES_CONF`):
/// a base named on Docker Hub is pulled from its mirror on loopback (the registry itself blocked,
/// so nothing leaves the machine); an image the mirror lacks fails naming the mirror; a file that
/// does not parse fails the pull naming the file.
#[test]
fn registries_conf_mirrors_serve_base_images() {
    let Some(busybox) = forge_testsupport::busybox_image() else {
        return;
    };
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-mirrors", "RUN echo mirrored > /ok\n")
    else {
        return;
    };
    let Some(mirror) = forge_testsupport::private_registry() else {
        return;
    };
    // The mirror holds busybox where a Docker Hub mirror keeps it: under library/.
    let seed = ws.path().join("seed");
    fs::create_dir_all(&seed).unwrap();
    fs::write(seed.join("Dockerfile"), format!("FROM {busybox}\n")).unwrap();
    let copy = format!("{}/hub/library/busybox:latest", mirror.addr);
    let o = forge(
        &ws.path().join("seed-root"),
        &["build", "-t", &copy, "--push", &seed.to_string_lossy()],
    );
    assert!(o.status.success(), "{}", printed(&o));
    let conf = ws.path().join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\nblocked = true\n\n\
             [[registry.mirror]]\nlocation = \"{}/hub\"\n",
            mirror.addr
        ),
    )
    .unwrap();
    let build = |dockerfile: &str, conf: &std::path::Path| {
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["build", "--pull", "--progress=plain", "--root"])
            .arg(&root)
            .arg("-o")
            .arg(format!(
                "type=local,dest={}",
                ws.path().join("out").display()
            ))
            .arg(&ctx)
            .env("FORGE_REGISTRIES_CONF", conf)
            .output()
            .unwrap()
    };
    let o = build("FROM busybox\nRUN echo mirrored > /ok\n", &conf);
    assert!(o.status.success(), "{}", printed(&o));
    assert_eq!(
        fs::read_to_string(ws.path().join("out/ok")).unwrap(),
        "mirrored\n"
    );
    assert!(
        mirror
            .served()
            .iter()
            .any(|s| s.path == "/v2/hub/library/busybox/manifests/latest" && s.status == 200),
        "the mirror was not asked: {:?}",
        mirror.served()
    );
    let o = build("FROM alpine\n", &conf);
    assert!(!o.status.success());
    assert!(
        printed(&o).contains(&format!("{}/hub/library/alpine", mirror.addr)),
        "{}",
        printed(&o)
    );
    let bad = ws.path().join("bad.conf");
    fs::write(&bad, "[[registry]\nprefix = 1\n").unwrap();
    let o = build("FROM busybox\n", &bad);
    assert!(!o.status.success());
    assert!(printed(&o).contains("bad.conf"), "{}", printed(&o));
}

/// `--compression zstd` with Docker's media types (`-o type=docker`, or `oci-mediatypes=false`)
/// wrote a Docker manifest of `diff.tar.zstd` layers, a type skopeo and buildah refuse. The image
/// gets OCI's media types instead, as BuildKit gives it, and the build says so.
#[test]
fn zstd_layers_get_oci_media_types_even_in_a_docker_tar() {
    let Some(Workspace { dir: ws, root, ctx }) =
        workspace("forge-zstd-docker", "RUN echo z > /z\n")
    else {
        return;
    };
    let c = ctx.to_string_lossy().into_owned();
    let texts = |tar: &[u8]| -> Vec<String> {
        let mut out = Vec::new();
        for e in tar::Archive::new(tar).entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            out.push(String::from_utf8_lossy(&body).into_owned());
        }
        out
    };
    for (compression, manifest, warned) in [
        (
            "gzip",
            "application/vnd.docker.distribution.manifest.v2+json",
            false,
        ),
        ("zstd", "application/vnd.oci.image.manifest.v1+json", true),
    ] {
        let file = ws.path().join(format!("{compression}.tar"));
        let o = forge(
            &root,
            &[
                "build",
                "--compression",
                compression,
                "-o",
                &format!("type=docker,dest={}", file.display()),
                &c,
            ],
        );
        assert!(o.status.success(), "{}", printed(&o));
        let all = texts(&fs::read(&file).unwrap());
        assert!(
            all.iter()
                .any(|t| t.contains(&format!("\"mediaType\":\"{manifest}\""))),
            "{compression}: no {manifest} manifest"
        );
        assert!(
            !all.iter()
                .any(|t| t.contains("vnd.docker.image.rootfs.diff.tar.zstd")),
            "{compression}: a Docker-typed zstd layer"
        );
        assert_eq!(
            printed(&o).contains("Docker's media types cannot name"),
            warned,
            "{}",
            printed(&o)
        );
    }
}
