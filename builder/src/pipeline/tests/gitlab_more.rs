//! GitLab's keys a job and a file carry beyond the first ones (tests/gitlab.rs): caches, the keys
//! read and ignored, `parallel: N`, resource groups, rules' variables and `exists:`, reports,
//! `workflow:` and `include:`.

use super::*;

#[test]
fn gitlab_s_cache_forms_check_into_cache_plans() {
    use crate::pipeline::file::{ArtifactsWhen, CachePolicy};
    use crate::pipeline::{CacheKey, CachePlan};
    let src = r#"default:
  image: alpine
  cache:
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [.cache/]
    fallback_keys: [deps-main]
jobs:
  inherits:
    script: [x]
  own:
    script: [x]
    variables:
      DIR: vendor
    cache:
      - key: {files: [Gemfile.lock, package-lock.json], prefix: $CI_JOB_NAME}
        paths: [$DIR/]
        policy: pull
      - paths: [node_modules]
        when: always
        unprotect: true
        untracked: false
  verdicts:
    script: [x]
    cache: false
  none:
    script: [x]
    cache: []
"#;
    let p = ok(
        src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "Feature/Login_Page")], None),
    );
    let inherited = CachePlan {
        key: CacheKey::Name("deps-feature-login-page".into()),
        fallback_keys: vec!["deps-main".into()],
        paths: vec![".cache/".into()],
        policy: CachePolicy::PullPush,
        when: ArtifactsWhen::OnSuccess,
    };
    assert_eq!(job(&p, "inherits").caches, [inherited]);
    assert!(job(&p, "inherits").cache);
    let own = job(&p, "own");
    assert_eq!(
        own.caches,
        [
            CachePlan {
                key: CacheKey::Files {
                    files: vec!["Gemfile.lock".into(), "package-lock.json".into()],
                    prefix: Some("own".into()),
                },
                fallback_keys: vec![],
                paths: vec!["vendor/".into()],
                policy: CachePolicy::Pull,
                when: ArtifactsWhen::OnSuccess,
            },
            CachePlan {
                key: CacheKey::Name("default".into()),
                fallback_keys: vec![],
                paths: vec!["node_modules".into()],
                policy: CachePolicy::PullPush,
                when: ArtifactsWhen::Always,
            },
        ]
    );
    // forge's `cache: false` replaces default's caches too, and turns verdicts off.
    let v = job(&p, "verdicts");
    assert!(!v.cache && v.caches.is_empty());
    let n = job(&p, "none");
    assert!(n.cache && n.caches.is_empty());
}

#[test]
fn a_cache_gitlab_would_refuse_is_refused_at_its_place() {
    let e = errors(
        r#"jobs:
  a:
    image: alpine
    script: [x]
    cache:
      key: a/b
      paths: [x]
  b:
    image: alpine
    script: [x]
    cache:
      key: {files: [a, b, c]}
      paths: [x]
      fallback_keys: [a, b, c, d, e, f]
  c:
    image: alpine
    script: [x]
    cache:
      key: k
      untracked: true
  d:
    image: alpine
    script: [x]
    cache:
      key: {files: [/etc/passwd]}
      paths: [x]
      fallback_keys: [".."]
  e:
    image: alpine
    script: [x]
    cache: [{paths: [a]}, {paths: [b]}, {paths: [c]}, {paths: [d]}, {paths: [e]}]
"#,
    );
    let text = e.to_string();
    for said in [
        "cache key `a/b` contains `/`",
        "`key: files:` lists 3 files",
        "6 fallback keys",
        "`untracked: true` is not supported",
        "a cache without `paths:` keeps nothing",
        "cache key file `/etc/passwd`",
        "fallback key `..` is `.` or `..`",
        "5 caches in one job",
    ] {
        assert!(text.contains(said), "{said}: {text}");
    }
    assert_eq!(
        places(&e),
        [
            (6, 12),
            (12, 20),
            (14, 38),
            (19, 12),
            (20, 18),
            (25, 21),
            (27, 23),
            (31, 12)
        ]
    );
    // An unknown policy, with the hint of the one meant.
    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    script: [x]\n    cache:\n      paths: [x]\n      policy: pul\n",
    );
    assert!(e.to_string().contains("did you mean `pull`?"), "{e}");
    // A key with an undefined variable is refused once, at the variable.
    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    script: [x]\n    cache:\n      key: \"k-$NOPE\"\n      paths: [x]\n",
    );
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(e.to_string().contains("NOPE"), "{e}");
}

#[test]
fn tags_interruptible_and_environment_are_read_and_said_to_be_ignored_once_each() {
    let src = r#"default:
  interruptible: true
.t:
  tags: [docker]
jobs:
  a:
    extends: .t
    image: alpine
    script: [x]
    environment:
      name: production
      url: https://example.com
  b:
    extends: .t
    image: alpine
    script: [x]
    parallel:
      matrix:
        - X: [1, 2]
"#;
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.jobs.len(), 3);
    assert_eq!(
        p.warning_lines("forge.yaml"),
        [
            "warning: forge.yaml:2:18: `interruptible:` is ignored: forge's runs do not cancel one another",
            "warning: forge.yaml:4:9: `tags:` is ignored: forge runs every job on this machine",
            "warning: forge.yaml:11:7: `environment:` is ignored: forge tracks no deployments (the job's script runs as written)",
        ]
    );
    assert!(
        ok(
            "jobs:\n  a:\n    image: alpine\n    script: [x]\n",
            &CheckOptions::default()
        )
        .warnings
        .is_empty()
    );
}

/// GitLab numbers a matrix's cells as it numbers `parallel: N` copies (test splitters read
/// `CI_NODE_INDEX`/`CI_NODE_TOTAL`), and a job without `parallel:` reads `CI_NODE_TOTAL` as 1
/// (`jobs.rs` gives it at run time; its values see it too).
#[test]
fn matrix_cells_are_numbered_nodes_and_a_plain_job_is_one() {
    let p = ok(
        "jobs:\n  test:\n    image: alpine\n    parallel:\n      matrix:\n        - {OS: [a, b], V: [1]}\n        - {OS: [c]}\n    script: [x]\n  plain:\n    image: alpine\n    variables: {SHARE: \"of $CI_NODE_TOTAL\"}\n    script: [x]\n",
        &CheckOptions::default(),
    );
    let cells: Vec<(&str, &str, &str)> = p
        .jobs
        .iter()
        .filter(|j| j.base == "test")
        .map(|j| {
            (
                j.name.as_str(),
                &j.variables["CI_NODE_INDEX"][..],
                &j.variables["CI_NODE_TOTAL"][..],
            )
        })
        .collect();
    assert_eq!(
        cells,
        [
            ("test: [a, 1]", "1", "3"),
            ("test: [b, 1]", "2", "3"),
            ("test: [c]", "3", "3")
        ]
    );
    assert_eq!(&job(&p, "plain").variables["SHARE"][..], "of 1");
}

#[test]
fn parallel_copies_share_out_a_job_as_gitlab_names_them() {
    let p = ok(
        "jobs:\n  test:\n    image: alpine\n    parallel: 3\n    script: [x]\n  after:\n    image: alpine\n    stage: deploy\n    needs: [test]\n    script: [x]\n",
        &CheckOptions::default(),
    );
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["test 1/3", "test 2/3", "test 3/3", "after"]);
    let t2 = job(&p, "test 2/3");
    assert_eq!(t2.base, "test");
    assert_eq!(
        (
            &t2.variables["CI_NODE_INDEX"][..],
            &t2.variables["CI_NODE_TOTAL"][..]
        ),
        ("2", "3")
    );
    // `needs: [test]` waits for every copy.
    assert_eq!(
        job(&p, "after").needs.as_ref().unwrap().len(),
        3,
        "{:?}",
        job(&p, "after").needs
    );
    for (bad, said) in [
        ("0", "parallel: 0 copies"),
        ("201", "parallel: 201 copies"),
        ("-2", "no number of copies"),
    ] {
        let e = errors(&format!(
            "jobs:\n  t:\n    image: alpine\n    parallel: {bad}\n    script: [x]\n"
        ));
        assert!(e.to_string().contains(said), "{bad}: {e}");
        assert_eq!(places(&e)[0].0, 4, "{e}");
    }
}

#[test]
fn a_resource_group_is_expanded_and_may_not_be_empty() {
    let p = ok(
        "jobs:\n  deploy:\n    image: alpine\n    resource_group: prod-$CI_COMMIT_REF_SLUG\n    script: [x]\n",
        &with_builtins(&[("FORGE_GIT_BRANCH", "Main")], None),
    );
    assert_eq!(
        job(&p, "deploy").resource_group.as_deref(),
        Some("prod-main")
    );
    let e =
        errors("jobs:\n  deploy:\n    image: alpine\n    resource_group: ''\n    script: [x]\n");
    assert!(e.to_string().contains("`resource_group:` is empty"), "{e}");
    assert_eq!(places(&e), [(4, 21)]);
}

#[test]
fn the_deciding_rule_gives_its_variables_and_allow_failure() {
    let src = r#"variables:
  TARGET: none
jobs:
  deploy:
    image: alpine
    variables:
      TARGET: job
      URL: https://$TARGET.example.com
    allow_failure: true
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
        variables:
          TARGET: prod
          WHERE: $TARGET-eu
        allow_failure: false
      - when: on_success
    script: [x]
"#;
    let main = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    let d = job(&main, "deploy");
    assert_eq!(d.variables["TARGET"], "prod");
    assert_eq!(d.variables["WHERE"], "prod-eu");
    // The job's own variables read the rule's, which win (they read the job's before).
    assert_eq!(d.variables["URL"], "https://prod.example.com");
    assert!(!d.allow_failure);
    let other = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], None));
    let d = job(&other, "deploy");
    assert_eq!(d.variables["TARGET"], "job");
    assert!(!d.variables.contains_key("WHERE"));
    assert!(
        d.allow_failure,
        "the second rule says nothing: the job's own stands"
    );
}

#[test]
fn exists_rules_look_for_the_repositorys_files() {
    let src = r#"jobs:
  go:
    image: alpine
    rules:
      - exists: ["**/go.mod"]
    script: [x]
  node:
    image: alpine
    rules:
      - exists: [package.json, "/web/package.json"]
    script: [x]
"#;
    let mut opts = CheckOptions {
        files: Some(vec!["Dockerfile".into(), "svc/api/go.mod".into()]),
        ..CheckOptions::default()
    };
    let p = ok(src, &opts);
    assert_eq!(job(&p, "go").rule, RuleOutcome::Matched { index: 0 });
    assert_eq!(job(&p, "node").rule, RuleOutcome::NoneMatched);
    opts.files = Some(vec!["web/package.json".into()]);
    let p = ok(src, &opts);
    assert_eq!(job(&p, "go").rule, RuleOutcome::NoneMatched);
    assert_eq!(job(&p, "node").rule, RuleOutcome::Matched { index: 0 });
    // Unknown (`--check`, no repository): it matches, as `changes:` does.
    let p = ok(src, &CheckOptions::default());
    assert_eq!(job(&p, "node").rule, RuleOutcome::Matched { index: 0 });
    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    rules:\n      - exists: ['a/[b']\n    script: [x]\n",
    );
    assert!(e.to_string().contains("invalid glob"), "{e}");
    assert_eq!(places(&e), [(5, 18)]);
}

#[test]
fn gitlab_s_other_reports_are_kept_as_artifacts_and_dotenv_read() {
    let src = r#"jobs:
  t:
    image: alpine
    script: [x]
    artifacts:
      name: "$CI_JOB_NAME"
      paths: [out/]
      reports:
        junit: junit.xml
        coverage_report:
          coverage_format: cobertura
          path: coverage/cobertura.xml
        sast: [gl-sast-report.json]
"#;
    let p = ok(src, &CheckOptions::default());
    let a = job(&p, "t").artifacts.clone().unwrap();
    assert_eq!(
        a.paths,
        ["out/", "coverage/cobertura.xml", "gl-sast-report.json"]
    );
    assert_eq!(a.junit, ["junit.xml"]);
    let said: Vec<String> = p.warnings.iter().map(|(_, w)| w.clone()).collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with("`artifacts: name:` is ignored"),
        "{said:?}"
    );
    assert!(
        said[1].starts_with("`reports: coverage_report:` is kept"),
        "{said:?}"
    );
    // dotenv files travel with the artifacts, and are read.
    let p = ok(
        "jobs:\n  t:\n    image: alpine\n    script: [x]\n    artifacts:\n      reports:\n        dotenv: build.env\n",
        &CheckOptions::default(),
    );
    let a = job(&p, "t").artifacts.clone().unwrap();
    assert_eq!(a.paths, ["build.env"]);
    assert_eq!(a.dotenv, ["build.env"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn workflow_rules_decide_whether_a_run_makes_a_pipeline() {
    let src = r#"workflow:
  rules:
    - if: $CI_COMMIT_BRANCH =~ /^wip-/
      when: never
    - if: $CI_COMMIT_BRANCH == "main"
      variables:
        DEPLOY_TO: production
    - if: $CI_COMMIT_TAG
images:
  app: {context: .}
jobs:
  a:
    image: app
    variables:
      WHERE: to-$DEPLOY_TO
    script: ['echo $DEPLOY_TO']
"#;
    let on = |branch: &str| ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", branch)], None));
    let main = on("main");
    assert_eq!(main.skipped, None);
    assert_eq!(main.variables["DEPLOY_TO"], "production");
    assert_eq!(main.jobs.len(), 1);
    assert_eq!(main.images.len(), 1);
    let wip = on("wip-x");
    assert_eq!(
        wip.skipped.as_deref(),
        Some("workflow: rule 1 says `when: never`")
    );
    assert!(wip.jobs.is_empty() && wip.images.is_empty());
    let other = on("feature");
    assert_eq!(
        other.skipped.as_deref(),
        Some("workflow: no rule matches this run")
    );
    let tag = ok(src, &with_builtins(&[("FORGE_GIT_TAG", "v1")], None));
    assert_eq!(tag.skipped, None);
    // Where no rule gives it, a rule's variable is empty, not undefined.
    assert_eq!(job(&tag, "a").variables["WHERE"], "to-");
    // A file that does not check is refused even when it would make no pipeline.
    let bad = src.replace("    image: app\n", "    image: app\n    needs: [nope]\n");
    let e = load(
        "forge.yaml",
        &bad,
        &with_builtins(&[("FORGE_GIT_BRANCH", "wip-x")], None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

/// `include:` read from a map standing in for the repository.
pub(super) fn with_files(main: &str, files: &[(&str, &str)]) -> Result<Pipeline, PipelineErrors> {
    let files: std::collections::BTreeMap<String, String> = files
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let read = |path: &str| {
        files
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{path}: no such file"))
    };
    crate::pipeline::include::load("forge.yaml", main, &CheckOptions::default(), &read)
}

#[test]
fn included_files_merge_under_the_pipeline_file_and_lend_it_templates() {
    let main = r#"include:
  - local: /ci/templates.yml
  - ci/jobs.yml
variables:
  WHO: main
jobs:
  unit:
    extends: .tests
    variables:
      SAID: $WHO-$FROM
    script: [echo unit]
  lint:
    variables:
      LEVEL: strict
"#;
    let templates = "variables:\n  FROM: templates\n  WHO: templates\n.tests:\n  image: alpine\n  stage: test\n";
    let jobs = "include: ci/templates.yml\nstages: [test, deploy]\njobs:\n  lint:\n    image: alpine\n    script: [echo lint]\n    variables:\n      LEVEL: loose\n      OTHER: x\n";
    let p = with_files(
        main,
        &[("ci/templates.yml", templates), ("ci/jobs.yml", jobs)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        p.stages,
        ["test", "deploy"],
        "an included file's stages, the main file has none"
    );
    assert_eq!(p.variables["WHO"], "main");
    assert_eq!(p.variables["FROM"], "templates");
    assert_eq!(job(&p, "unit").variables["SAID"], "main-templates");
    assert!(
        matches!(&job(&p, "unit").image, ImageUse::Registry(r) if r.to_string().contains("alpine"))
    );
    let lint = job(&p, "lint");
    assert_eq!(
        lint.variables["LEVEL"], "strict",
        "the main file's job over the included one"
    );
    assert_eq!(lint.variables["OTHER"], "x");
    assert_eq!(lint.script, ["echo lint"]);

    // An error in an included file is shown in that file, at its line there.
    let bad = "jobs:\n  bad:\n    image: alpine\n    needs: [nope]\n    script: [x]\n";
    let e = with_files(
        "include: ci/bad.yml\njobs:\n  a:\n    image: alpine\n    script: [x]\n",
        &[("ci/bad.yml", bad)],
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("error: ci/bad.yml:4:13: `nope` in needs"),
        "{text}"
    );
    assert!(text.contains(" 4 |     needs: [nope]"), "{text}");
    let e = with_files(
        "include: ci/bad.yml\njobs: {}\n",
        &[("ci/bad.yml", "jobs:\n  x:\n    scrpt: [x]\n")],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("error: ci/bad.yml:3:5: unknown key `scrpt`"),
        "{e}"
    );

    // What forge cannot include is refused where it is written; a file that includes itself
    // back is read once.
    let e = with_files(
        "include:\n  - remote: https://example.com/ci.yml\n  - missing.yml\n  - 'ci/*.yml'\njobs: {}\n",
        &[],
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("forge.yaml:2:5: `include: remote:` is not supported"),
        "{text}"
    );
    assert!(
        text.contains("forge.yaml:3:5: missing.yml: no such file"),
        "{text}"
    );
    assert!(
        text.contains("forge.yaml:4:5: include `ci/*.yml`"),
        "{text}"
    );
    let p = with_files(
        "include: a.yml\njobs:\n  m:\n    image: alpine\n    script: [x]\n",
        &[
            ("a.yml", "include: b.yml\n"),
            (
                "b.yml",
                "include: a.yml\njobs:\n  b:\n    image: alpine\n    script: [x]\n",
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.jobs.len(), 2);

    // Loaded without the repository's files, `include:` is refused, not dropped unseen.
    let e = errors("include: a.yml\njobs: {}\n");
    assert!(
        e.to_string()
            .contains("`include:` needs the files of the repository"),
        "{e}"
    );
}

/// GitLab reads `script:` (and `before_script:`, `after_script:`) as one command or a list whose
/// items may be lists, flattened: what `- *setup` makes of an anchored list. Anything else, and
/// lists deeper than GitLab's ten levels, is refused at its place.
#[test]
fn scripts_are_a_command_or_nested_lists_of_them() {
    let src = r#".setup: &setup [echo one, [echo two]]
default:
  before_script: echo before
jobs:
  plain:
    image: alpine
    script: echo hello
  nested:
    image: alpine
    before_script:
      - *setup
      - echo three
    script: [[echo nested, [echo deeper]], echo flat]
    after_script: echo after
"#;
    let p = ok(src, &CheckOptions::default());
    assert_eq!(job(&p, "plain").script, ["echo before", "echo hello"]);
    let nested = job(&p, "nested");
    assert_eq!(
        nested.script,
        [
            "echo one",
            "echo two",
            "echo three",
            "echo nested",
            "echo deeper",
            "echo flat"
        ]
    );
    assert_eq!(nested.after_script, ["echo after"]);
    let e = errors("jobs:\n  j:\n    image: alpine\n    script: [{a: b}]\n");
    assert_eq!(places(&e)[0].0, 4, "{e}");
    let deep = format!("{}x{}", "[".repeat(11), "]".repeat(11));
    let e = errors(&format!(
        "jobs:\n  j:\n    image: alpine\n    script: {deep}\n"
    ));
    assert!(e.to_string().contains("deeper than 10 lists"), "{e}");
}

/// A job name with a control character is refused where it is written: its lines start with the
/// name, and a newline or an escape in it could print a line that looks like forge's own.
#[test]
fn a_job_name_with_a_control_character_is_refused() {
    let e = errors("jobs:\n  \"fake: passed\\njob evil\":\n    image: alpine\n    script: [x]\n");
    assert_eq!(places(&e)[0], (2, 3), "{e}");
    assert!(e.to_string().contains("holds a control character"), "{e}");
    // A matrix value makes part of the name too.
    let e = errors(
        "jobs:\n  t:\n    image: alpine\n    script: [x]\n    parallel:\n      matrix:\n        - V: [\"a\\e[31m\"]\n",
    );
    assert!(e.to_string().contains("holds a control character"), "{e}");
}
