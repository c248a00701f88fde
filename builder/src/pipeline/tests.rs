//! The pipeline frontend end to end: the full example in testdata/pipelines checks into the plan
//! it should, rules decide with the changed paths and branch given, and every bad file fails at a
//! place inside it (the CLI snapshots in cli/tests/pipeline_file.rs show the renderings).

use std::path::PathBuf;

use super::*;
use crate::pipeline::file::When;

mod gitlab;
mod gitlab_more;
mod gitlab_rules;

fn testdata(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/pipelines")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ok(src: &str, options: &CheckOptions) -> Pipeline {
    load("forge.yaml", src, options).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(src: &str) -> PipelineErrors {
    load("forge.yaml", src, &CheckOptions::default()).expect_err("should fail")
}

/// Where each error of `e` is, as (line, column).
fn places(e: &PipelineErrors) -> Vec<(usize, usize)> {
    e.errors
        .iter()
        .map(|x| (x.pos.line, x.pos.column))
        .collect()
}

fn job<'a>(p: &'a Pipeline, name: &str) -> &'a JobPlan {
    p.jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name}"))
}

fn with_builtins(pairs: &[(&str, &str)], changed: Option<&[&str]>) -> CheckOptions {
    CheckOptions {
        builtins: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        changed: changed.map(|c| c.iter().map(|s| s.to_string()).collect()),
        files: None,
    }
}

#[test]
fn the_full_example_checks_into_its_plan() {
    let opts = with_builtins(&[("FORGE_BUILD_NUMBER", "7")], None);
    let p = ok(&testdata("forge.yaml"), &opts);
    assert_eq!(p.stages, ["build", "test", "deploy"]);
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lint",
            "unit",
            "test-matrix: [dev, default]",
            "test-matrix: [dev, all]",
            "test-matrix: [release, default]",
            "test-matrix: [release, all]",
            "integration",
            "deploy",
        ]
    );
    let app = &p.images[0];
    assert_eq!(app.tags, ["127.0.0.1:5000/forge/app:v1.7"]);
    assert_eq!(app.build_args["RUST_VERSION"], "1.95");
    assert_eq!(app.push_needs.len(), 7);
    assert_eq!(
        job(&p, "lint").image,
        ImageUse::Stage {
            image: "app".into(),
            stage: "builder".into()
        }
    );
    assert_eq!(
        job(&p, "deploy").needs,
        Some(vec![Need::Image("app".into())])
    );
    let m = job(&p, "test-matrix: [release, all]");
    assert_eq!(m.variables["PROFILE"], "release");
    assert_eq!(m.variables["FEATURES"], "all");
    let db = &job(&p, "integration").services[0];
    assert_eq!(db.name, "db");
    let ready = db.ready.as_ref().expect("ready");
    assert_eq!(ready.timeout.as_secs(), 60);
    assert_eq!(
        job(&p, "integration").timeout.map(|t| t.as_secs()),
        Some(5400)
    );
    let unit = job(&p, "unit");
    assert_eq!(
        unit.artifacts.as_ref().map(|a| a.junit.clone()),
        Some(vec!["target/junit.xml".into()])
    );
    assert_eq!(unit.retry.as_ref().map(|r| r.max), Some(2));
}

#[test]
fn rules_decide_with_branch_and_changed_paths() {
    let src = testdata("forge.yaml");
    let name = "test-matrix: [dev, default]";
    // On main the first rule matches.
    let p = ok(
        &src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "main")], Some(&[])),
    );
    assert_eq!(job(&p, name).rule, RuleOutcome::Matched { index: 0 });
    // Elsewhere, a changed source file matches the second.
    let p = ok(
        &src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], Some(&["src/a/b.rs"])),
    );
    assert_eq!(job(&p, name).rule, RuleOutcome::Matched { index: 1 });
    // Nothing relevant changed: the last rule says never.
    let p = ok(
        &src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], Some(&["README.md"])),
    );
    assert_eq!(job(&p, name).rule, RuleOutcome::Matched { index: 2 });
    assert_eq!(job(&p, name).when, When::Never);
    let p = ok(
        &src,
        &with_builtins(&[("FORGE_GIT_TAG", "v1.2")], Some(&[])),
    );
    assert_eq!(job(&p, name).rule, RuleOutcome::Matched { index: 0 });
}

/// Regression (monorepo sweep 09): GitLab's map form of `changes:` (`{paths: [...]}`) was refused
/// with a bare "wrong type", and `compare_to:` with nothing said of what forge does instead.
#[test]
fn changes_and_exists_take_gitlabs_map_form_with_paths() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    rules:\n      - changes:\n          paths: [\"svc-a/**/*\"]\n        exists: {paths: [Dockerfile]}\n";
    let p = ok(src, &with_builtins(&[], Some(&["svc-a/x.txt"])));
    assert_eq!(p.jobs[0].rule, RuleOutcome::Matched { index: 0 });
    let p = ok(src, &with_builtins(&[], Some(&["svc-b/x.txt"])));
    assert_eq!(p.jobs[0].rule, RuleOutcome::NoneMatched);

    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    rules:\n      - changes:\n          paths: [\"svc-a/**/*\"]\n          compare_to: refs/heads/main\n";
    let e = errors(src);
    let text = e.to_string();
    assert!(text.contains("--changed-since"), "{text}");
    assert!(text.contains("forge.yaml:"), "{text}");
    assert_eq!(places(&e).len(), 1, "{text}");
    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    script: [x]\n    rules:\n      - changes: {pathz: [a]}\n",
    );
    assert!(e.to_string().contains("pathz"), "{e}");
}

/// Regression (monorepo sweep 10): GitLab's `needs: [{job: test, parallel: {matrix: ...}}]` was
/// refused as an unknown key, without the cell-name form forge takes.
#[test]
fn a_need_of_matrix_cells_by_values_names_the_form_forge_takes() {
    let src = "jobs:\n  test:\n    image: alpine\n    script: [x]\n    parallel:\n      matrix:\n        - SVC: [a, b]\n  deploy:\n    image: alpine\n    script: [x]\n    needs:\n      - job: test\n        parallel:\n          matrix:\n            - SVC: a\n";
    let e = errors(src);
    assert!(e.to_string().contains("\"test: [VALUE, ...]\""), "{e}");
    assert_eq!(places(&e).len(), 1, "{e}");
    // The form it names is taken.
    let src = src.replace(
        "      - job: test\n        parallel:\n          matrix:\n            - SVC: a\n",
        "      - \"test: [a]\"\n",
    );
    let p = ok(&src, &CheckOptions::default());
    assert!(job(&p, "deploy").needs.is_some());
}

#[test]
fn a_job_that_no_rule_matches_does_not_run() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    rules:\n      - if: $X\n";
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.jobs[0].rule, RuleOutcome::NoneMatched);
    assert_eq!(p.jobs[0].when, When::Never);
}

#[test]
fn variables_scope_and_escape() {
    let src = "variables:\n  A: g\n  B: \"$A-$$A\"\njobs:\n  j:\n    image: alpine\n    script: [x]\n    parallel:\n      matrix:\n        - A: [m]\n    variables:\n      C: ${A}${B}\n";
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.variables["B"], "g-$A");
    // The matrix value shadows the global one, and every value the job gets reads it, the
    // file's `B` too (expanded in the job, as GitLab's runner expands a job's variables).
    assert_eq!(p.jobs[0].variables["C"], "mm-$A");
    assert_eq!(p.variables["FORGE_GIT_SHA"], "");
}

#[test]
fn default_push_needs_leave_out_jobs_that_wait_for_the_push() {
    let src = "images:\n  app:\n    push: true\njobs:\n  t:\n    image: app\n    script: [x]\n  smoke:\n    image: app\n    script: [x]\n    needs: [app]\n";
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.images[0].push_needs, ["t"]);
}

#[test]
fn an_absolute_context_or_dockerfile_is_refused_where_it_is_written() {
    let e = errors(
        "variables:\n  D: /etc\nimages:\n  app:\n    context: ${D}\n    dockerfile: /srv/Dockerfile\njobs:\n  t:\n    image: app\n    script: [x]\n",
    );
    let found: Vec<(usize, &str)> = e
        .errors
        .iter()
        .map(|e| (e.pos.line, e.message.as_str()))
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, 5);
    assert!(
        found[0].1.starts_with("context `/etc` is an absolute path"),
        "{found:?}"
    );
    assert_eq!(found[1].0, 6);
    assert!(
        found[1]
            .1
            .starts_with("dockerfile `/srv/Dockerfile` is an absolute path"),
        "{found:?}"
    );
    // Relative paths pass the check; where they lead is the run's to resolve.
    ok(
        "images:\n  app:\n    context: ../lib\n    dockerfile: docker/Dockerfile\njobs:\n  t:\n    image: app\n    script: [x]\n",
        &CheckOptions::default(),
    );
}

#[test]
fn a_name_shared_by_a_job_and_an_image_is_refused() {
    let e = errors("images:\n  x: {}\njobs:\n  x:\n    image: alpine\n    script: [y]\n");
    assert_eq!(e.errors[0].message, "`x` names both a job and an image");
    assert_eq!(e.errors[0].pos.line, 4);
}

#[test]
fn a_job_needing_itself_is_a_cycle() {
    let e = errors("jobs:\n  a:\n    image: alpine\n    script: [y]\n    needs: [a]\n");
    assert_eq!(e.errors[0].message, "cycle: a -> a");
}

#[test]
fn alias_bombs_are_refused() {
    let mut src = String::from("variables:\n  a0: &a0 x\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        src.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let e = errors(&src);
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0]
            .message
            .starts_with("YAML exceeds a resource limit"),
        "{e}"
    );
}

/// Every error of every bad file lies inside its text, and its rendering names file:line:col.
#[test]
fn bad_files_report_places_inside_them() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/pipelines/bad");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("bad dir") {
        let path = entry.expect("entry").path();
        let src = std::fs::read_to_string(&path).expect("read");
        let e = load("bad.yaml", &src, &CheckOptions::default())
            .expect_err(&path.display().to_string());
        assert!(!e.errors.is_empty());
        for err in &e.errors {
            assert!(in_source(err.pos, &src), "{}: {err:?}", path.display());
            let rendered = e.render(err);
            let located = format!("bad.yaml:{}:{}: ", err.pos.line, err.pos.column);
            assert!(rendered.starts_with(&located), "{rendered}");
        }
        count += 1;
    }
    assert!(count >= 15, "only {count} bad files");
}

/// Whether `pos` is on a line of `src`, at most one column past its end.
pub(crate) fn in_source(pos: Pos, src: &str) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    if lines.is_empty() {
        return pos.line == 1 && pos.column == 1;
    }
    lines
        .get(pos.line.wrapping_sub(1))
        .is_some_and(|l| pos.column >= 1 && pos.column <= l.chars().count() + 1)
}

#[test]
fn empty_and_odd_inputs_do_not_panic() {
    for src in [
        "",
        "~",
        "[]",
        "jobs:",
        "jobs: ~",
        "stages: []",
        "a: b",
        "---\n---\n",
        "\t",
    ] {
        match load("f", src, &CheckOptions::default()) {
            Ok(_) => {}
            Err(e) => {
                for err in &e.errors {
                    assert!(in_source(err.pos, src), "{src:?}: {err:?}");
                }
            }
        }
    }
}

#[test]
fn a_key_written_twice_is_an_error() {
    let e = errors(
        "jobs:\n  unit:\n    image: a\n    script: [x]\n  unit:\n    image: b\n    script: [y]\n",
    );
    assert_eq!(e.errors[0].pos.line, 5, "{e}");
}

#[test]
fn needs_name_a_whole_matrix_or_one_instance() {
    let src = "jobs:\n  unit:\n    image: alpine\n    script: [x]\n    parallel:\n      matrix:\n        - V: [1, p]\n  one:\n    image: alpine\n    script: [x]\n    needs: ['unit: [1]']\n  all:\n    image: alpine\n    script: [x]\n    needs: [unit]\n";
    let p = ok(src, &CheckOptions::default());
    assert_eq!(
        job(&p, "one").needs,
        Some(vec![Need::Job("unit: [1]".into())])
    );
    // W2: the written name means every cell, by the names the run knows them by (a need of
    // `unit` alone named no unit of the run, and the job never ran).
    assert_eq!(
        job(&p, "all").needs,
        Some(vec![
            Need::Job("unit: [1]".into()),
            Need::Job("unit: [p]".into())
        ])
    );
    assert!(job(&p, "unit: [p]").variables["V"] == "p");
}

#[test]
fn scalars_keep_their_text() {
    let src = "variables:\n  PY: 3.10\n  N: 010\n  B: yes\n  T: true\n  F: 1e3\njobs: {}\n";
    let p = ok(src, &CheckOptions::default());
    for (k, v) in [
        ("PY", "3.10"),
        ("N", "010"),
        ("B", "yes"),
        ("T", "true"),
        ("F", "1e3"),
    ] {
        assert_eq!(p.variables[k], v, "{k}");
    }
}

#[test]
fn deep_block_nesting_is_refused_not_overflowed() {
    // 2,000 levels: indentation grows with depth, so deeper would pass the file size bound first.
    let deep: String = (1..2_000)
        .map(|i| format!("\n{}a:", " ".repeat(i)))
        .collect();
    let e = errors(&format!("variables:{deep} x\n"));
    assert!(
        e.errors[0].message.contains("deeper than 32"),
        "{}",
        e.errors[0].message
    );
}

/// Found by the fuzzer: a lone CR is a line break to YAML but not to `str::lines`, so an error
/// after one was shown on the wrong line (its position pointed past the line the renderer took).
/// Positions and rendering now both refer to the text with YAML's breaks made LF.
#[test]
fn a_lone_carriage_return_does_not_shift_error_lines() {
    let src = "jobs:\n  unit:\n    image: alpine:3\n    script: [cargo tes\r]\n    rules:\n      - if: \"(\u{d4}\"\n";
    let errs = errors(src);
    let e = &errs.errors[0];
    assert!(e.message.contains("in `if:`"), "{e:?}");
    assert_eq!(e.pos.line, 7, "{e:?}");
    assert!(in_source(e.pos, &super::normalize_breaks(src)), "{e:?}");
    let rendered = errs.render(e);
    assert!(rendered.contains("      - if: \"(\u{d4}\""), "{rendered}");
    // CR LF files read as LF files do.
    let crlf = src.replace("\r]", "]").replace('\n', "\r\n");
    let e2 = &errors(&crlf).errors[0];
    assert_eq!(e2.pos.line, 6, "{e2:?}");
}

/// Found by the fuzzer: an undefined variable inside a double-quoted scalar that spans lines was
/// placed by its offset in the folded value, past the end of the value's first line. It is shown
/// at the value instead; a one-line value still points at the variable itself.
#[test]
fn an_undefined_variable_in_a_multi_line_scalar_stays_inside_the_file() {
    let src = "images:\n  app:\n    tags: [\"reg/app:v1\n      and more text reg/app:v${VERSOIN}\"]\njobs:\n  unit:\n    image: app\n    script: [true]\n";
    let errs = errors(src);
    let e = errs
        .errors
        .iter()
        .find(|e| e.message.contains("VERSOIN"))
        .unwrap_or_else(|| panic!("{errs}"));
    assert!(in_source(e.pos, src), "{e:?}");
    assert_eq!(e.pos.line, 3, "{e:?}");
    let one_line = "images:\n  app:\n    tags: [\"reg/app:v${VERSOIN}\"]\njobs:\n  unit:\n    image: app\n    script: [true]\n";
    let e = &errors(one_line).errors[0];
    assert_eq!(
        (e.pos.line, e.pos.column, e.pos.width),
        (3, 22, 10),
        "{e:?}"
    );
}

/// W6: `variables: {X: fromvar}` beside `matrix: [{X: [m1, m2]}]` gave every cell `fromvar`, and
/// the second cell replayed the first one's cached result. The matrix wins, as in GitLab, and
/// the job's other variables see its value.
#[test]
fn matrix_values_win_over_the_jobs_variables() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    variables:\n      X: fromvar\n      Y: y-$X\n    parallel:\n      matrix:\n        - X: [m1, m2]\n";
    let p = ok(src, &CheckOptions::default());
    for cell in ["m1", "m2"] {
        let j = job(&p, &format!("a: [{cell}]"));
        assert_eq!(j.variables["X"], cell);
        assert_eq!(j.variables["Y"], format!("y-{cell}"));
    }
}

#[test]
fn a_matrix_cannot_set_what_forge_sets() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    parallel:\n      matrix:\n        - FORGE_JOB_NAME: [evil]\n";
    let e = errors(src);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(places(&e)[0], (7, 11), "{e}");
    assert!(
        e.to_string().contains("`FORGE_JOB_NAME` is set by forge"),
        "{e}"
    );
}

/// W13: `b` needs `a`, which no rule lets run; `b` ran anyway, without `a` and its artifacts.
/// GitLab refuses the pipeline; so does forge, at the `needs:` entry.
#[test]
fn needing_a_job_that_rules_leave_out_is_refused() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    rules: [{if: '$FORGE_GIT_BRANCH == \"main\"'}]\n  b:\n    image: alpine\n    script: [x]\n    needs: [a]\n";
    let e = load(
        "forge.yaml",
        src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], None),
    )
    .expect_err("should fail");
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(places(&e)[0], (9, 13), "{e}");
    assert!(
        e.to_string()
            .contains("`a` in needs does not run in this pipeline (no rule of it matched)"),
        "{e}"
    );
    // Where the rule lets `a` run, `b` needs it as written.
    let p = ok(src, &with_builtins(&[("FORGE_GIT_BRANCH", "main")], None));
    assert_eq!(job(&p, "b").needs, Some(vec![Need::Job("a".into())]));
    // An optional need lets it run without `a`.
    let optional = src.replace("needs: [a]", "needs: [{job: a, optional: true}]");
    let p = ok(
        &optional,
        &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], None),
    );
    assert_eq!(job(&p, "b").needs, Some(vec![Need::Job("a".into())]));
    // A job left out itself may need one left out.
    let both = src.replace("    needs: [a]\n", "    needs: [a]\n    when: never\n");
    ok(&both, &with_builtins(&[("FORGE_GIT_BRANCH", "dev")], None));
}

#[test]
fn an_empty_script_a_zero_timeout_and_a_service_named_twice_are_refused_where_written() {
    let src = "jobs:\n  a:\n    image: alpine\n    script: []\n    timeout: 0s\n    services:\n      - name: db\n        image: alpine\n      - name: db\n        image: alpine\n";
    let e = load("forge.yaml", src, &CheckOptions::default()).expect_err("should fail");
    assert_eq!(places(&e), vec![(4, 13), (5, 14), (9, 15)], "{e}");
    let text = e.to_string();
    assert!(text.contains("`script` is empty"), "{text}");
    assert!(text.contains("a `timeout` of 0s"), "{text}");
    assert!(
        text.contains("service `db` is defined twice in this job"),
        "{text}"
    );
    // The same job with one command, a timeout and two names is fine.
    let good = "jobs:\n  a:\n    image: alpine\n    script: [x]\n    timeout: 1s\n    services:\n      - name: db\n        image: alpine\n      - name: cache\n        image: alpine\n";
    ok(good, &CheckOptions::default());
}

#[test]
fn a_service_gets_only_secrets_its_job_has() {
    let src = "jobs:\n  t:\n    image: alpine\n    script: [x]\n    secrets: [DB]\n    services:\n      - name: db\n        image: postgres\n        secrets: [DB, OTHER]\n";
    let e = errors(src);
    assert_eq!(e.errors.len(), 1, "{e}");
    let err = &e.errors[0];
    assert_eq!((err.pos.line, err.pos.column), (9, 23), "{e}");
    let shown = e.render(err);
    assert!(
        shown.contains("service `db`: secret `OTHER` is not one of the job's secrets"),
        "{shown}"
    );
    assert!(
        shown.contains("add `OTHER` to the job's `secrets:`"),
        "{shown}"
    );
    let p = ok(&src.replace(", OTHER", ""), &CheckOptions::default());
    assert_eq!(job(&p, "t").services[0].secrets, vec!["DB".to_string()]);
}

#[test]
fn before_and_after_script_come_from_the_job_or_else_from_default() {
    let src = "default:\n  before_script: [d1, d2]\n  after_script: [da]\njobs:\n  plain:\n    image: alpine\n    script: [s]\n  own:\n    image: alpine\n    before_script: [o1]\n    after_script: []\n    script: [s]\n";
    let p = ok(src, &CheckOptions::default());
    let plain = job(&p, "plain");
    assert_eq!(plain.script, ["d1", "d2", "s"]);
    assert_eq!(plain.after_script, ["da"]);
    let own = job(&p, "own");
    assert_eq!(own.script, ["o1", "s"]);
    assert!(own.after_script.is_empty());
    // GitLab's `retry`, `timeout` and `artifacts` come from `default:` too.
    let p = ok(
        "default:\n  retry: 2\n  timeout: 5m\n  artifacts: {paths: [out/]}\njobs:\n  j:\n    \
         image: alpine\n    script: [s]\n  k:\n    image: alpine\n    timeout: 1m\n    \
         script: [s]\n",
        &CheckOptions::default(),
    );
    assert_eq!(job(&p, "j").retry.as_ref().map(|r| r.max), Some(2));
    assert_eq!(
        job(&p, "j").timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(
        job(&p, "k").timeout,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(job(&p, "k").artifacts.as_ref().unwrap().paths, ["out/"]);
    let e = errors(
        "default:\n  resource_group: prod\njobs:\n  j:\n    image: alpine\n    script: [s]\n",
    );
    assert!(
        e.to_string().contains("unknown key `resource_group`"),
        "{e}"
    );
}

#[test]
fn keys_starting_with_a_dot_are_hidden_templates_as_in_gitlab() {
    // A template need not be a whole job, and a hidden job is not read at all.
    let src = ".tpl: &tpl\n  image: alpine\n  before_script: [t]\njobs:\n  .hidden:\n    no-such-key: [never]\n  a:\n    <<: *tpl\n    script: [s]\n";
    let p = ok(src, &CheckOptions::default());
    assert_eq!(p.jobs.len(), 1);
    assert_eq!(job(&p, "a").script, ["t", "s"]);
    let e = errors("imagse: {}\njobs: {}\n");
    let shown = e.render(&e.errors[0]);
    assert!(
        shown.starts_with("forge.yaml:1:1: unknown key `imagse`"),
        "{shown}"
    );
    assert!(shown.contains("did you mean `images`?"), "{shown}");
}

#[test]
fn gitlabs_predefined_names_read_forges_built_ins() {
    let src = "jobs:\n  main-only:\n    image: alpine\n    script: [s]\n    rules:\n      - if: $CI_COMMIT_BRANCH == \"main\"\n  tagged:\n    image: alpine\n    script: [s]\n    variables:\n      REF: ${CI_COMMIT_REF_NAME}-${CI_COMMIT_SHORT_SHA}-${CI_PIPELINE_IID}\n    rules:\n      - if: $CI_COMMIT_TAG\n";
    let on = |branch: &str, tag: &str| {
        with_builtins(
            &[
                ("FORGE_GIT_BRANCH", branch),
                ("FORGE_GIT_TAG", tag),
                ("FORGE_GIT_SHORT_SHA", "abc1234"),
                ("FORGE_BUILD_NUMBER", "12"),
            ],
            None,
        )
    };
    let p = ok(src, &on("main", ""));
    assert_eq!(job(&p, "main-only").when, When::OnSuccess);
    assert_eq!(job(&p, "tagged").when, When::Never);
    let p = ok(src, &on("", "v1.2"));
    assert_eq!(job(&p, "main-only").when, When::Never);
    assert_eq!(job(&p, "tagged").when, When::OnSuccess);
    assert_eq!(job(&p, "tagged").variables["REF"], "v1.2-abc1234-12");
    // A matrix cannot set them, as it cannot set forge's own.
    let e = errors(
        "jobs:\n  m:\n    image: alpine\n    script: [s]\n    parallel:\n      matrix:\n        - CI_COMMIT_SHA: [x]\n",
    );
    assert!(
        e.to_string().contains("`CI_COMMIT_SHA` is set by forge"),
        "{e}"
    );
}
