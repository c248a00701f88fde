//! GitLab's forms of a pipeline, checked into plans: image and services forms, `default:`,
//! `extends:`, `dependencies:`, `only:`/`except:`, and a whole file written the GitLab way.

use super::*;

#[test]
fn gitlab_s_image_and_service_forms_read_as_gitlab_reads_them() {
    let src = r#"jobs:
  t:
    image:
      name: alpine:3
      entrypoint: [""]
    services:
      - postgres:16
      - tutum/wordpress:6
      - name: registry.example.com/team/cache:2
        alias: cache, kv store
        entrypoint: ["/bin/sh", "-c"]
        command: ["exec redis-server"]
      - name: web
        image: nginx
    script: [x]
  u:
    image:
      name: alpine:3
      entrypoint: ["/bin/bash", "-lc", "exec \"$@\"", "--"]
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    let t = job(&p, "t");
    assert!(matches!(&t.image, ImageUse::Registry(r) if r.to_string().contains("alpine")));
    assert!(t.entrypoint.is_empty(), "[\"\"] is no entrypoint");
    let names: Vec<(&str, Vec<&str>)> = t
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.aliases.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("postgres", vec![]),
            ("tutum__wordpress", vec!["tutum-wordpress"]),
            ("cache", vec!["kv", "store"]),
            ("web", vec![]),
        ]
    );
    assert_eq!(
        t.services[2].entrypoint.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".to_string()][..])
    );
    assert_eq!(t.services[2].command, ["exec redis-server"]);
    assert_eq!(t.services[3].entrypoint, None);
    assert_eq!(
        job(&p, "u").entrypoint,
        ["/bin/bash", "-lc", "exec \"$@\"", "--"]
    );
}

#[test]
fn a_service_no_name_reaches_or_two_would_share_is_refused_where_written() {
    let src = r#"jobs:
  t:
    image: alpine
    services:
      - 127.0.0.1:5000/db:1
      - name: redis
        alias: cache
      - name: memcached
        alias: cache
      - name: "my db"
        image: postgres
    script: [x]
"#;
    let e = errors(src);
    assert_eq!(places(&e), vec![(5, 9), (9, 16), (10, 15)], "{e}");
    let text = e.to_string();
    assert!(
        text.contains("service image `127.0.0.1:5000/db:1` gives no host name"),
        "{text}"
    );
    assert!(text.contains("give the service `alias:`"), "{text}");
    assert!(
        text.contains("service `cache` is defined twice in this job"),
        "{text}"
    );
    assert!(
        text.contains("service name `my db` is not a host name"),
        "{text}"
    );
    // A service that names no image at all is refused by the reader, at the entry.
    let e = errors(
        "jobs:\n  t:\n    image: alpine\n    services:\n      - alias: db\n    script: [x]\n",
    );
    assert!(e.to_string().contains("a service needs `image:`"), "{e}");
    // GitLab's keys forge does not run on are refused by name, not ignored.
    let e = errors(
        "jobs:\n  t:\n    image:\n      name: alpine\n      pull_policy: always\n    script: [x]\n",
    );
    assert!(e.to_string().contains("pull_policy"), "{e}");
}

#[test]
fn default_gives_every_job_its_image_and_services_unless_the_job_has_its_own() {
    let src = r#"default:
  image: alpine:3
  services: [redis:7]
jobs:
  plain:
    script: [x]
  own:
    image: {name: debian:12, entrypoint: ["/bin/bash", "-c", "exec \"$@\"", "--"]}
    services: []
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    let plain = job(&p, "plain");
    assert!(matches!(&plain.image, ImageUse::Registry(r) if r.to_string().contains("alpine")));
    assert_eq!(plain.services.len(), 1);
    assert_eq!(plain.services[0].name, "redis");
    let own = job(&p, "own");
    assert!(matches!(&own.image, ImageUse::Registry(r) if r.to_string().contains("debian")));
    assert!(
        own.services.is_empty(),
        "a job's own list, even empty, replaces default's"
    );
    assert_eq!(own.entrypoint.len(), 4);
    // Without either, the job is refused at its name.
    let e = errors("jobs:\n  lost:\n    script: [x]\n");
    assert_eq!(places(&e)[0], (2, 3), "{e}");
    assert!(e.to_string().contains("job `lost` has no image"), "{e}");
}

#[test]
fn extends_lays_templates_under_a_job_as_gitlab_does() {
    let src = r#".base:
  image: alpine:3
  before_script: [echo base]
  variables: {A: "1", B: "2"}
  retry: 1
.slow:
  extends: .base
  timeout: 30m
  variables: {B: "slow"}
.scripts: &scripts [not, a, job]
jobs:
  .lint-tpl:
    stage: build
    script: [lint]
  unit:
    extends: [.slow, .lint-tpl]
    variables: {B: "3", C: "4"}
    script: [test]
  lint:
    extends: .lint-tpl
    image: debian:12
  again:
    extends: unit
    retry: 0
"#;
    let p = ok(src, &CheckOptions::default());
    let unit = job(&p, "unit");
    assert!(matches!(&unit.image, ImageUse::Registry(r) if r.to_string().contains("alpine")));
    assert_eq!(unit.script, ["echo base", "test"]);
    assert_eq!(unit.stage, "build", "the last named template's stage");
    assert_eq!(unit.timeout, Some(std::time::Duration::from_secs(1800)));
    let vars: Vec<(&str, &str)> = unit
        .variables
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(vars, [("A", "1"), ("B", "3"), ("C", "4")]);
    assert_eq!(unit.retry.as_ref().map(|r| r.max), Some(1));
    let lint = job(&p, "lint");
    assert_eq!(lint.script, ["lint"]);
    assert!(matches!(&lint.image, ImageUse::Registry(r) if r.to_string().contains("debian")));
    // A visible job may be extended too, and its own keys stay its own.
    let again = job(&p, "again");
    assert_eq!(again.script, ["echo base", "test"]);
    assert_eq!(again.retry.as_ref().map(|r| r.max), Some(0));
}

/// GitLab deep-merges mappings through `extends:`: a template's `artifacts:` keys the job does
/// not write stay (`paths` with the job's `when`), `reports:` merge kind by kind, and a list the
/// job writes, even empty, replaces the template's.
#[test]
fn extends_merges_artifacts_key_by_key() {
    let src = r#".reports:
  artifacts:
    paths: [out/]
    expire_in: 1 week
    reports:
      junit: junit.xml
      dotenv: build.env
jobs:
  unit:
    extends: .reports
    image: alpine
    script: [test]
    artifacts:
      when: always
      reports:
        junit: [a.xml, b.xml]
  none:
    extends: .reports
    image: alpine
    script: [test]
    artifacts:
      paths: []
"#;
    let p = ok(src, &CheckOptions::default());
    let a = job(&p, "unit").artifacts.clone().unwrap();
    assert_eq!(a.paths, ["out/", "build.env"]);
    assert_eq!(a.junit, ["a.xml", "b.xml"]);
    assert_eq!(a.dotenv, ["build.env"]);
    assert_eq!(a.when, crate::pipeline::file::ArtifactsWhen::Always);
    assert_eq!(a.expire_in, Some(std::time::Duration::from_secs(604_800)));
    let a = job(&p, "none").artifacts.clone().unwrap();
    assert_eq!(
        a.paths,
        ["build.env"],
        "the job's empty paths replace the template's"
    );
    assert_eq!(a.junit, ["junit.xml"]);
}

/// The map forms of `cache:` and `image:` merge through `extends:` too (a job sets a template
/// cache's `policy`, or its own image under a template's `entrypoint`); a list of caches, or a
/// bare image name, replaces the template's whole, as in GitLab.
#[test]
fn extends_merges_a_cache_map_and_an_image_map_key_by_key() {
    let src = r#".cached:
  image: {name: alpine, entrypoint: ["/bin/bash", "-c"]}
  cache:
    key: deps
    paths: [vendor/]
jobs:
  pull:
    extends: .cached
    image: {name: debian}
    script: [x]
    cache: {policy: pull}
  listed:
    extends: .cached
    image: debian
    script: [x]
    cache: [{key: other, paths: [tmp/]}]
"#;
    let p = ok(src, &CheckOptions::default());
    let pull = job(&p, "pull");
    let c = &pull.caches[0];
    assert_eq!(c.key, crate::pipeline::CacheKey::Name("deps".into()));
    assert_eq!(c.paths, ["vendor/"]);
    assert_eq!(c.policy, crate::pipeline::file::CachePolicy::Pull);
    assert!(matches!(&pull.image, ImageUse::Registry(r) if r.to_string().contains("debian")));
    assert_eq!(pull.entrypoint, ["/bin/bash", "-c"]);
    let listed = job(&p, "listed");
    assert_eq!(listed.caches.len(), 1);
    assert_eq!(listed.caches[0].paths, ["tmp/"]);
    assert!(listed.entrypoint.is_empty(), "a bare name replaces the map");
}

#[test]
fn extends_naming_nothing_going_round_or_reading_a_bad_template_is_refused_where_written() {
    let e = errors(
        "jobs:\n  a:\n    extends: .tset\n    script: [x]\n    image: alpine\n.test:\n  stage: test\n",
    );
    assert_eq!(places(&e)[0], (3, 14), "{e}");
    let shown = e.render(&e.errors[0]);
    assert!(
        shown.contains("`extends` names `.tset`, which is no job or hidden template"),
        "{shown}"
    );
    assert!(shown.contains("did you mean `.test`?"), "{shown}");

    let e = errors(
        ".a:\n  extends: .b\n.b:\n  extends: .a\njobs:\n  j:\n    extends: .a\n    script: [x]\n    image: alpine\n",
    );
    assert!(
        e.to_string()
            .contains("`extends` goes round: j -> .a -> .b -> .a"),
        "{e}"
    );

    // A template named is read as strictly as a job, and its error points into it.
    let e = errors(".t:\n  image: alpine\n  scirpt: [x]\njobs:\n  j:\n    extends: .t\n");
    assert_eq!(e.errors[0].pos.line, 3, "{e}");
    assert!(e.to_string().contains("scirpt"), "{e}");

    // Deeper than GitLab's eleven levels.
    let mut src = String::new();
    for i in 0..13 {
        src.push_str(&format!(".t{i}:\n  extends: .t{}\n", i + 1));
    }
    src.push_str(".t13:\n  image: alpine\n  script: [x]\njobs:\n  j:\n    extends: .t0\n");
    let e = errors(&src);
    assert!(e.to_string().contains("nests deeper than 11 levels"), "{e}");

    // A job that ends up without a script says so at its name.
    let e = errors(".t:\n  image: alpine\njobs:\n  j:\n    extends: .t\n");
    assert_eq!(places(&e)[0], (4, 3), "{e}");
    assert!(e.to_string().contains("job `j` has no `script`"), "{e}");
}

#[test]
fn a_job_receives_the_artifacts_of_its_dependencies_or_its_needs() {
    let src = r#"jobs:
  compile:
    stage: build
    image: alpine
    script: [x]
  docs:
    stage: build
    image: alpine
    script: [x]
  unit:
    image: alpine
    dependencies: [compile]
    script: [x]
  lint:
    image: alpine
    dependencies: []
    script: [x]
  pick:
    image: alpine
    needs: [{job: compile, artifacts: false}, docs]
    script: [x]
  all:
    image: alpine
    script: [x]
"#;
    let p = ok(src, &CheckOptions::default());
    let from = |name: &str| job(&p, name).artifacts_from.clone();
    assert_eq!(from("unit"), Some(vec!["compile".to_string()]));
    assert_eq!(from("lint"), Some(vec![]));
    assert_eq!(from("pick"), Some(vec!["docs".to_string()]));
    assert_eq!(from("all"), None, "every earlier job's");

    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    script: [x]\n  b:\n    image: alpine\n    \
         dependencies: [a, nope]\n    script: [x]\n  c:\n    stage: deploy\n    image: alpine\n    \
         needs: [a]\n    dependencies: [b]\n    script: [x]\n",
    );
    let text = e.to_string();
    assert!(
        text.contains("`a` in dependencies is not a job of an earlier stage"),
        "{text}"
    );
    assert!(
        text.contains("`nope` in dependencies names no job"),
        "{text}"
    );
    assert!(
        text.contains("`b` in dependencies is not one of its `needs:`"),
        "{text}"
    );
    assert_eq!(places(&e), vec![(7, 20), (7, 23), (13, 20)], "{e}");
}

#[test]
fn only_and_except_decide_as_gitlab_s_do() {
    let src = r#"jobs:
  main-only:
    image: alpine
    only: [main]
    script: [x]
  releases:
    image: alpine
    only: [/^release-.*$/, tags]
    script: [x]
  not-main:
    image: alpine
    except: [main]
    script: [x]
  branches-with-docs:
    image: alpine
    only:
      refs: [branches]
      changes: ["docs/**"]
    script: [x]
  flagged:
    image: alpine
    only:
      variables: ['$DEPLOY == "yes"']
    script: [x]
"#;
    let runs = |p: &Pipeline, name: &str| job(p, name).when != When::Never;
    let on_main = ok(
        &src.replace("$DEPLOY", "$FORGE_GIT_BRANCH")
            .replace("yes", "main"),
        &with_builtins(&[("FORGE_GIT_BRANCH", "main")], Some(&["src/a.rs"])),
    );
    assert!(runs(&on_main, "main-only"));
    assert!(!runs(&on_main, "releases"));
    assert!(!runs(&on_main, "not-main"));
    assert_eq!(job(&on_main, "not-main").rule, RuleOutcome::ExceptMatched);
    assert!(!runs(&on_main, "branches-with-docs"), "no docs changed");
    assert_eq!(
        job(&on_main, "branches-with-docs").rule,
        RuleOutcome::OnlyMissed
    );
    assert!(runs(&on_main, "flagged"));

    let release = ok(
        src,
        &with_builtins(&[("FORGE_GIT_BRANCH", "release-2")], Some(&["docs/x.md"])),
    );
    assert!(!runs(&release, "main-only"));
    assert!(runs(&release, "releases"));
    assert!(runs(&release, "not-main"));
    assert!(runs(&release, "branches-with-docs"));
    assert!(!runs(&release, "flagged"));

    let tagged = ok(src, &with_builtins(&[("FORGE_GIT_TAG", "v1.0")], None));
    assert!(runs(&tagged, "releases"));
    assert!(!runs(&tagged, "branches-with-docs"), "a tag is no branch");

    let e = errors(
        "jobs:\n  a:\n    image: alpine\n    only: [merge_requests, main@group/app, /(/]\n    \
         script: [x]\n  b:\n    image: alpine\n    only: [main]\n    rules: [{when: always}]\n    \
         script: [x]\n",
    );
    let text = e.to_string();
    assert!(
        text.contains("`merge_requests` is a GitLab pipeline source"),
        "{text}"
    );
    assert!(text.contains("names another project's ref"), "{text}");
    assert!(text.contains("invalid regex"), "{text}");
    assert!(
        text.contains("`only`/`except` cannot be used with `rules`"),
        "{text}"
    );
    assert_eq!(places(&e), vec![(4, 12), (4, 28), (4, 44), (8, 11)], "{e}");
}

#[test]
fn a_file_written_the_gitlab_way_checks_into_its_plan() {
    let opts = with_builtins(&[("FORGE_GIT_BRANCH", "main")], None);
    let p = ok(&testdata("gitlab.yaml"), &opts);
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["build", "docs", "unit", "integration", "nightly", "deploy"]
    );
    let unit = job(&p, "unit");
    assert_eq!(unit.stage, "test");
    assert_eq!(unit.script, ["rustc --version", "cargo test --lib"]);
    assert!(unit.entrypoint.is_empty());
    assert_eq!(unit.artifacts_from, Some(vec!["build".to_string()]));
    let a = unit.artifacts.as_ref().unwrap();
    assert_eq!(a.exclude, ["target/reports/**/*.tmp"]);
    assert_eq!(a.expire_in, Some(std::time::Duration::from_secs(604_800)));
    assert_eq!(a.junit, ["target/reports/junit.xml"]);
    let integration = job(&p, "integration");
    assert_eq!(integration.variables["PROFILE"], "release");
    assert_eq!(integration.variables["RUST_BACKTRACE"], "1");
    let hosts: Vec<(&str, &[String])> = integration
        .services
        .iter()
        .map(|s| (s.name.as_str(), &s.aliases[..]))
        .collect();
    assert_eq!(
        hosts,
        [("postgres", &[][..]), ("cache", &["kv".to_string()][..]),]
    );
    assert_eq!(integration.artifacts_from, Some(vec!["build".to_string()]));
    assert_eq!(integration.when, When::OnSuccess);
    // `nightly` is on main but NIGHTLY is not set: its `only:` misses.
    assert_eq!(job(&p, "nightly").rule, RuleOutcome::OnlyMissed);
    // default's cache, keyed by the branch, and none for deploy.
    let c = &unit.caches[0];
    assert_eq!(c.key, crate::pipeline::CacheKey::Name("target-main".into()));
    assert_eq!(
        (&c.paths[..], &c.fallback_keys[..]),
        (
            &["target/".to_string()][..],
            &["target-main".to_string()][..]
        )
    );
    let deploy = job(&p, "deploy");
    assert!(deploy.caches.is_empty());
    assert_eq!(deploy.when, When::Manual);
    assert_eq!(deploy.script, ["./deploy target/release/app"]);
    // On a docs- branch integration is left out by `except:`, and deploy by `only:`.
    let docs = ok(
        &testdata("gitlab.yaml"),
        &with_builtins(&[("FORGE_GIT_BRANCH", "docs-typo")], None),
    );
    assert_eq!(job(&docs, "integration").rule, RuleOutcome::ExceptMatched);
    assert_eq!(job(&docs, "deploy").rule, RuleOutcome::OnlyMissed);
}
