//! The graph of a rich multi-stage Dockerfile (testdata/dockerfiles/multistage): its shape, and
//! pinned vertex digests, which must be the same on every machine and every run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use forge_builder::frontend::dockerfile::lower::{LowerOptions, Lowered, lower};
use forge_builder::frontend::dockerfile::parser;
use forge_builder::graph::{FileAction, MountKind, Op, Platform, SourceOp};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/dockerfiles")
        .join(rel)
}

fn build(args: &[(&str, &str)], target: Option<&str>) -> Lowered {
    let src = std::fs::read_to_string(testdata("multistage/Dockerfile")).unwrap();
    let df = parser::parse(&src).unwrap();
    let opts = LowerOptions {
        target: target.map(String::from),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        // Fixed, so that the pinned digests do not depend on the machine running the test.
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        dockerignore: vec![".git".into(), "**/*.md".into(), "!README.md".into()],
        ..LowerOptions::default()
    };
    lower(&df, &opts).unwrap_or_else(|e| panic!("{e} at {:?}", e.span))
}

fn find<'g>(l: &'g Lowered, desc: &str) -> &'g forge_builder::graph::Vertex {
    l.graph
        .vertices
        .iter()
        .find(|v| v.description.contains(desc))
        .unwrap_or_else(|| panic!("no vertex {desc:?} in\n{}", l.graph.to_text()))
}

#[test]
fn digests_are_pinned() {
    let l = build(&[], None);
    if std::env::var_os("FORGE_PRINT_GRAPH").is_some() {
        println!("{}", l.graph.to_text());
    }
    let pinned = [
        (
            "[internal] load image golang:1.22",
            "020aaabc478daf25f9b91193037598b4e67eefc98cd22b6716c14150fb2c4a67",
        ),
        (
            "[build] RUN --mount=type=cache,target=/go/pkg/mod",
            "aa3f32b538653a7d7270f9e79b5beec7fbc559e070c1a04e5f5f41ae9ddc4ee5",
        ),
        (
            "[final] WORKDIR /home/app",
            "c7770a78ec4279675856d583b569cc933fb0bb63648c0be41d5d6a0eb4091289",
        ),
    ];
    let root = l.graph.vertex(l.graph.outputs[0].root);
    for (desc, want) in pinned {
        let v = if desc == "[final] WORKDIR /home/app" {
            root
        } else {
            find(&l, desc)
        };
        println!("{desc}: {}", v.id);
        assert_eq!(v.id.to_hex(), want, "{desc}");
    }
}

#[test]
fn same_input_same_digests_and_args_change_only_what_they_touch() {
    let a = build(&[], None);
    let b = build(&[], None);
    let ids = |l: &Lowered| l.graph.vertices.iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    let c = build(&[("VERSION", "1.0")], None);
    let before = find(&a, "go mod download").id;
    assert_ne!(
        before,
        find(&c, "go mod download").id,
        "VERSION is in the env of every RUN after ARG VERSION"
    );
    // ...but not of the base image or the context: those stay.
    assert_eq!(a.graph.vertices[0].id, c.graph.vertices[0].id);
    assert_ne!(
        a.graph.vertex(a.graph.outputs[0].root).id,
        c.graph.vertex(c.graph.outputs[0].root).id
    );
}

#[test]
fn shape_of_the_multistage_graph() {
    let l = build(&[], None);
    assert_eq!(l.target, "final");
    assert!(l.warnings.is_empty());
    let text = l.graph.to_text();
    assert!(
        !text.contains("go vet"),
        "the test stage is pruned from the default target"
    );
    // Every mount type.
    let mut kinds = std::collections::BTreeSet::new();
    for v in &l.graph.vertices {
        if let Op::Exec(e) = &v.op {
            for m in &e.mounts {
                kinds.insert(match m.kind {
                    MountKind::Bind { .. } => "bind",
                    MountKind::Cache { .. } => "cache",
                    MountKind::Tmpfs { .. } => "tmpfs",
                    MountKind::Secret { .. } => "secret",
                    MountKind::Ssh { .. } => "ssh",
                });
            }
        }
    }
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    // ONBUILD triggers of the base stage ran first in the final stage.
    assert!(find(&l, "[final] COPY --from=certs").line.is_some());
    assert!(
        find(&l, "[final] RUN echo \"built on onbuild-base\"")
            .line
            .is_some()
    );
    // The chomped heredoc lost its tabs; the expanding one saw the stage's (empty) VERSION.
    let mkfiles: Vec<String> = l
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => f.actions.iter().find_map(|a| match a {
                FileAction::Mkfile { data, .. } => Some(data.clone()),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    assert!(
        mkfiles.contains(&"listen = \"0.0.0.0:8080\"\n".to_string()),
        "{mkfiles:?}"
    );
    assert!(
        mkfiles.contains(&"welcome to version \n".to_string()),
        "{mkfiles:?}"
    );
    // The context is identified by name, restricted to what is used, with the ignore rules.
    let local = l
        .graph
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Local {
                name,
                include_patterns,
                exclude_patterns,
            }) => Some((
                name.clone(),
                include_patterns.clone(),
                exclude_patterns.clone(),
            )),
            _ => None,
        })
        .unwrap();
    assert_eq!(local.0, "context");
    assert_eq!(local.1, vec!["cmd", "go.mod", "go.sum", "internal"]);
    assert_eq!(local.2.len(), 3);
    assert!(
        !text.contains(env!("CARGO_MANIFEST_DIR")),
        "no host paths in the graph"
    );

    let t = build(&[], Some("test"));
    assert!(t.graph.to_text().contains("go vet"));
    assert!(
        !t.graph.to_text().contains("alpine"),
        "certs is not needed by test"
    );
}

#[test]
fn json_and_dot_renderings() {
    let l = build(&[], None);
    let json = l.graph.to_json();
    let vertices = json["vertices"].as_array().unwrap();
    assert_eq!(vertices.len(), l.graph.vertices.len());
    assert_eq!(vertices[0]["id"], l.graph.vertices[0].id.to_string());
    assert_eq!(vertices[0]["op"]["kind"], "source");
    assert_eq!(json["outputs"][0]["name"], "final");
    assert_eq!(json["outputs"][0]["gates"].as_array().unwrap().len(), 0);
    let dot = l.graph.to_dot();
    assert!(dot.starts_with("digraph forge {"));
    assert!(dot.contains("v0 -> v1;"));
    assert!(dot.trim_end().ends_with('}'));
}

/// The pipeline frontend's shape: a test job runs on the built image and gates its export. The
/// gate is kept by `finish` (it is needed), but is not part of the output's filesystem.
#[test]
fn outputs_can_be_gated_by_test_vertices() {
    use forge_builder::graph::{
        ExecOp, GraphBuilder, ImageConfig, Mount, NetworkMode, Output, SecurityMode,
    };
    let mut g = GraphBuilder::new();
    let platform = Platform::parse("linux/amd64").unwrap();
    let base = g.add(
        Op::Source(SourceOp::Image {
            reference: "busybox".into(),
            platform: platform.clone(),
        }),
        "image",
        None,
    );
    g.add(Op::Source(SourceOp::Scratch), "never needed", None);
    let test = g.add(
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "make test".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::None,
            security: SecurityMode::Sandbox,
            platform,
            mounts: vec![Mount {
                target: "/".into(),
                kind: MountKind::Bind {
                    input: Some(base),
                    source_path: "/".into(),
                    readonly: true,
                    output: false,
                },
            }],
            test: None,
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
        }),
        "test job",
        None,
    );
    g.add_output(Output {
        name: "app".into(),
        root: base,
        image: ImageConfig::default(),
        gates: vec![test],
    });
    let graph = g.finish();
    assert_eq!(graph.vertices.len(), 2, "the unneeded vertex is dropped");
    assert!(
        graph
            .vertices
            .iter()
            .all(|v| v.description != "never needed")
    );
    assert_eq!(graph.outputs[0].gates.len(), 1);
    let gate = graph.vertex(graph.outputs[0].gates[0]);
    assert_eq!(gate.description, "test job");
    assert!(graph.to_dot().contains("[style=dashed, label=\"gate\"]"));
    assert!(graph.to_text().contains("    gate #1"));
}
