//! GitLab's semantics that GitLab users' files rely on: how `rules:` and `only:` read a run (a
//! rule's `when:` defaulting to the job's, a branch's or a tag's pipeline, undefined variables),
//! how variables expand, `!reference` tags, `.pre`/`.post`, and the values GitLab accepts for a
//! timeout, a retry or an allowed failure.

use super::*;

/// A job that is `when: manual` with a rule that only says `if:` ran by itself: the rule's `when`
/// was taken to be `on_success` where GitLab takes the job's.
#[test]
fn a_rule_without_when_gives_the_jobs_own() {
    let src = r#"jobs:
  deploy:
    image: alpine
    when: manual
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
    script: [x]
  cleanup:
    image: alpine
    when: on_failure
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
    script: [x]
  plain:
    image: alpine
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
    script: [x]
  said:
    image: alpine
    when: manual
    rules:
      - if: $CI_COMMIT_BRANCH == "main"
        when: always
    script: [x]
"#;
    let p = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    assert_eq!(job(&p, "deploy").when, When::Manual);
    assert_eq!(job(&p, "cleanup").when, When::OnFailure);
    assert_eq!(job(&p, "plain").when, When::OnSuccess);
    assert_eq!(job(&p, "said").when, When::Always);
}

fn jobs_run(p: &Pipeline) -> Vec<&str> {
    p.jobs
        .iter()
        .filter(|j| j.when != When::Never)
        .map(|j| j.name.as_str())
        .collect()
}

/// `CI_COMMIT_TAG` and `CI_COMMIT_BRANCH` were always defined, empty when unknown, so
/// `$CI_COMMIT_TAG != null` held on every branch and a release job ran there; and on a tagged
/// branch head both were set while `only:` took the run for a tag's.
#[test]
fn a_run_is_a_branch_pipeline_or_a_tag_pipeline_and_the_other_name_is_undefined() {
    let src = r#"jobs:
  release:
    image: alpine
    rules:
      - if: $CI_COMMIT_TAG != null
    script: [x]
  untagged:
    image: alpine
    rules:
      - if: $CI_COMMIT_TAG == null
    script: [x]
  on-main:
    image: alpine
    only: [main]
    script: [x]
  on-tags:
    image: alpine
    only: [tags]
    script: [x]
  not-tags:
    image: alpine
    except: [tags]
    script: [x]
"#;
    let branch = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    assert_eq!(jobs_run(&branch), ["untagged", "on-main", "not-tags"]);
    assert!(!branch.variables.contains_key("CI_COMMIT_TAG"));
    assert!(!branch.variables.contains_key("FORGE_GIT_TAG"));
    assert_eq!(branch.variables["CI_COMMIT_BRANCH"], "main");
    assert_eq!(branch.variables["CI_COMMIT_REF_NAME"], "main");

    // The branch's head carries a tag: still the branch's pipeline (GitLab runs the tag's
    // pipeline apart, on the tag's push); forge's own FORGE_GIT_TAG says the tag.
    let both = with_builtins(
        &[("FORGE_GIT_BRANCH", "main"), ("FORGE_GIT_TAG", "v1.0")],
        None,
    );
    let both = ok(src, &both);
    assert_eq!(jobs_run(&both), ["untagged", "on-main", "not-tags"]);
    assert!(!both.variables.contains_key("CI_COMMIT_TAG"));
    assert_eq!(both.variables["FORGE_GIT_TAG"], "v1.0");

    let tag = ok(src, &with_builtins(&[("FORGE_GIT_TAG", "v1.0")], None));
    assert_eq!(jobs_run(&tag), ["release", "on-tags"]);
    assert_eq!(tag.variables["CI_COMMIT_TAG"], "v1.0");
    assert!(!tag.variables.contains_key("CI_COMMIT_BRANCH"));
    assert_eq!(tag.variables["CI_COMMIT_REF_NAME"], "v1.0");
}

/// An undefined built-in still expands to nothing where a value names it (an image's tag on a
/// branch), as in GitLab, instead of refusing the file.
#[test]
fn an_undefined_built_in_expands_to_nothing() {
    let src = r#"variables:
  VERSION: "1.0$CI_COMMIT_TAG"
jobs:
  t:
    image: alpine
    script: [x]
"#;
    let p = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    assert_eq!(p.variables["VERSION"], "1.0");
}

/// `if: $DEPLOY_ENV == null` with the rule's `variables: {DEPLOY_ENV: staging}` (GitLab's way to
/// give a default) never matched: the names the job's rules give were made empty before the
/// rules were read.
#[test]
fn a_variable_only_rules_give_is_null_while_they_decide() {
    let src = r#"jobs:
  deploy:
    image: alpine
    rules:
      - if: $DEPLOY_ENV == null
        variables:
          DEPLOY_ENV: staging
      - when: never
    script: [x]
  given:
    image: alpine
    variables:
      DEPLOY_ENV: prod
    rules:
      - if: $DEPLOY_ENV == null
        variables:
          DEPLOY_ENV: staging
      - when: on_success
    script: [x]
  other:
    image: alpine
    rules:
      - if: $NOPE
        variables:
          EXTRA: x
      - when: on_success
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    let d = job(&p, "deploy");
    assert_eq!(d.when, When::OnSuccess);
    assert_eq!(d.variables["DEPLOY_ENV"], "staging");
    let g = job(&p, "given");
    assert_eq!(g.rule, RuleOutcome::Matched { index: 1 });
    assert_eq!(g.variables["DEPLOY_ENV"], "prod");
    // A rule that did not decide gives nothing, not an empty value.
    assert!(!job(&p, "other").variables.contains_key("EXTRA"));
}

/// `changes: [$SVC_DIR/**/*]` and `exists: [$SVC_DIR/main.go]` never matched: the globs were
/// matched as written, `$` and all.
#[test]
fn changes_and_exists_globs_expand_variables() {
    let src = r#"variables:
  SVC_DIR: services/api
jobs:
  changed:
    image: alpine
    rules:
      - changes: [$SVC_DIR/**/*]
    script: [x]
  there:
    image: alpine
    rules:
      - exists: ["${SVC_DIR}/main.go"]
    script: [x]
"#;
    let files: Vec<String> = vec!["services/api/main.go".into(), "README.md".into()];
    let mut options = with_builtins(&[], Some(&["services/api/handler.go"]));
    options.files = Some(files.clone());
    let p = ok(src, &options);
    assert_eq!(jobs_run(&p), ["changed", "there"]);
    let mut options = with_builtins(&[], Some(&["docs/x.md"]));
    options.files = Some(vec!["README.md".into()]);
    let p = ok(src, &options);
    assert!(jobs_run(&p).is_empty(), "{:?}", jobs_run(&p));
}

/// `$CI_JOB_NAME` in a job's `variables:` or `artifacts: paths:` was an undefined variable,
/// though forge gives the job that name.
#[test]
fn the_jobs_name_and_stage_are_there_for_its_values() {
    let src = r#"stages: [build, test]
jobs:
  unit:
    stage: test
    image: alpine
    variables:
      REPORT: report-$CI_JOB_NAME-$CI_JOB_STAGE.xml
    artifacts:
      paths: [out/$CI_JOB_NAME/]
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    let unit = job(&p, "unit");
    assert_eq!(unit.variables["REPORT"], "report-unit-test.xml");
    assert_eq!(unit.artifacts.as_ref().unwrap().paths, ["out/unit/"]);
}

/// GitLab's own examples, `timeout: 3 hours 30 minutes` and `timeout: 3h 30m`, were refused.
#[test]
fn a_timeout_reads_gitlab_s_words_too() {
    for (written, secs) in [
        ("1h30m", 5400),
        ("3 hours 30 minutes", 12_600),
        ("3h 30m", 12_600),
        ("90 seconds", 90),
        ("1 hour", 3600),
        ("30m 10s", 1810),
    ] {
        let src =
            format!("jobs:\n  t:\n    image: alpine\n    timeout: {written}\n    script: [x]\n");
        let p = ok(&src, &CheckOptions::default());
        assert_eq!(
            job(&p, "t").timeout,
            Some(std::time::Duration::from_secs(secs)),
            "{written}"
        );
    }
    for bad in ["10", "soon", "3 fortnights"] {
        let src = format!("jobs:\n  t:\n    image: alpine\n    timeout: {bad}\n    script: [x]\n");
        let e = errors(&src);
        assert!(e.to_string().contains("invalid duration"), "{bad}: {e}");
    }
}

/// GitLab's `.pre` and `.post` stages, first and last whether `stages:` lists them or not, were
/// refused as undefined.
#[test]
fn pre_and_post_stages_come_first_and_last() {
    let src = r#"stages: [build, .post, test]
jobs:
  last:
    stage: .post
    image: alpine
    script: [x]
  unit:
    image: alpine
    script: [x]
  first:
    stage: .pre
    image: alpine
    script: [x]
  compile:
    stage: build
    image: alpine
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.stages, [".pre", "build", "test", ".post"]);
    let order: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(order, ["first", "compile", "unit", "last"]);
    let none = ok(
        "jobs:\n  unit:\n    image: alpine\n    script: [x]\n",
        &CheckOptions::default(),
    );
    assert_eq!(none.stages, ["build", "test", "deploy"]);
}

/// `!reference [.setup, script]` was read as the list of its keys: the job ran the commands
/// `.setup` and `script`. It is GitLab's: the value the keys name, here in a script (flattened),
/// in `rules:` (flattened too) and as `variables:`, from this file or an included one.
#[test]
fn reference_tags_take_the_value_they_name() {
    let main = r#"include: [ci/templates.yml]
.setup:
  script:
    - echo setting up
    - make deps
jobs:
  unit:
    image: alpine
    variables: !reference [.vars, variables]
    rules:
      - !reference [.rules, rules]
      - when: never
    script:
      - !reference [.setup, script]
      - make test
"#;
    let templates = r#".vars:
  variables:
    LEVEL: "3"
.rules:
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      when: manual
"#;
    let p = super::gitlab_more::with_files(main, &[("ci/templates.yml", templates)])
        .unwrap_or_else(|e| panic!("{e}"));
    let unit = job(&p, "unit");
    assert_eq!(unit.script, ["echo setting up", "make deps", "make test"]);
    assert_eq!(unit.variables["LEVEL"], "3");
    // Not on main: the referenced rule does not match, the written one says never.
    assert_eq!(unit.when, When::Never);
    assert_eq!(unit.rule, RuleOutcome::Matched { index: 1 });

    // Within one file, and an error where a key is missing, at the tag's line.
    let one = ".setup:\n  script: [a]\njobs:\n  t:\n    image: alpine\n    script:\n      - !reference [.setup, script]\n      - !reference [.setup, nope]\n";
    let e = errors(one);
    assert_eq!(places(&e), [(8, 20)], "{e}");
    assert!(e.to_string().contains("`.setup` has no key `nope`"), "{e}");
    let fixed = one.replace("      - !reference [.setup, nope]\n", "");
    assert_eq!(
        job(&ok(&fixed, &CheckOptions::default()), "t").script,
        ["a"]
    );
}

/// A rule's unknown key is still refused at its place inside the list that is now read item
/// by item.
#[test]
fn a_rules_unknown_key_is_refused_at_its_line() {
    let e = errors(
        "jobs:\n  t:\n    image: alpine\n    rules:\n      - if: $A\n        wen: never\n    script: [x]\n",
    );
    assert!(e.to_string().contains("wen"), "{e}");
    assert_eq!(places(&e)[0].0, 6, "{e}");
}

/// Variables were expanded once, in the order written, before a workflow rule or a job's rule
/// gave theirs: `URL: https://$DEPLOY_ENV.example.com` kept `dev` though a rule made it `prod`.
/// They expand once all are known, as GitLab's runner expands a job's; a name defined nowhere
/// reads as nothing, with a warning (the file was refused), and a circle is an error.
#[test]
fn variables_read_the_definitions_that_win_in_the_end() {
    let src = r#"variables:
  DEPLOY_ENV: dev
  URL: https://$DEPLOY_ENV.example.com
  TARGET: $DEPLOY_ENV-cluster
  BIN_DIR: $CI_PROJECT_DIR/bin
workflow:
  rules:
    - variables:
        DEPLOY_ENV: prod
jobs:
  plain:
    image: alpine
    variables:
      PATH: /opt/bin:$PATH
    script: [x]
  canary:
    image: alpine
    rules:
      - variables:
          DEPLOY_ENV: canary
    script: [x]
"#;
    let mut options = CheckOptions::default();
    options.builtins.insert("PATH".into(), "/usr/bin".into());
    let p = ok(src, &options);
    assert_eq!(p.variables["URL"], "https://prod.example.com");
    let canary = job(&p, "canary");
    assert_eq!(canary.variables["DEPLOY_ENV"], "canary");
    // The file's values read the job's rule's, in that job.
    assert_eq!(canary.variables["URL"], "https://canary.example.com");
    assert_eq!(canary.variables["TARGET"], "canary-cluster");
    let plain = job(&p, "plain");
    // A value naming its own name reads the definition below it.
    assert_eq!(plain.variables["PATH"], "/opt/bin:/usr/bin");
    assert_eq!(p.variables["BIN_DIR"], "/bin");
    let said: Vec<&String> = p.warnings.iter().map(|(_, w)| w).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("`$CI_PROJECT_DIR` is defined nowhere"),
        "{said:?}"
    );

    let e =
        errors("variables:\n  A: x$B\n  B: y$A\njobs:\n  t:\n    image: alpine\n    script: [x]\n");
    assert!(e.to_string().contains("refers to itself"), "{e}");
}

/// A value reading one of the job's secrets (`URL: https://ci:$TOKEN@host`) expands without it
/// (the values are hashed into the job's key, where no secret goes); the warning said `$TOKEN`
/// was defined nowhere, "as in GitLab", though the job had it. It says what it is and what to do.
#[test]
fn a_value_reading_a_secret_is_warned_of_as_a_secret() {
    let p = ok(
        "jobs:\n  t:\n    image: alpine\n    secrets: [TOKEN]\n    variables:\n      URL: https://ci:$TOKEN@git.example.com\n    script: [x]\n",
        &CheckOptions::default(),
    );
    assert_eq!(job(&p, "t").variables["URL"], "https://ci:@git.example.com");
    let said: Vec<&String> = p.warnings.iter().map(|(_, w)| w).collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("`$TOKEN` is a secret of the job"),
        "{said:?}"
    );
    assert!(
        said[0].contains("read `$TOKEN` in the script instead"),
        "{said:?}"
    );
}

/// `if: $CI_PIPELINE_SOURCE == "push"` (GitLab's variables forge does not set) skipped its job
/// without a word; it is said, once per place.
#[test]
fn a_gitlab_variable_forge_does_not_set_is_said_where_a_rule_reads_it() {
    let src = r#"jobs:
  t:
    image: alpine
    rules:
      - if: $CI_PIPELINE_SOURCE == "push" || $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
    script: [x]
  u:
    image: alpine
    rules:
      - if: $CI_COMMIT_TAG == null && $MINE == null
    script: [x]
"#;
    let p = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    let said: Vec<&String> = p.warnings.iter().map(|(_, w)| w).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("`$CI_PIPELINE_SOURCE` is GitLab's"),
        "{said:?}"
    );
    assert!(
        said[1].contains("`$CI_DEFAULT_BRANCH` is GitLab's"),
        "{said:?}"
    );
    // CI_COMMIT_TAG is forge's, undefined on a branch: no word; nor for the file's own names.
    assert_eq!(p.warnings[0].0.line, 5);
}

/// GitLab's other `retry: when:` kinds (`stuck_or_timeout_failure`, `unknown_failure`,
/// `api_failure`, ...) were refused; they are read (a timeout is `stuck_or_timeout_failure` too).
#[test]
fn retry_reads_every_kind_gitlab_names() {
    let src = "jobs:\n  t:\n    image: alpine\n    retry:\n      max: 2\n      when: [stuck_or_timeout_failure, unknown_failure, api_failure, runner_unsupported, stale_schedule, archived_failure, scheduler_failure, data_integrity_failure, script_failure]\n    script: [x]\n";
    let p = ok(src, &CheckOptions::default());
    let retry = job(&p, "t").retry.clone().unwrap();
    assert_eq!(retry.max, 2);
    assert_eq!(retry.when.len(), 9);
    assert!(
        errors(&src.replace("api_failure", "coffee_failure"))
            .to_string()
            .contains("coffee_failure")
    );
}

/// A need on a job of a later stage ran (or, both ways, was refused as a cycle); GitLab refuses
/// it at the need.
#[test]
fn a_need_on_a_later_stage_is_refused_at_the_need() {
    let src = "stages: [test, deploy]\njobs:\n  a:\n    image: alpine\n    needs: [b]\n    script: [x]\n  b:\n    stage: deploy\n    image: alpine\n    script: [x]\n";
    let e = errors(src);
    assert_eq!(places(&e), [(5, 13)], "{e}");
    assert!(
        e.to_string()
            .contains("`b` in needs is of stage `deploy`, later than `a`'s `test`"),
        "{e}"
    );
    // Its own stage is fine, as in GitLab.
    ok(
        &src.replace("    stage: deploy\n", ""),
        &CheckOptions::default(),
    );
}
