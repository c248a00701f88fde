//! The run's scheduling and gating without running anything: a checked plan's units are walked
//! in the order `run` walks them, each decided by [`decide`] or given the end a test says it had,
//! and the test reads how every unit ended and what the run said.

use super::*;
use crate::pipeline::CheckOptions;

fn plan(src: &str) -> Pipeline {
    crate::pipeline::load("forge.yaml", src, &CheckOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn job(name: &str) -> Node {
    Node::Job(name.into())
}

fn build(name: &str) -> Node {
    Node::Build(name.into(), None)
}

fn push(name: &str) -> Node {
    Node::Push(name.into())
}

/// How a walk ended: every unit reached and its end, and the lines said, in order.
struct Walk {
    ends: BTreeMap<Node, End>,
    lines: Vec<String>,
}

impl Walk {
    fn end(&self, n: &Node) -> Option<End> {
        self.ends.get(n).copied()
    }

    fn said(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    /// Fails, showing every line said, unless `line` was one of them.
    fn assert_said(&self, line: &str) {
        assert!(self.said(line), "{line:?} not in {:?}", self.lines);
    }
}

/// Walks `plan` as `run` does (one unit at a time); a unit that would run ends as `ran` says,
/// `Ok` when it is not listed. Units never ready are left out of `ends`.
fn walk(plan: &Pipeline, only: &[&str], ran: &[(Node, End)]) -> Walk {
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    let plan = &asked_for(plan, &only);
    let units = units(plan, &only);
    let ran: HashMap<Node, End> = ran.iter().cloned().collect();
    let mut ends: HashMap<Node, End> = HashMap::new();
    let mut left: HashMap<Node, Left> = HashMap::new();
    let mut lines = Vec::new();
    let mut pending: BTreeSet<Node> = units.keys().cloned().collect();
    while let Some(n) = pending
        .iter()
        .find(|n| units[*n].iter().all(|d| ends.contains_key(d)))
        .cloned()
    {
        pending.remove(&n);
        let deps: Vec<(Node, End)> = units[&n].iter().map(|d| (d.clone(), ends[d])).collect();
        let (end, l) = match decide(plan, &n, &deps, &left) {
            Some((end, l, event)) => {
                lines.push(event.line());
                (end, l)
            }
            None => {
                let end = ran.get(&n).copied().unwrap_or(End::Ok);
                if end == End::Ok
                    && let Some(e) = untested(plan, &n, &deps)
                {
                    lines.push(e.line());
                }
                (end, Left::Nothing)
            }
        };
        ends.insert(n.clone(), end);
        left.insert(n, l);
    }
    Walk {
        ends: ends.into_iter().collect(),
        lines,
    }
}

/// W1: `deploy` needs the pushed image; a gating job failed, so the push was held back. The
/// deploy job must not run with the reference of a tag that was never pushed.
#[test]
fn a_job_needing_a_push_held_back_is_skipped_not_run() {
    let p = plan(
        r#"images:
  app:
    tags: ["127.0.0.1:5000/t/app:v1"]
    push: true
jobs:
  lint:
    image: app
    script: [x]
  greet:
    image: app
    script: [x]
  deploy:
    stage: deploy
    image: docker.io/library/busybox
    needs: [app, greet]
    script: [x]
"#,
    );
    let w = walk(&p, &[], &[(job("lint"), End::Failed)]);
    assert_eq!(w.end(&push("app")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&job("deploy")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said("job deploy: skipped: push of app was held back");

    // A push that fails blocks it the same way, and says so.
    let w = walk(&p, &[], &[(push("app"), End::Failed)]);
    assert_eq!(w.end(&job("deploy")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said("job deploy: skipped: push of app failed before it");

    // And when everything passed, it runs.
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&job("deploy")), Some(End::Ok), "{:?}", w.lines);
}

/// A failure blocks a chain of `needs:`, not only the job right after it.
#[test]
fn a_job_needing_a_job_blocked_by_a_failure_is_blocked_too() {
    let p = plan(
        r#"jobs:
  a:
    image: docker.io/library/busybox
    script: [x]
  b:
    image: docker.io/library/busybox
    needs: [a]
    script: [x]
  c:
    image: docker.io/library/busybox
    needs: [b]
    script: [x]
"#,
    );
    let w = walk(&p, &[], &[(job("a"), End::Failed)]);
    assert_eq!(w.end(&job("b")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&job("c")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said("job c: skipped: b did not run");
}

#[test]
fn jobs_whose_names_clean_up_alike_get_their_own_artifacts_directories() {
    let all = [
        "build: [linux/amd64]",
        "build: [linux amd64]",
        "build-linux-amd64",
        "unit",
    ];
    let dirs: Vec<String> = all
        .iter()
        .map(|j| artifacts_dir_name(j, all.iter().copied()))
        .collect();
    // The job named like the cleaned-up cells keeps its name; the cells get a digest each.
    assert_eq!(dirs[2], "build-linux-amd64");
    assert_eq!(dirs[3], "unit");
    assert!(
        dirs[0].starts_with("build-linux-amd64-") && dirs[0].len() == 26,
        "{dirs:?}"
    );
    assert!(
        dirs[1].starts_with("build-linux-amd64-") && dirs[1].len() == 26,
        "{dirs:?}"
    );
    let unique: std::collections::BTreeSet<&String> = dirs.iter().collect();
    assert_eq!(unique.len(), dirs.len(), "{dirs:?}");
    // A digest that would make another job's name is made longer (found by a pipeline sweep:
    // `a/b` took the directory of a job named `a-b-0da3cfa5`).
    let impostor = format!("a-b-{}", &blake3::hash(b"a/b").to_hex()[..8]);
    let all = ["a/b", "a-b", impostor.as_str()];
    let dirs: Vec<String> = all
        .iter()
        .map(|j| artifacts_dir_name(j, all.iter().copied()))
        .collect();
    assert_eq!(dirs[1], "a-b");
    assert_eq!(dirs[2], impostor);
    assert_eq!(dirs[0].len(), "a-b-".len() + 16, "{dirs:?}");
    // Without a clash, the cleaned-up name as before.
    assert_eq!(
        artifacts_dir_name("unit: [1, p]", ["unit: [1, p]", "lint"]),
        job_dir_name("unit: [1, p]")
    );
    assert_eq!(job_dir_name("unit: [1, p]"), "unit-1-p");
}

/// W3: `compile` failed, and `slim` (artifacts-from compile) was still built without its
/// artifacts, and pushed.
#[test]
fn an_image_taking_artifacts_from_a_failed_job_is_neither_built_nor_pushed() {
    let p = plan(
        r#"images:
  slim:
    artifacts-from: [compile]
    tags: ["127.0.0.1:5000/t/slim:v1"]
    push: true
jobs:
  compile:
    stage: build
    image: docker.io/library/busybox
    script: [x]
  smoke:
    image: slim
    script: [x]
"#,
    );
    let w = walk(&p, &[], &[(job("compile"), End::Failed)]);
    assert_eq!(w.end(&build("slim")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&push("slim")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&job("smoke")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said("image slim: not built: compile failed before it");
    w.assert_said("image slim: not pushed (127.0.0.1:5000/t/slim:v1): compile did not pass");

    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&build("slim")), Some(End::Ok), "{:?}", w.lines);
    assert_eq!(w.end(&push("slim")), Some(End::Ok), "{:?}", w.lines);
}

/// Regression (monorepo sweep 02): the `artifacts-from` job was left out by its rules (a commit
/// that did not touch its service), and the image was built from the bare context and pushed
/// over its tag without the artifacts (or failed, naming a missing source and not the job).
#[test]
fn an_image_taking_artifacts_from_a_job_its_rules_left_out_is_neither_built_nor_pushed() {
    let p = plan(
        r#"images:
  slim:
    artifacts-from: [compile]
    tags: ["127.0.0.1:5000/t/slim:v1"]
    push: true
jobs:
  compile:
    stage: build
    image: docker.io/library/busybox
    script: [x]
    rules:
      - if: $NOT_SET == "yes"
  other:
    image: docker.io/library/busybox
    script: [x]
"#,
    );
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&job("compile")), Some(End::Skipped), "{:?}", w.lines);
    assert_eq!(w.end(&build("slim")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&push("slim")), Some(End::Blocked), "{:?}", w.lines);
    assert_eq!(w.end(&job("other")), Some(End::Ok), "{:?}", w.lines);
    w.assert_said(
        "image slim: not built: compile left out of this run (rules or `when:`), so the \
         artifacts it takes are not there",
    );
}

/// W5: `onfail` (`when: on_failure`) was skipped because nothing failed, and that held the
/// image's push while the run passed.
#[test]
fn an_on_failure_job_skipped_because_nothing_failed_holds_no_push() {
    let p = plan(
        r#"images:
  app:
    tags: ["127.0.0.1:5000/t/app:v1"]
    push: true
jobs:
  ok:
    image: app
    script: [x]
  onfail:
    image: app
    when: on_failure
    script: [x]
"#,
    );
    assert!(
        p.images[0].push_needs.contains(&"onfail".to_string()),
        "the default gate has every job on the image: {:?}",
        p.images[0].push_needs
    );
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&job("onfail")), Some(End::Skipped), "{:?}", w.lines);
    assert_eq!(w.end(&push("app")), Some(End::Ok), "{:?}", w.lines);

    // When something failed, the push is held for that job, and for it only.
    let w = walk(&p, &[], &[(job("ok"), End::Failed)]);
    assert_eq!(w.end(&push("app")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said("image app: not pushed (127.0.0.1:5000/t/app:v1): ok did not pass");
}

/// W2 at the scheduler: `after-cells` needs the matrix job by its written name. It was never
/// ready (it waited for a unit that does not exist), so it never ran and the push it gates never
/// happened, in a run that passed.
#[test]
fn a_job_needing_a_matrix_job_runs_after_every_cell_and_its_push_happens() {
    let p = plan(
        r#"images:
  app:
    tags: ["127.0.0.1:5000/t/app:v1"]
    push: true
jobs:
  cells:
    image: app
    parallel:
      matrix:
        - N: [1, 2]
    script: [x]
  after-cells:
    image: app
    needs: [cells]
    script: [x]
"#,
    );
    let units = units(&p, &[]);
    assert_eq!(
        units[&job("after-cells")],
        BTreeSet::from([
            Node::Build("app".into(), None),
            job("cells: [1]"),
            job("cells: [2]")
        ])
    );
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&job("after-cells")), Some(End::Ok), "{:?}", w.lines);
    assert_eq!(w.end(&push("app")), Some(End::Ok), "{:?}", w.lines);
    // One failed cell blocks it, and holds the push.
    let w = walk(&p, &[], &[(job("cells: [2]"), End::Failed)]);
    assert_eq!(
        w.end(&job("after-cells")),
        Some(End::Blocked),
        "{:?}",
        w.lines
    );
    assert_eq!(w.end(&push("app")), Some(End::Blocked), "{:?}", w.lines);
    // `forge run after-cells` runs the cells too.
    let w = walk(&p, &["after-cells"], &[]);
    assert_eq!(w.end(&job("cells: [1]")), Some(End::Ok), "{:?}", w.lines);
    assert_eq!(w.end(&job("after-cells")), Some(End::Ok), "{:?}", w.lines);
}

/// C9: every job gating an image was skipped by `changes:`, and the image was pushed with no word
/// said. It still goes (a job left out gates nothing, as documented), with a line saying so; a
/// gate that ran, or one skipped only because nothing failed, says nothing.
#[test]
fn a_push_whose_every_gate_was_skipped_by_rules_says_it_is_untested() {
    let src = |test_b_rule: &str| {
        format!(
            "images:\n  b: {{context: b, tags: [\"127.0.0.1:5000/t/b:v1\"], push: true}}\n\
             jobs:\n  test-b:\n    image: b\n    script: [\"true\"]\n{test_b_rule}\
             \n  cleanup:\n    image: b\n    when: on_failure\n    script: [\"true\"]\n"
        )
    };
    let p = plan(&src("    rules:\n      - if: $NOPE == \"1\"\n"));
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&push("b")), Some(End::Ok), "{:?}", w.lines);
    w.assert_said("image b: pushed untested: every job gating it was skipped by rules or `when`: cleanup, test-b");
    let p = plan(&src(""));
    let w = walk(&p, &[], &[]);
    assert!(
        !w.lines.iter().any(|l| l.contains("untested")),
        "{:?}",
        w.lines
    );
}

/// GitLab's `when: manual`: a job that runs only when asked for by name. Not asked for, it is
/// skipped and gates no push; the next stage runs (as GitLab's optional manual job lets it), and a
/// job that `needs:` it does not run. `forge run deploy` runs it, and then what needs it.
#[test]
fn a_manual_job_runs_only_when_asked_for_by_name() {
    let p = plan(
        r#"images:
  app:
    tags: ["127.0.0.1:5000/t/app:v1"]
    push: true
jobs:
  unit:
    image: app
    script: [x]
  deploy:
    stage: deploy
    image: app
    when: manual
    script: [x]
  announce:
    stage: deploy
    image: docker.io/library/busybox
    needs: [deploy]
    script: [x]
  later:
    stage: deploy
    image: docker.io/library/busybox
    script: [x]
"#,
    );
    let w = walk(&p, &[], &[]);
    assert_eq!(w.end(&job("deploy")), Some(End::Skipped), "{:?}", w.lines);
    w.assert_said("job deploy: skipped: when: manual (`forge run deploy` runs it)");
    assert_eq!(w.end(&job("announce")), Some(End::Blocked), "{:?}", w.lines);
    w.assert_said(
        "job announce: skipped: it waits for deploy, manual and not asked for (`forge run announce \
         deploy` runs them)",
    );
    assert_eq!(w.end(&job("later")), Some(End::Ok), "{:?}", w.lines);
    // `unit` passed, `deploy` gates nothing: the push goes ahead, no word of untested.
    assert_eq!(w.end(&push("app")), Some(End::Ok), "{:?}", w.lines);
    assert!(
        !w.lines.iter().any(|l| l.contains("untested")),
        "{:?}",
        w.lines
    );

    let w = walk(&p, &["deploy", "announce"], &[]);
    assert_eq!(w.end(&job("deploy")), Some(End::Ok), "{:?}", w.lines);
    assert_eq!(w.end(&job("announce")), Some(End::Ok), "{:?}", w.lines);
    // Asked for, it gates the push like any job on the image.
    let w = walk(&p, &["unit", "deploy"], &[(job("deploy"), End::Failed)]);
    assert_eq!(w.end(&push("app")), Some(End::Blocked), "{:?}", w.lines);
}

/// A manual job from `rules:` is blocking, as GitLab makes it (`allow_failure: false` unless the
/// rule or job says otherwise): the later stages wait for it, so here, where nobody presses play,
/// they do not run. A job-level `when: manual` may be skipped (GitLab's optional manual job)
/// unless it says `allow_failure: false`. Before, every manual job was optional and the deploy
/// stage after an approval gate ran without it.
#[test]
fn a_blocking_manual_job_holds_the_later_stages() {
    let src = |gate: &str| {
        format!(
            r#"stages: [test, approve, deploy]
jobs:
  unit:
    image: docker.io/library/busybox
    script: [x]
  gate:
    stage: approve
    image: docker.io/library/busybox
{gate}    script: [x]
  ship:
    stage: deploy
    image: docker.io/library/busybox
    script: [x]
"#
        )
    };
    for gate in [
        "    rules:\n      - when: manual\n",
        "    when: manual\n    allow_failure: false\n",
        "    when: manual\n    rules:\n      - if: $CI\n",
    ] {
        let w = walk(&plan(&src(gate)), &[], &[]);
        assert_eq!(
            w.end(&job("gate")),
            Some(End::Skipped),
            "{gate}: {:?}",
            w.lines
        );
        assert_eq!(
            w.end(&job("ship")),
            Some(End::Blocked),
            "{gate}: {:?}",
            w.lines
        );
        w.assert_said(
            "job ship: skipped: it waits for gate, manual and not asked for (`forge run ship \
             gate` runs them)",
        );
        let w = walk(&plan(&src(gate)), &["gate", "ship"], &[]);
        assert_eq!(w.end(&job("ship")), Some(End::Ok), "{gate}: {:?}", w.lines);
    }
    for optional in [
        "    when: manual\n",
        "    rules:\n      - when: manual\n        allow_failure: true\n",
    ] {
        let w = walk(&plan(&src(optional)), &[], &[]);
        assert_eq!(
            w.end(&job("gate")),
            Some(End::Skipped),
            "{optional}: {:?}",
            w.lines
        );
        assert_eq!(
            w.end(&job("ship")),
            Some(End::Ok),
            "{optional}: {:?}",
            w.lines
        );
    }
}
