//! Lowering semantics: ARG/ENV scoping, stage references and pruning, ONBUILD, image config.

mod instructions_ast;

use std::collections::BTreeMap;

use forge_builder::frontend::dockerfile::ast::Span;
use forge_builder::frontend::dockerfile::lower::{
    ImageResolver, LowerErrorKind, LowerOptions, Lowered, lower,
};
use forge_builder::graph::{FileAction, Graph, ImageConfig, MountKind, Op, Platform, SourceOp};
use instructions_ast::dockerfile;

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn opts<'a>(args: &[(&str, &str)], target: Option<&str>) -> LowerOptions<'a> {
    LowerOptions {
        target: target.map(String::from),
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        target_platform: amd64(),
        build_platform: amd64(),
        ..LowerOptions::default()
    }
}

fn build(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Lowered {
    lower(&dockerfile(src), &opts(args, target)).unwrap_or_else(|e| panic!("{e} at {:?}", e.span))
}

fn execs(g: &Graph) -> Vec<&forge_builder::graph::ExecOp> {
    g.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn images(g: &Graph) -> Vec<String> {
    g.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(SourceOp::Image { reference, .. }) => Some(reference.clone()),
            _ => None,
        })
        .collect()
}

fn env_of(e: &forge_builder::graph::ExecOp, k: &str) -> Option<String> {
    e.env
        .iter()
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(String::from))
}

#[test]
fn global_arg_is_for_from_only_unless_redeclared() {
    let l = build(
        "ARG BASE=alpine\nARG V=3.19\nFROM $BASE:${V}\nRUN echo $V\nARG V\nRUN echo $V",
        &[],
        None,
    );
    assert_eq!(images(&l.graph), vec!["alpine:3.19"]);
    let ex = execs(&l.graph);
    assert_eq!(
        env_of(ex[0], "V"),
        None,
        "global ARG not visible before redeclaration"
    );
    assert_eq!(
        env_of(ex[1], "V").as_deref(),
        Some("3.19"),
        "redeclared ARG takes the global value"
    );
    assert_eq!(
        ex[0].args,
        vec!["/bin/sh", "-c", "echo $V"],
        "RUN bodies are not expanded"
    );
}

#[test]
fn build_args_override_defaults_and_globals() {
    let src = "ARG V=1\nFROM img:$V\nARG V\nARG W=dflt\nRUN true";
    let l = build(src, &[("V", "9"), ("W", "x")], None);
    assert_eq!(images(&l.graph), vec!["img:9"]);
    let ex = execs(&l.graph);
    assert_eq!(env_of(ex[0], "V").as_deref(), Some("9"));
    assert_eq!(env_of(ex[0], "W").as_deref(), Some("x"));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn unused_build_arg_is_reported() {
    let l = build(
        "FROM a\nARG USED\nRUN true",
        &[("USED", "1"), ("NOPE", "2"), ("HTTP_PROXY", "p")],
        None,
    );
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("NOPE"));
}

#[test]
fn arg_default_expands_in_stage_scope() {
    let l = build("FROM a\nENV P=/opt\nARG DIR=$P/bin\nRUN true", &[], None);
    assert_eq!(
        env_of(execs(&l.graph)[0], "DIR").as_deref(),
        Some("/opt/bin")
    );
}

#[test]
fn automatic_platform_args() {
    let src = "FROM --platform=$BUILDPLATFORM golang AS b\nARG TARGETOS TARGETARCH BUILDPLATFORM TARGETPLATFORM\nRUN go build";
    let l = build(src, &[], None);
    let ex = execs(&l.graph);
    assert_eq!(env_of(ex[0], "TARGETARCH").as_deref(), Some("amd64"));
    assert_eq!(env_of(ex[0], "TARGETOS").as_deref(), Some("linux"));
    assert_eq!(
        env_of(ex[0], "TARGETPLATFORM").as_deref(),
        Some("linux/amd64")
    );
    assert_eq!(
        env_of(ex[0], "BUILDPLATFORM").as_deref(),
        Some("linux/amd64")
    );
    // Not declared: not in the environment.
    let l = build("FROM a\nRUN true", &[], None);
    assert_eq!(env_of(execs(&l.graph)[0], "TARGETARCH"), None);
}

#[test]
fn platform_strings_parse_like_containerd() {
    let p = Platform::parse("linux/arm64/v8").unwrap();
    assert_eq!(
        p.to_string(),
        "linux/arm64",
        "v8 is arm64's default variant"
    );
    assert_eq!(
        Platform::parse("linux/armhf").unwrap().to_string(),
        "linux/arm/v7"
    );
    assert_eq!(
        Platform::parse("linux/x86_64").unwrap().to_string(),
        "linux/amd64"
    );
    assert_eq!(
        Platform::parse("linux").unwrap().architecture,
        Platform::host().architecture
    );
    assert_eq!(Platform::parse("arm64").unwrap().os, Platform::host().os);
    assert!(Platform::parse("linux/").is_none());
    assert!(Platform::parse("a/b/c/d").is_none());
}

#[test]
fn host_platform_uses_oci_names() {
    let p = Platform::host();
    assert_eq!(p.os, "linux");
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(p.architecture, "amd64");
    }
    assert_ne!(p.architecture, "x86_64");
}

#[test]
fn env_expands_against_the_previous_scope() {
    let l = build(
        "FROM a\nENV A=1\nENV A=2 B=$A\nWORKDIR /w/$A\nRUN true",
        &[],
        None,
    );
    let out = &l.graph.outputs[0].image;
    assert!(out.env.contains(&"B=1".to_string()), "{:?}", out.env);
    assert!(out.env.contains(&"A=2".to_string()));
    assert!(out.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(out.working_dir, "/w/2");
    assert_eq!(execs(&l.graph)[0].cwd, "/w/2");
}

#[test]
fn target_prunes_unneeded_stages() {
    let src = "FROM alpine AS base\nRUN base\nFROM base AS test\nRUN test\nFROM busybox AS other\nRUN other\nFROM base AS final\nCOPY --from=other /x /x";
    let l = build(src, &[], Some("test"));
    assert_eq!(l.target, "test");
    let runs: Vec<_> = execs(&l.graph).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(runs, vec!["base", "test"]);
    assert_eq!(images(&l.graph), vec!["alpine"]);
    let l = build(src, &[], None);
    assert_eq!(l.target, "final");
    let runs: Vec<_> = execs(&l.graph).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(
        runs,
        vec!["base", "other"],
        "final needs base and, by COPY --from, other"
    );
    let l = build(src, &[], Some("FINAL"));
    assert_eq!(l.target, "final", "target names are case-insensitive");
}

#[test]
fn unknown_target_is_an_error_with_a_hint() {
    let e = lower(
        &dockerfile("FROM a AS build\nFROM b AS test"),
        &opts(&[], Some("tset")),
    )
    .unwrap_err();
    assert_eq!(*e.kind, LowerErrorKind::TargetNotFound("tset".into()));
    assert_eq!(e.hint.as_deref(), Some("did you mean test?"));
}

#[test]
fn copy_from_stage_index_and_image() {
    let src =
        "FROM a\nRUN one\nFROM b\nCOPY --from=0 /x /x\nCOPY --from=nginx:1 /etc/nginx /etc/nginx";
    let l = build(src, &[], None);
    assert_eq!(images(&l.graph), vec!["a", "b", "nginx:1"]);
    let copies: Vec<_> = l
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 2);
    let FileAction::Copy { from, .. } = &copies[0].actions[0] else {
        panic!()
    };
    assert!(
        matches!(l.graph.vertex(from.unwrap()).op, Op::Exec(_)),
        "copies stage 0's result"
    );
}

#[test]
fn copy_from_errors() {
    let e = lower(
        &dockerfile("FROM a\nCOPY --from=later /x /x\nFROM b AS later"),
        &opts(&[], Some("stage-0")),
    )
    .err();
    // stage-0 is unnamed, so the target lookup fails first; name the first stage instead.
    assert!(e.is_some());
    let e = lower(
        &dockerfile("FROM a AS first\nCOPY --from=later /x /x\nFROM b AS later"),
        &opts(&[], Some("first")),
    )
    .unwrap_err();
    assert!(
        matches!(*e.kind, LowerErrorKind::CopyFromLaterStage { .. }),
        "{e}"
    );
    assert_eq!(e.span.unwrap().start.line, 2);
    let e = lower(
        &dockerfile("FROM a\nARG S=x\nCOPY --from=$S /x /x"),
        &opts(&[], None),
    )
    .unwrap_err();
    assert_eq!(*e.kind, LowerErrorKind::CopyFromVariable);
    let e = lower(&dockerfile("FROM a\nCOPY --from=7 /x /x"), &opts(&[], None)).unwrap_err();
    assert_eq!(*e.kind, LowerErrorKind::StageIndex(7));
    let e = lower(&dockerfile("ARG E\nFROM $E"), &opts(&[], None)).unwrap_err();
    assert!(matches!(*e.kind, LowerErrorKind::BlankBaseName(_)));
    let e = lower(
        &dockerfile("FROM --platform=linux/amd64/v2/x a"),
        &opts(&[], None),
    )
    .unwrap_err();
    assert!(matches!(*e.kind, LowerErrorKind::Platform(_)));
}

/// `FROM --platform=linux/arm64 img` pulled this machine's image and stamped arm64 on it: the
/// image said arm64 and held amd64 files. Another platform than this machine's is refused at its
/// FROM, as the `--platform` flag is; this machine's, and a stage reference (where BuildKit
/// ignores the flag), are built.
#[test]
fn a_base_for_another_platform_is_refused_at_its_from() {
    let host = forge_builder::graph::Platform::host();
    let other = if host.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let src = format!("FROM a AS one\nFROM --platform={other} img\nCOPY --from=one /x /x\n");
    let e = lower(&dockerfile(&src), &opts(&[], None)).unwrap_err();
    assert_eq!(e.span.map(|s| s.start.line), Some(2), "{e}");
    assert!(
        e.to_string().contains(&format!("FROM --platform={other}")),
        "{e}"
    );
    build(&format!("FROM --platform={host} img\nRUN x"), &[], None);
    build(
        &format!("FROM a AS one\nFROM --platform={other} one\n"),
        &[],
        None,
    );
}

#[test]
fn read_only_cache_and_tmpfs_mounts_lower_read_only() {
    let src = "FROM a\nRUN --mount=type=cache,target=/c,ro --mount=type=tmpfs,target=/t,readonly --mount=type=tmpfs,target=/w x";
    let l = build(src, &[], None);
    let ex = execs(&l.graph);
    let kinds: Vec<_> = ex.last().unwrap().mounts.iter().map(|m| &m.kind).collect();
    assert!(
        matches!(kinds[1], MountKind::Cache { readonly: true, .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(kinds[2], MountKind::Tmpfs { readonly: true, .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(
            kinds[3],
            MountKind::Tmpfs {
                readonly: false,
                ..
            }
        ),
        "{kinds:?}"
    );
}

#[test]
fn run_mounts_lower_with_their_options() {
    let src = "FROM a AS deps\nRUN fetch\nFROM a\nWORKDIR /src\nRUN --mount=type=bind,from=deps,source=/out,target=/deps --mount=type=cache,target=.cache,uid=1000 --mount=type=tmpfs,target=/tmp,size=1m --mount=type=secret,id=tok,env=TOKEN --mount=type=ssh --mount=target=ctx,source=sub build";
    let l = build(src, &[], None);
    let ex = execs(&l.graph);
    let run = ex.last().unwrap();
    let kinds: Vec<_> = run
        .mounts
        .iter()
        .map(|m| (m.target.as_str(), &m.kind))
        .collect();
    assert_eq!(kinds.len(), 7);
    assert!(matches!(
        kinds[1],
        (
            "/deps",
            MountKind::Bind {
                readonly: true,
                input: Some(_),
                ..
            }
        )
    ));
    let MountKind::Cache {
        id,
        input,
        source_path,
        ..
    } = kinds[2].1
    else {
        panic!()
    };
    assert_eq!(
        kinds[2].0, "/src/.cache",
        "relative targets are under the workdir"
    );
    assert_eq!(
        id, ".cache",
        "the default id is the target as written, cleaned"
    );
    assert!(input.is_some(), "uid/gid/mode: a prepared directory");
    assert_eq!(source_path, "/cache");
    assert!(matches!(
        kinds[3].1,
        MountKind::Tmpfs {
            size_bytes: 1048576,
            readonly: false
        }
    ));
    assert!(matches!(
        kinds[4].1,
        MountKind::Secret {
            env: Some(_),
            mode: 0o400,
            ..
        }
    ));
    assert!(matches!(
        kinds[5],
        ("/run/buildkit/ssh_agent.0", MountKind::Ssh { .. })
    ));
    let MountKind::Bind {
        input: Some(ctx),
        source_path,
        ..
    } = kinds[6].1
    else {
        panic!()
    };
    assert_eq!(source_path, "/sub");
    assert!(matches!(
        l.graph.vertex(*ctx).op,
        Op::Source(SourceOp::Local { .. })
    ));
}

#[test]
fn context_source_is_named_and_restricted_to_used_paths() {
    let l = build(
        "FROM a\nCOPY go.mod go.sum ./\nCOPY cmd/ /src/cmd/",
        &[],
        None,
    );
    let locals: Vec<_> = l
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(SourceOp::Local {
                name,
                include_patterns,
                ..
            }) => Some((name.clone(), include_patterns.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        locals,
        vec![(
            "context".to_string(),
            vec!["cmd".to_string(), "go.mod".into(), "go.sum".into()]
        )]
    );
    let l = build("FROM a\nCOPY . .", &[], None);
    assert!(l.graph.vertices.iter().any(|v| matches!(&v.op, Op::Source(SourceOp::Local { include_patterns, .. }) if include_patterns.is_empty())));
}

#[test]
fn onbuild_of_a_base_stage_runs_in_the_child() {
    let src = "FROM a AS base\nONBUILD RUN trigger\nRUN base\nFROM base\nRUN child";
    let l = build(src, &[], None);
    let runs: Vec<_> = execs(&l.graph).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(runs, vec!["base", "trigger", "child"]);
    assert!(
        l.graph.outputs[0].image.onbuild.is_empty(),
        "triggers do not carry over"
    );
    let l = build(src, &[], Some("base"));
    assert_eq!(l.graph.outputs[0].image.onbuild, vec!["RUN trigger"]);
}

struct Resolver;

impl ImageResolver for Resolver {
    fn resolve(&self, reference: &str, _: &Platform, _: Span) -> Option<ImageConfig> {
        (reference == "onbuild-base").then(|| ImageConfig {
            env: vec!["PATH=/custom/bin".into(), "LANG=C".into()],
            working_dir: "/app".into(),
            user: "app".into(),
            onbuild: vec![
                "COPY --from=assets /a /a".into(),
                "RUN echo from-onbuild".into(),
            ],
            ..ImageConfig::default()
        })
    }
}

#[test]
fn onbuild_of_a_base_image_is_recorded_and_run() {
    let o = LowerOptions {
        resolver: Some(&Resolver),
        ..opts(&[], None)
    };
    let l = lower(
        &dockerfile("FROM busybox AS assets\nFROM onbuild-base\nRUN mine"),
        &o,
    )
    .unwrap();
    let ex = execs(&l.graph);
    let runs: Vec<_> = ex.iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(runs, vec!["echo from-onbuild", "mine"]);
    assert_eq!(ex[1].cwd, "/app");
    assert_eq!(ex[1].user, "app");
    assert_eq!(env_of(ex[1], "PATH").as_deref(), Some("/custom/bin"));
    assert!(
        images(&l.graph).contains(&"busybox".to_string()),
        "the trigger's COPY --from pulls in the stage"
    );
}

#[test]
fn image_config_from_metadata_instructions() {
    let src = r#"FROM a
LABEL org.opencontainers.image.title=forge
EXPOSE 80 53/udp
VOLUME /data
USER 1000:1000
STOPSIGNAL SIGINT
SHELL ["/bin/bash", "-c"]
CMD serve
ENTRYPOINT ["/entry"]
HEALTHCHECK --interval=5s CMD check
MAINTAINER someone"#;
    let l = build(src, &[], None);
    let img = &l.graph.outputs[0].image;
    assert_eq!(img.labels["org.opencontainers.image.title"], "forge");
    assert!(img.exposed_ports.contains("80/tcp") && img.exposed_ports.contains("53/udp"));
    assert!(img.volumes.contains("/data"));
    assert_eq!(img.user, "1000:1000");
    assert_eq!(img.stop_signal, "SIGINT");
    assert_eq!(img.shell, vec!["/bin/bash", "-c"]);
    assert_eq!(
        img.cmd.as_deref(),
        Some(&["/bin/bash".to_string(), "-c".into(), "serve".into()][..])
    );
    assert_eq!(img.entrypoint.as_deref(), Some(&["/entry".to_string()][..]));
    assert_eq!(img.healthcheck.as_ref().unwrap().interval_ns, 5_000_000_000);
    assert_eq!(img.author, "someone");
    assert_eq!(img.os, "linux");
    let created: Vec<_> = img.history.iter().map(|h| h.created_by.as_str()).collect();
    assert!(created.contains(&"EXPOSE [53/udp 80/tcp]"), "{created:?}");
    assert!(
        created.contains(&r#"CMD ["/bin/bash" "-c" "serve"]"#),
        "{created:?}"
    );
    // ENTRYPOINT after CMD in the same stage keeps CMD; in a child stage it resets it.
    let l = build("FROM a AS p\nCMD x\nFROM p\nENTRYPOINT [\"/e\"]", &[], None);
    assert_eq!(l.graph.outputs[0].image.cmd, None);
}

#[test]
fn run_history_lists_build_args() {
    let l = build("FROM a\nARG V=1\nRUN make", &[], None);
    let h: Vec<_> = l.graph.outputs[0]
        .image
        .history
        .iter()
        .map(|h| h.created_by.clone())
        .collect();
    assert_eq!(h, vec!["ARG V=1", "RUN |1 V=1 /bin/sh -c make # buildkit"]);
    assert!(!l.graph.outputs[0].image.history[1].empty_layer);
}

#[test]
fn invalid_values_found_after_expansion() {
    for (src, want) in [
        ("FROM a\nSTOPSIGNAL NOPE", "invalid signal"),
        ("FROM a\nEXPOSE 99999", "invalid containerPort"),
        ("FROM a\nCOPY --chmod=999 a b", "invalid chmod"),
        ("FROM a\nCOPY --checksum=x a b", "unknown flag"),
        (
            "FROM a\nADD --checksum=sha256:0 a b",
            "checksum requires HTTP(S) or Git sources",
        ),
        (
            "FROM a\nCOPY https://x/y /y",
            "source can't be a URL for COPY",
        ),
        (
            "FROM a\nRUN --mount=type=cache,target=/ x",
            "invalid mount target",
        ),
        (
            "FROM a\nRUN --mount=type=ssh,source=x x",
            "ssh does not support source",
        ),
        ("FROM a\nENV X=${Y:?unset}", "unset"),
    ] {
        let e = lower(&dockerfile(src), &opts(&[], None)).expect_err(src);
        assert!(e.to_string().contains(want), "{src}: {e}");
        assert_eq!(e.span.map(|s| s.start.line), Some(2), "{src}");
    }
}

#[test]
fn add_sources() {
    let l = build(
        "FROM a\nADD https://example.com/pkg/tool.tar.gz /opt/\nADD --keep-git-dir https://github.com/x/y.git#v1 /y\nADD local.tar /",
        &[],
        None,
    );
    let sources: Vec<_> = l
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| matches!(s, SourceOp::Http { filename, .. } if filename == "tool.tar.gz"))
    );
    assert!(sources.iter().any(
        |s| matches!(s, SourceOp::Git { reference, keep_git_dir: true, .. } if reference == "v1")
    ));
    assert!(sources.iter().any(|s| matches!(s, SourceOp::Local { include_patterns, .. } if include_patterns == &vec!["local.tar".to_string()])));
}

#[test]
fn copy_link_is_a_merge() {
    let l = build("FROM a\nCOPY --link x /x", &[], None);
    let last = l.graph.vertex(l.graph.outputs[0].root);
    let Op::Merge(m) = &last.op else {
        panic!("{:?}", last.op)
    };
    assert_eq!(m.inputs.len(), 2);
}

#[test]
fn heredoc_with_exec_form_is_refused() {
    use forge_builder::frontend::dockerfile::ast::Args;
    let mut df = dockerfile("FROM a\nRUN <<EOF\nx\nEOF\n");
    df.children[1].args = Args::Json(vec!["sh".into(), "-c".into()]);
    let e = lower(&df, &opts(&[], None)).unwrap_err();
    assert!(matches!(*e.kind, LowerErrorKind::InvalidRun(_)), "{e}");
}

#[test]
fn heredoc_runs_as_the_shell_command_or_a_script() {
    let l = build(
        "FROM a\nRUN <<EOF\necho one\necho two\nEOF\nRUN cat <<EOF > /f\nbody\nEOF\n",
        &[],
        None,
    );
    let ex = execs(&l.graph);
    assert_eq!(ex[0].args, vec!["/bin/sh", "-c", "echo one\necho two\n"]);
    assert_eq!(
        ex[1].args,
        vec!["/bin/sh", "-c", "cat <<EOF > /f\nbody\nEOF"]
    );
}

/// BuildKit runs a heredoc's body as the step only when the marker is alone on the line: with a
/// command after it (`RUN <<EOT sh -c '...'`, `RUN <<EOT bash`), the body is that command's input.
#[test]
fn a_heredoc_marker_followed_by_a_command_is_that_commands_input() {
    let l = build(
        "FROM a\nRUN <<EOT sh -c 'cat > /h'\npiped in\nEOT\nRUN <<-EOT bash\n\techo hi\nEOT\n",
        &[],
        None,
    );
    let ex = execs(&l.graph);
    assert_eq!(
        ex[0].args,
        vec!["/bin/sh", "-c", "<<EOT sh -c 'cat > /h'\npiped in\nEOT"]
    );
    // The body comes chomped (the shell would strip the tabs of `<<-` anyway).
    assert_eq!(
        ex[1].args,
        vec!["/bin/sh", "-c", "<<-EOT bash\necho hi\nEOT"]
    );
}

#[test]
fn each_step_carries_its_stage_as_data() {
    // A stage may be called `internal`: the stage is a field, not read back from the description.
    let l = build(
        "FROM alpine AS internal\nWORKDIR /src\nRUN make\n\
         FROM scratch\nCOPY --link --from=internal /src /out\nCOPY . /ctx\n",
        &[],
        None,
    );
    let stages: Vec<(String, Option<&str>)> = l
        .graph
        .vertices
        .iter()
        .map(|v| (v.description.clone(), v.stage.as_deref()))
        .collect();
    let stage_of = |prefix: &str| -> Vec<Option<&str>> {
        stages
            .iter()
            .filter(|(d, _)| d.starts_with(prefix))
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(stage_of("[internal] load image"), vec![None], "{stages:?}");
    assert_eq!(
        stage_of("[internal] load build context"),
        vec![None],
        "{stages:?}"
    );
    assert_eq!(
        stage_of("[internal] WORKDIR"),
        vec![Some("internal")],
        "{stages:?}"
    );
    assert_eq!(
        stage_of("[internal] RUN make"),
        vec![Some("internal")],
        "{stages:?}"
    );
    // The --link copy is two vertices (the layer and its merge), both the stage's.
    assert_eq!(
        stage_of("[stage-1] COPY --link"),
        vec![Some("stage-1"), Some("stage-1")],
        "{stages:?}"
    );
    assert_eq!(stage_of("[stage-1] COPY . /ctx"), vec![Some("stage-1")]);
}

/// A variable doubled again and again (`ENV A=$A$A` forty times would be a terabyte) is refused at
/// the line whose expansion passes the limit, instead of growing until memory runs out (found by a
/// hostile-input sweep: forge aborted at 3.5 GB).
#[test]
fn a_doubling_variable_is_refused_where_it_passes_the_limit() {
    let mut src = String::from("FROM a\nENV A=0123456789abcdef\n");
    for _ in 0..40 {
        src.push_str("ENV A=$A$A\n");
    }
    let e = lower(&dockerfile(&src), &opts(&[], None)).unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
    // 16 bytes doubled past 4 MiB: the 19th doubling, on line 21.
    assert_eq!(e.span.unwrap().start.line, 21, "{e}");
}

/// A NUL byte in a RUN command is refused at its line: no process argument can carry one, and the
/// runner dropped it, running another command than the one written (found by a hostile-input
/// sweep: `RUN echo a\0b > /x` wrote `ab`).
#[test]
fn a_nul_byte_in_a_run_command_is_refused_at_its_line() {
    let e = lower(
        &dockerfile("FROM a\nRUN echo a\0b > /x\n"),
        &opts(&[], None),
    )
    .unwrap_err();
    assert_eq!(*e.kind, LowerErrorKind::NulInRun, "{e}");
    assert_eq!(e.span.unwrap().start.line, 2);
}
