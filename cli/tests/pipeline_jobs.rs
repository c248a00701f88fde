//! `forge run`'s jobs one feature at a time, each in a small workspace of its own (one busybox
//! image, `app`): artifacts' modes, services and their secrets, masking across a line's cut and in
//! JUnit reports, GitLab's `before_script`/`after_script` and predefined names, and the log limit.
//! Real parts as in `pipeline_run.rs`: the loopback registry, the busybox test image, the
//! embedded runner as root.

mod common;

use std::fs;

use common::pipeline::{forge_run, lines_with, machine, run_ok, small_workspace, stored_log};
use common::printed;

/// Regression (S1): a job that made its artifact setuid root handed every local user a
/// setuid-root program in the artifacts directory (forge runs as root here). The host's copy
/// has no setuid or setgid bit and is forge's; the job that needs it still sees the job's mode.
#[test]
fn a_setuid_artifact_lands_on_the_host_without_the_bit_and_owned_by_forge() {
    use std::os::unix::fs::MetadataExt;
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-suid",
        r#"jobs:
  mk:
    image: app
    script:
      - cp /bin/busybox ./sushell && chown 1234:1234 sushell && chmod 6755 sushell
    artifacts:
      paths: [sushell]
  use:
    image: app
    needs: [mk]
    script:
      - echo "inside $(stat -c '%a %u' /w/sushell)"
"#,
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(out.contains("[use] inside 6755 1234"), "{out}");
    let md = fs::metadata(dir.join("forge-artifacts/mk/sushell")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_eq!(
        (md.uid(), md.gid()),
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw()
        )
    );
}

/// Regression (S2): a service's lines (and forge's note that it exited, which quotes its last
/// line) went into the job's log unmasked, so a secret the job sent to its database showed in
/// the database's log. The service listens until a connection brings something: a connection
/// that brings nothing (one the job's retry loop makes while the service starts) would end it
/// with no line to mask (one CI run in four failed so). The job waits for the service as long as
/// a loaded machine needs (it took more than 5 s at a load of 3.7 on 2 cores), and then until
/// the service, done printing, takes a last connection and exits. It sends again until that last
/// connection is taken: on a loaded machine a send the service took brought nothing (busybox nc),
/// and the job, done sending, waited on a service still listening for its line.
#[test]
fn a_services_lines_are_masked_with_the_jobs_secrets() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-svc-mask",
        r#"jobs:
  send:
    image: app
    secrets: [TOKEN]
    services:
      - name: logger
        image: app
        command: ["sh", "-c", "while :; do nc -l -p 7000 > /tmp/got; [ -s /tmp/got ] && break; done; cat /tmp/got; sed 's/^/bye /' /tmp/got; nc -l -p 7001 < /dev/null"]
    script:
      - for i in $(seq 1 120); do echo "login with $TOKEN" | nc logger 7000 || true; nc logger 7001 < /dev/null && break; sleep 0.5; done
      - sleep 2
"#,
    );
    let secret = format!("tokvalue-SERVICE-{}", forge_testsupport::unique());
    let out = run_ok(&dir, &root, &["run"], &[("TOKEN", &secret)]);
    assert!(out.contains("[send] [logger] login with ****"), "{out}");
    assert!(out.contains("its last line: bye login with ****"), "{out}");
    assert!(!out.contains(&secret), "the secret was printed:\n{out}");
    let log = stored_log(&dir, &root, "send");
    assert!(log.contains("[logger] login with ****"), "{log}");
    assert!(!log.contains(&secret), "the secret was stored:\n{log}");
}

/// A service given one of its job's secrets (`secrets: [DBPASS]`, as a database takes its
/// password) has it in its environment and in /run/secrets, and so does its readiness probe;
/// what it prints of it is masked, and the secret is no part of the job's key.
#[test]
fn a_service_gets_the_secrets_it_names_from_its_job() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-svc-secret",
        r#"jobs:
  t:
    image: app
    secrets: [DBPASS]
    services:
      - name: db
        image: app
        secrets: [DBPASS]
        variables: {PASS_FILE: /run/secrets/DBPASS}
        command:
          - sh
          - -c
          - mkdir -p /www && test "$DBPASS" = "$(cat $PASS_FILE)" && echo "auth:$DBPASS" > /www/index.html && echo "db starts with $DBPASS" && exec httpd -f -p 127.0.0.1:7000 -h /www
        ready:
          command: wget -Y off -q -O- http://127.0.0.1:7000/ | grep -qx "auth:$(cat /run/secrets/DBPASS)"
    script:
      - test "$(wget -Y off -q -O- http://db:7000/)" = "auth:$DBPASS" && echo the service had the secret
"#,
    );
    let secret = format!("dbpass-{}", forge_testsupport::unique());
    let out = run_ok(&dir, &root, &["run"], &[("DBPASS", &secret)]);
    assert!(out.contains("[t] the service had the secret"), "{out}");
    assert!(out.contains("[t] [db] db starts with ****"), "{out}");
    assert!(!out.contains(&secret), "the secret was printed:\n{out}");
    // Another value of the secret is the same job: the cached verdict is replayed.
    let out = run_ok(
        &dir,
        &root,
        &["run"],
        &[("DBPASS", "another-value-entirely")],
    );
    assert!(out.contains("(cached) the service had the secret"), "{out}");
}

/// A file written for GitLab runs as written: a bare image as a service (reached by the name
/// GitLab makes from it), GitLab's map (`name:` the image, `alias:` its names, `entrypoint:`
/// replacing the image's and its CMD), and `image: {name, entrypoint}` running the script's shell
/// through the entrypoint.
#[test]
fn gitlab_s_image_and_service_forms_run_as_gitlab_runs_them() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-gitlab-forms",
        r#"  web: {context: web}
jobs:
  gl:
    image:
      name: app
      entrypoint: ["/bin/sh", "-c", "echo entry ran before $1; exec \"$@\"", "entry"]
    services:
      - web
      - name: web
        alias: api, api2
        entrypoint: ["httpd"]
        command: ["-f", "-p", "127.0.0.1:7001", "-h", "/www"]
    script:
      - for i in $(seq 1 120); do wget -Y off -q -O- http://web:7000/ > got && break; sleep 0.5; done; test "$(cat got)" = served
      - for i in $(seq 1 120); do wget -Y off -q -O- http://api:7001/ > got && break; sleep 0.5; done; test "$(cat got)" = served
      - wget -Y off -q -O- http://api2:7001/ | grep -qx served && echo every name answers
"#,
    );
    fs::create_dir_all(dir.join("web")).unwrap();
    fs::write(
        dir.join("web/Dockerfile"),
        format!(
            "FROM {}\nRUN mkdir /www && echo served > /www/index.html\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"127.0.0.1:7000\", \"-h\", \"/www\"]\n",
            m.busybox
        ),
    )
    .unwrap();
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(out.contains("[gl] entry ran before /bin/sh"), "{out}");
    assert!(out.contains("[gl] every name answers"), "{out}");
    // GitLab's `[""]` (no entrypoint) runs the shell alone, and is another job: it runs again.
    let pipeline = fs::read_to_string(dir.join("forge.yaml")).unwrap();
    fs::write(
        dir.join("forge.yaml"),
        pipeline.replace(
            r#"["/bin/sh", "-c", "echo entry ran before $1; exec \"$@\"", "entry"]"#,
            r#"[""]"#,
        ),
    )
    .unwrap();
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(!out.contains("entry ran"), "{out}");
    assert!(out.contains("[gl] every name answers"), "{out}");
}

/// GitLab's `when: manual`: `forge run` skips the job and says how to run it, `forge run deploy`
/// runs it.
#[test]
fn a_manual_job_runs_when_asked_for_by_name() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-manual",
        r#"jobs:
  unit:
    image: app
    script: [echo unit ran]
  deploy:
    stage: deploy
    image: app
    when: manual
    script: [echo deploying]
"#,
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(out.contains("[unit] unit ran"), "{out}");
    assert!(!out.contains("deploying"), "{out}");
    assert!(
        out.contains("job deploy: skipped: when: manual (`forge run deploy` runs it)"),
        "{out}"
    );
    let out = run_ok(&dir, &root, &["run", "deploy"], &[]);
    assert!(out.contains("[deploy] deploying"), "{out}");
    // Asked for again on the same tree, it runs again (GitLab's play button pressed twice deploys
    // twice): a manual job is an action, so its verdict is never served from the cache, while a
    // job it needs would be.
    let out = run_ok(&dir, &root, &["run", "deploy", "unit"], &[]);
    assert!(out.contains("[deploy] deploying"), "{out}");
    assert!(!out.contains("[deploy] (cached)"), "{out}");
    assert!(out.contains("[unit] (cached) unit ran"), "{out}");
}

/// GitLab's `artifacts: exclude:` leaves out the entries it matches (the entry itself: `**`
/// reaches below a directory), and `expire_in:` is read as GitLab writes it.
#[test]
fn artifacts_exclude_leaves_out_what_it_matches() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-exclude",
        r#"jobs:
  mk:
    image: app
    script:
      - mkdir -p build/sub build/objs && touch build/a.o build/app build/sub/b.o build/sub/b.txt build/objs/c
    artifacts:
      paths: [build/]
      exclude: ["build/**/*.o", build/objs]
      expire_in: 1 week
"#,
    );
    run_ok(&dir, &root, &["run"], &[]);
    let got = dir.join("forge-artifacts/mk/build");
    for kept in ["app", "sub/b.txt", "objs/c"] {
        assert!(got.join(kept).exists(), "{kept} missing");
    }
    for left in ["a.o", "sub/b.o"] {
        assert!(!got.join(left).exists(), "{left} kept");
    }
}

/// GitLab's `dependencies:` and `needs: [{job, artifacts: false}]` choose whose artifacts a job
/// receives: only the ones named reach its filesystem.
#[test]
fn dependencies_choose_whose_artifacts_a_job_receives() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-deps",
        r#"jobs:
  a:
    stage: build
    image: app
    script: [echo a > from-a]
    artifacts: {paths: [from-a]}
  b:
    stage: build
    image: app
    script: [echo b > from-b]
    artifacts: {paths: [from-b]}
  only-a:
    image: app
    dependencies: [a]
    script: ['echo "only-a sees: $(ls from-* | tr "\n" " ")"']
  none:
    image: app
    dependencies: []
    script: ['echo "none sees: $(ls from-* 2>/dev/null | wc -l) files"']
  waits:
    image: app
    needs: [{job: a, artifacts: false}, b]
    script: ['echo "waits sees: $(ls from-* | tr "\n" " ")"']
"#,
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(out.contains("[only-a] only-a sees: from-a \n"), "{out}");
    assert!(out.contains("[none] none sees: 0 files"), "{out}");
    assert!(out.contains("[waits] waits sees: from-b \n"), "{out}");
}

/// Regression (S3): the runner hands on a line in 64 KiB pieces, and a secret across the cut
/// was printed and stored in two unmasked halves. And (session 36): a cut inside one of a
/// non-ASCII secret's characters decoded it as two replacement characters, so the line no longer
/// held the secret to mask, and the rest of it was shown.
#[test]
fn a_secret_across_the_64_kib_cut_of_a_line_is_masked() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-cut-mask",
        r#"jobs:
  leak:
    image: app
    secrets: [TOKEN]
    script:
      - head -c 65530 /dev/zero | tr '\0' y; echo "$TOKEN"
      - for off in 65520 65529 65530 65533 65534; do head -c $off /dev/zero | tr '\0' y; echo "$TOKEN off=$off"; done
"#,
    );
    let secret = format!("pässwörd-{}-ßecret-ünï€ode", forge_testsupport::unique());
    let out = run_ok(&dir, &root, &["run"], &[("TOKEN", &secret)]);
    assert!(out.contains("y****"), "{out}");
    let log = stored_log(&dir, &root, "leak");
    for text in [&out, &log] {
        assert!(
            !text.contains("sswörd") && !text.contains("ßecret") && !text.contains('\u{FFFD}'),
            "a part of the secret was shown: {}",
            text.replace(&"y".repeat(200), "")
        );
        assert_eq!(
            text.matches("**** off=").count(),
            5,
            "{}",
            text.replace(&"y".repeat(200), "")
        );
    }
}

/// (Session 36) Every secret of the run is masked in every job's lines, not only in the lines of
/// the jobs given it: a job may hand one on in its artifacts or dotenv report. And a service's
/// `ready` probe that fails with a secret in its output is said masked: in the job's line, the
/// summary and the metadata file.
#[test]
fn secrets_handed_on_or_quoted_by_a_failing_probe_stay_masked() {
    let Some(m) = machine() else { return };
    let (ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-handed-mask",
        r#"stages: [a, b]
jobs:
  producer:
    stage: a
    image: app
    secrets: [TOKEN]
    script: ['mkdir -p out && echo "$TOKEN" > out/tok.txt', 'echo "HANDED=$TOKEN" > build.env']
    artifacts: {paths: [out/], reports: {dotenv: build.env}}
  consumer:
    stage: b
    image: app
    script: ['cat out/tok.txt', 'echo "dotenv gives $HANDED"']
  probed:
    stage: b
    image: app
    allow_failure: true
    secrets: [TOKEN]
    services:
      - name: never
        image: app
        command: ["sleep", "1000"]
        secrets: [TOKEN]
        ready: {command: 'echo "probe sees $TOKEN"; false', timeout: 2s, interval: 1s}
    script: ["true"]
"#,
    );
    let secret = format!("tokvalue-HANDED-{}", forge_testsupport::unique());
    let meta = ws.path().join("meta.json");
    let out = run_ok(
        &dir,
        &root,
        &["run", "--metadata-file", &meta.to_string_lossy()],
        &[("TOKEN", &secret)],
    );
    assert!(out.contains("[consumer] ****"), "{out}");
    assert!(out.contains("[consumer] dotenv gives ****"), "{out}");
    assert!(out.contains("probe sees ****"), "{out}");
    let meta = std::fs::read_to_string(&meta).unwrap();
    assert!(meta.contains("probe sees ****"), "{meta}");
    let log = stored_log(&dir, &root, "consumer");
    for text in [&out, &meta, &log] {
        assert!(!text.contains(&secret), "the secret was shown:\n{text}");
    }
}

/// (Session 36) A job whose every artifact and cache path matches nothing is warned of each, as
/// when another path matches: a run that left nothing at any path took nothing out, and its
/// paths went unsaid.
#[test]
fn paths_that_all_match_nothing_are_each_warned_of() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-nothing-matched",
        r#"jobs:
  producer:
    image: app
    script: [echo hi]
    artifacts: {paths: [typo-path]}
    cache: {key: k6, paths: [typo-cache]}
"#,
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    for said in [
        "[producer] forge: warning: artifacts: typo-path: no matching files",
        "[producer] forge: warning: cache: typo-cache: no matching files",
        "[producer] forge: cache `k6`: not saved, no path matched",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
}

/// GitLab's `before_script` (one shell with the script) and `after_script` (a shell of its own,
/// after the script whatever its result, which it does not change), from the job or else from
/// `default:`.
#[test]
fn before_and_after_script_run_around_the_script_as_in_gitlab_with_pipefail() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-before-after",
        r#"default:
  before_script: [GREETING=from-before]
  after_script: ["echo \"cleanup sees [$GREETING]\""]
jobs:
  plain:
    image: app
    script: ["echo \"main sees [$GREETING]\"", "echo \"gitlab names [$CI_JOB_NAME] [$CI_PIPELINE_IID]\""]
  own:
    image: app
    allow_failure: true
    before_script: []
    after_script: [echo own cleanup, exit 9]
    script: [echo own main, exit 4, echo not reached]
  piped:
    image: app
    allow_failure: true
    before_script: []
    after_script: []
    script: ["false | tee log.txt", echo piped not reached]
"#,
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(out.contains("[plain] main sees [from-before]"), "{out}");
    assert!(out.contains("[plain] gitlab names [plain] [1]"), "{out}");
    // A shell of its own: the script's variables are not in it.
    assert!(out.contains("[plain] cleanup sees []"), "{out}");
    assert!(
        out.find("[plain] main sees") < out.find("[plain] cleanup sees"),
        "{out}"
    );
    assert!(!out.contains("[own] $ GREETING=from-before"), "{out}");
    assert!(out.contains("[own] own cleanup"), "{out}");
    assert!(!out.contains("[own] not reached"), "{out}");
    assert!(
        out.contains("[own] forge: after_script exited with 9 (the job's result is its script's)"),
        "{out}"
    );
    assert!(
        out.contains("job own: failed (allowed) (exit status 4)"),
        "{out}"
    );
    // GitLab's runner sets pipefail where the shell has it (busybox's does): a failing command
    // fails its pipeline, and the job.
    assert!(!out.contains("[piped] piped not reached"), "{out}");
    assert!(
        out.contains("job piped: failed (allowed) (exit status 1)"),
        "{out}"
    );
}

/// A job (or an image's step) that prints without end would fill the disk its logs are on: past
/// `--log-limit` its output is left out of the printed and the stored log, said once, while it
/// goes on running to its end and its result.
#[test]
fn output_past_the_log_limit_is_left_out_once_said_and_the_job_goes_on() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-log-limit",
        r#"jobs:
  loud:
    image: app
    script:
      - seq 1 200000
      - echo went on > went-on.txt
    artifacts:
      paths: [went-on.txt]
"#,
    );
    fs::write(
        dir.join("app/Dockerfile"),
        format!("FROM {}\nRUN seq 1 100000\nWORKDIR /w\n", m.busybox),
    )
    .unwrap();
    let o = forge_run(&dir, &root, &["run", "--log-limit", "64k"], &[]);
    let out = printed(&o);
    let short = |t: &str| {
        t.lines()
            .filter(|l| !l.contains("] 1"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(o.status.success(), "{}", short(&out));
    let job_note = "forge: job loud printed more than 64 KiB (the log limit)";
    let image_note = "forge: image app printed more than 64 KiB (the log limit)";
    assert_eq!(out.matches(job_note).count(), 1, "{}", short(&out));
    assert_eq!(out.matches(image_note).count(), 1, "{}", short(&out));
    // What was kept is the start of the output, within the limit.
    let kept: usize = lines_with(&out, "[loud] ")
        .iter()
        .filter(|l| !l.contains("forge:"))
        .map(|l| l.len() - "[loud] ".len() + 1)
        .sum();
    assert!(
        kept > 60 << 10 && kept <= 64 << 10,
        "kept {kept} bytes of the job's output"
    );
    assert!(out.contains("[loud] 1\n"), "the first line is kept");
    assert!(!out.contains("[loud] 200000"), "the last line is left out");
    // The job ran on past the cut: its last command's file is its artifact.
    assert_eq!(
        fs::read_to_string(dir.join("forge-artifacts/loud/went-on.txt")).unwrap(),
        "went on\n"
    );
    let log = stored_log(&dir, &root, "loud");
    assert_eq!(log.matches(job_note).count(), 1, "{}", short(&log));
    assert!(
        log.len() < 80 << 10,
        "the stored log holds {} bytes",
        log.len()
    );
    // Without a limit everything is kept.
    let o = forge_run(&dir, &root, &["run", "--no-cache", "--log-limit", "0"], &[]);
    let out = printed(&o);
    assert!(o.status.success(), "{}", short(&out));
    assert!(out.contains("[loud] 200000\n"), "the last line is shown");
    assert!(!out.contains("(the log limit)"), "{}", short(&out));
}

/// Regression (S4): a JUnit report's test names and failure messages were printed in the run's
/// summary and kept in `--metadata-file` unmasked, though the job wrote them with its secret.
#[test]
fn junit_test_names_and_messages_are_masked_in_the_summary_and_the_metadata() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-junit-mask",
        r#"jobs:
  t:
    image: app
    secrets: [TOKEN]
    script:
      - >-
        echo "<testsuite name=\"s\" tests=\"1\" failures=\"1\"><testcase name=\"auth with $TOKEN\"
        classname=\"c\"><failure message=\"expected $TOKEN got nothing\">x</failure></testcase></testsuite>"
        > junit.xml
      - exit 1
    artifacts:
      when: always
      reports:
        junit: junit.xml
"#,
    );
    let secret = format!("tokvalue-JUNIT-{}", forge_testsupport::unique());
    let o = forge_run(
        &dir,
        &root,
        &["run", "--metadata-file", "meta.json"],
        &[("TOKEN", &secret)],
    );
    let out = printed(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("failed test: t: c.auth with ****"), "{out}");
    assert!(!out.contains(&secret), "the secret was printed:\n{out}");
    let meta = fs::read_to_string(dir.join("meta.json")).unwrap();
    assert!(meta.contains("expected **** got nothing"), "{meta}");
    assert!(!meta.contains(&secret), "the secret was stored:\n{meta}");
}

/// Regression (W9): `/run/secrets/NAME` was root's alone (0400), so a job whose image has a
/// non-root `USER` (here a name, known only from the image's /etc/passwd) could not read it.
#[test]
fn a_job_whose_image_has_a_non_root_user_reads_its_secret_file() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-nonroot-secret",
        r#"jobs:
  u:
    image: app
    secrets: [TOKEN]
    script:
      - id -un
      - cat /run/secrets/TOKEN > /tmp/got && echo "read $(wc -c < /tmp/got) bytes"
"#,
    );
    fs::write(
        dir.join("app/Dockerfile"),
        format!(
            "FROM {}\nRUN echo appuser:x:4242:4242::/tmp:/bin/sh >> /etc/passwd\nUSER appuser\nWORKDIR /tmp\n",
            m.busybox
        ),
    )
    .unwrap();
    let out = run_ok(&dir, &root, &["run"], &[("TOKEN", "nonroot-secret-1")]);
    assert!(out.contains("[u] appuser"), "{out}");
    assert!(out.contains("[u] read 16 bytes"), "{out}");
}

/// GitLab's `cache:`: a job's paths are saved under their key after it passes and laid on its
/// filesystem the next time it runs (here the next run, and in the same run a later job's on the
/// same key); `policy: pull` restores and never saves, `fallback_keys` serve a key that has
/// none yet. The cache is in no job's key: an unchanged job is still served by its recorded
/// verdict (and saves nothing). `forge prune --cache-mounts` drops the caches.
#[test]
fn gitlab_caches_carry_paths_from_run_to_run_and_stay_out_of_the_jobs_keys() {
    let Some(m) = machine() else { return };
    let pipeline = |round: u32| {
        format!(
            r#"stages: [fill, read]
jobs:
  fill:
    stage: fill
    image: app
    cache:
      key: deps
      paths: [.deps/]
    script:
      - echo "round {round}"
      - mkdir -p .deps && echo x >> .deps/count
      - echo "fill counts $(wc -l < .deps/count)"
  read:
    stage: read
    image: app
    cache:
      key: deps
      paths: [.deps/]
      policy: pull
    script:
      - echo "round {round}"
      - echo "read counts $(wc -l < .deps/count)"
      - echo x >> .deps/count
  other:
    stage: read
    image: app
    cache:
      key: other-$CI_JOB_NAME
      fallback_keys: [deps]
      paths: [.deps/]
      policy: pull
    script:
      - echo "round {round}"
      - echo "other counts $(cat .deps/count 2>/dev/null | wc -l)"
"#
        )
    };
    let (_ws, dir, root) = small_workspace(&m, "forge-pipeline-gitlab-cache", &pipeline(1));
    let with_image = |round| format!("images:\n  app: {{context: app}}\n{}", pipeline(round));

    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(
        out.contains("[fill] forge: cache `deps`: none kept yet"),
        "{out}"
    );
    assert!(out.contains("[fill] fill counts 1"), "{out}");
    assert!(out.contains("[fill] forge: cache `deps`: saved ("), "{out}");
    // A later job of the same run gets what the earlier one saved.
    assert!(
        out.contains("[read] forge: cache `deps`: restored ("),
        "{out}"
    );
    assert!(out.contains("[read] read counts 1"), "{out}");
    assert!(
        out.contains("[other] forge: cache `other-other`: restored from fallback key `deps`"),
        "{out}"
    );
    assert!(out.contains("[other] other counts 1"), "{out}");
    // `policy: pull` saves nothing.
    assert!(!out.contains("[read] forge: cache `deps`: saved"), "{out}");
    assert!(!out.contains("`other-other`: saved"), "{out}");

    // The next run (the script changed, so the jobs run): the count goes on from the cache,
    // not from what `read` wrote.
    fs::write(dir.join("forge.yaml"), with_image(2)).unwrap();
    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(
        out.contains("[fill] forge: cache `deps`: restored ("),
        "{out}"
    );
    assert!(out.contains("[fill] fill counts 2"), "{out}");
    assert!(out.contains("[read] read counts 2"), "{out}");

    // Unchanged: every job is served by its verdict though the cache changed since; nothing is
    // restored or saved.
    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    for job in ["fill", "read", "other"] {
        assert!(
            lines_with(&out, &format!("[{job}] "))
                .iter()
                .all(|l| !l.contains("forge: cache `") || l.contains("(cached)")),
            "{out}"
        );
    }
    assert!(!out.contains("saved ("), "{out}");

    // Pruned with the cache mounts: the next run starts without.
    let pruned = common::forge(&root, &["prune", "--cache-mounts"]);
    let said = printed(&pruned);
    assert!(pruned.status.success(), "{said}");
    assert!(said.contains("removed 1 job caches"), "{said}");
    fs::write(dir.join("forge.yaml"), with_image(3)).unwrap();
    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(
        out.contains("[fill] forge: cache `deps`: none kept yet"),
        "{out}"
    );
    assert!(out.contains("[fill] fill counts 1"), "{out}");
}

/// GitLab's `coverage:` reads the job's log as GitLab does (the last line with a match; its last
/// capture group's first number): the job's line, `--metadata-file` and the history show it,
/// and a job served by its recorded verdict has it again from the replayed log.
#[test]
fn coverage_is_read_from_the_log_and_shown_kept_and_replayed() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-coverage",
        r#"jobs:
  unit:
    image: app
    coverage: '/^TOTAL.+ (\d+(?:\.\d+)?%)$/'
    script:
      - echo "TOTAL 200 40 80%"
      - echo "TOTAL 210 20 90.48%"
      - echo "done"
  plain:
    image: app
    script: [echo TOTAL 1 1 1%]
"#,
    );
    let out = run_ok(
        &dir,
        &root,
        &["run", "--progress", "plain", "--metadata-file", "meta.json"],
        &[],
    );
    let unit = lines_with(&out, "job unit: passed");
    assert!(
        unit.len() == 1 && unit[0].ends_with(", coverage 90.48%"),
        "{out}"
    );
    assert!(
        lines_with(&out, "job plain: passed")
            .iter()
            .all(|l| !l.contains("coverage")),
        "{out}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let jobs = meta["jobs"].as_array().unwrap();
    let of = |name: &str| jobs.iter().find(|j| j["name"] == name).unwrap().clone();
    assert_eq!(of("unit")["coverage"], serde_json::json!(90.48), "{meta}");
    assert!(of("plain").get("coverage").is_none(), "{meta}");
    // Unchanged: the verdict is replayed, and its coverage read again from the replayed log.
    let again = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    let unit = lines_with(&again, "job unit: passed (cached, not run)");
    assert!(
        unit.len() == 1 && unit[0].ends_with(", coverage 90.48%"),
        "{again}"
    );
    // The history's record keeps it.
    let record = fs::read_dir(root.join("runs"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("2/run.json"))
        .find(|p| p.is_file())
        .expect("run 2's record");
    let record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(record).unwrap()).unwrap();
    let unit = record["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "unit")
        .unwrap()
        .clone();
    assert_eq!(unit["coverage"], "90.48", "{record}");
}

/// GitLab's `parallel: N`: N copies of a job, named `test 1/N`..., each told its share by
/// `CI_NODE_INDEX` and `CI_NODE_TOTAL`; `needs: [test]` waits for all of them.
#[test]
fn parallel_copies_each_run_their_share() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-parallel-copies",
        r#"stages: [test, report]
jobs:
  test:
    image: app
    parallel: 2
    script:
      - echo "shard $CI_NODE_INDEX of $CI_NODE_TOTAL"
  report:
    stage: report
    image: app
    needs: [test]
    script: [echo all shards done]
"#,
    );
    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    for i in 1..=2 {
        assert!(
            out.contains(&format!("[test {i}/2] shard {i} of 2")),
            "{out}"
        );
    }
    assert!(out.contains("[report] all shards done"), "{out}");
    assert!(out.contains("jobs 3 ran"), "{out}");
}

/// GitLab's `resource_group:`: two jobs of one group, free to run at once (one stage, two
/// slots), run one after the other, the second saying it waits; a job of another group is not
/// held up.
#[test]
fn jobs_of_one_resource_group_never_run_at_once() {
    let Some(m) = machine() else { return };
    let job = |group: &str| {
        format!(
            "    image: app\n    resource_group: {group}\n    script:\n      - echo \"start $(date +%s)\"\n      - sleep 2\n      - echo \"end $(date +%s)\"\n"
        )
    };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-resource-group",
        &format!(
            "jobs:\n  a:\n{}  b:\n{}  c:\n{}",
            job("prod-$FORGE_GIT_BRANCH"),
            job("prod-$FORGE_GIT_BRANCH"),
            job("staging")
        ),
    );
    let out = run_ok(
        &dir,
        &root,
        &["run", "--progress", "plain", "--jobs", "3"],
        &[],
    );
    let time = |job: &str, what: &str| -> u64 {
        let prefix = format!("[{job}] {what} ");
        let line = lines_with(&out, &prefix);
        assert_eq!(line.len(), 1, "{out}");
        line[0][prefix.len()..].trim().parse().unwrap()
    };
    let (a, b) = (
        (time("a", "start"), time("a", "end")),
        (time("b", "start"), time("b", "end")),
    );
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    assert!(second.0 >= first.1, "a {a:?} and b {b:?} overlap:\n{out}");
    assert_eq!(
        out.matches("forge: waiting for resource group `prod-`: another job holds it")
            .count(),
        1,
        "{out}"
    );
    // `c` ran beside them: it started before the second of the group did.
    assert!(time("c", "start") < second.0, "{out}");
}

/// GitLab's `workflow: rules:` that match nothing make no pipeline: `forge run` says why and
/// exits 0, building nothing and taking no run number (outside a repository the branch is
/// empty, so the `main` rule does not match).
#[test]
fn a_run_the_workflow_rules_leave_out_makes_no_pipeline() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-workflow",
        "workflow:\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\njobs:\n  t:\n    image: app\n    script: [echo ran]\n",
    );
    let out = run_ok(&dir, &root, &["run"], &[]);
    assert!(
        out.contains("forge.yaml: no pipeline for this run (workflow: no rule matches this run)"),
        "{out}"
    );
    assert!(!out.contains("ran"), "{out}");
    let history = common::forge(
        &root,
        &["history", "-f", &dir.join("forge.yaml").to_string_lossy()],
    );
    assert!(
        printed(&history).contains("no runs of"),
        "{}",
        printed(&history)
    );
}

/// GitLab's `reports: dotenv:`: the variables a job writes reach the jobs that receive its
/// artifacts, over their own, and no other job; a line that is no assignment is said and left
/// out.
#[test]
fn dotenv_variables_reach_the_jobs_that_receive_the_artifacts() {
    let Some(m) = machine() else { return };
    let (_ws, dir, root) = small_workspace(
        &m,
        "forge-pipeline-dotenv",
        r#"stages: [build, deploy]
jobs:
  build:
    stage: build
    image: app
    script:
      - echo "VERSION=1.2.3" > build.env
      - echo "URL=https://x.example/a=b" >> build.env
      - echo "not an assignment" >> build.env
    artifacts:
      reports:
        dotenv: build.env
  deploy:
    stage: deploy
    image: app
    needs: [build]
    variables:
      VERSION: old
    script: ['echo "deploying [$VERSION] to [$URL]"']
  apart:
    stage: deploy
    image: app
    dependencies: []
    script: ['echo "apart sees [${VERSION:-}]"']
"#,
    );
    let out = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(
        out.contains("[deploy] deploying [1.2.3] to [https://x.example/a=b]"),
        "{out}"
    );
    assert!(out.contains("[apart] apart sees []"), "{out}");
    assert!(
        out.contains(
            "[build] forge: warning: reports: dotenv: build.env: line 3 is not KEY=VALUE, left out"
        ),
        "{out}"
    );
    // Unchanged, every verdict is replayed, and deploy's still saw the values.
    let again = run_ok(&dir, &root, &["run", "--progress", "plain"], &[]);
    assert!(
        again.contains("[deploy] (cached) deploying [1.2.3] to [https://x.example/a=b]"),
        "{again}"
    );
}

/// GitLab's `allow_failure: {exit_codes: [...]}` was refused ("expected a boolean"): a job may
/// fail with those codes only. Exiting 3 it is an allowed failure and the run passes; exiting 4
/// it fails the run.
#[test]
fn allow_failure_exit_codes_allow_those_codes_only() {
    let Some(m) = machine() else { return };
    let pipeline = |code: u8| {
        format!(
            r#"jobs:
  flaky:
    image: app
    allow_failure: {{exit_codes: [3, 137]}}
    script: ["exit {code}"]
"#
        )
    };
    let (_ws, dir, root) = small_workspace(&m, "forge-pipeline-exit-codes", &pipeline(3));
    let out = run_ok(&dir, &root, &["run", "--no-cache"], &[]);
    assert!(out.contains("job flaky: failed (allowed)"), "{out}");
    std::fs::write(
        dir.join("forge.yaml"),
        format!("images:\n  app: {{context: app}}\n{}", pipeline(4)),
    )
    .unwrap();
    let o = forge_run(&dir, &root, &["run", "--no-cache"], &[]);
    let out = common::printed(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("failed: job flaky failed"), "{out}");
}
