//! Typed instruction parsing: every instruction, every flag, and the errors BuildKit gives, with
//! their locations.

mod instructions_ast;

use forge_builder::frontend::dockerfile::ast::Args;
use forge_builder::frontend::dockerfile::instructions::{
    self, ErrorKind, Instruction, MountType, parse_chmod, parse_mount, parse_node, parse_port,
    ram_in_bytes,
};
use forge_builder::graph::{CacheSharing, Chmod, NetworkMode, SecurityMode};
use instructions_ast::{dockerfile, node};

fn typed(text: &str) -> Instruction {
    parse_node(&node(text))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .instruction
}

fn error(text: &str) -> (ErrorKind, usize, Option<String>) {
    let e = parse_node(&node(text)).expect_err(text);
    (*e.kind, e.span.start.column, e.hint)
}

#[test]
fn from_with_platform_and_case_insensitive_as() {
    let Instruction::From(f) = typed("FROM --platform=$BUILDPLATFORM golang:1.22 As Builder")
    else {
        panic!()
    };
    assert_eq!(f.base, "golang:1.22");
    assert_eq!(f.name.as_deref(), Some("builder"));
    assert_eq!(f.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(error("FROM a b").0, ErrorKind::FromArguments);
    assert_eq!(
        error("FROM a AS 1st").0,
        ErrorKind::InvalidStageName("1st".into())
    );
    assert_eq!(
        error("FROM a AS my$stage").0,
        ErrorKind::InvalidStageName("my$stage".into())
    );
}

#[test]
fn run_flags_are_typed_and_validated() {
    let Instruction::Run(r) = typed(
        "RUN --mount=type=cache,target=/root/.cache --network=none --security=insecure make all",
    ) else {
        panic!()
    };
    assert_eq!(r.network, NetworkMode::None);
    assert_eq!(r.security, SecurityMode::Insecure);
    assert_eq!(r.mounts.len(), 1);
    assert_eq!(r.mounts[0].text, "type=cache,target=/root/.cache");
    assert_eq!(r.command.args, vec!["make all"]);
    assert!(r.command.prepend_shell);

    let Instruction::Run(r) = typed(r#"RUN ["echo", "a b"]"#) else {
        panic!()
    };
    assert_eq!(r.command.args, vec!["echo", "a b"]);
    assert!(!r.command.prepend_shell);
    assert_eq!(r.network, NetworkMode::Default);
    assert_eq!(r.security, SecurityMode::Sandbox);

    let (kind, col, hint) = error("RUN --network=hots true");
    assert!(matches!(kind, ErrorKind::InvalidFlagValue { ref flag, .. } if flag == "network"));
    assert_eq!(col, 5, "points at the flag");
    assert_eq!(hint.as_deref(), Some("did you mean host?"));
    assert!(matches!(
        error("RUN --security=root true").0,
        ErrorKind::InvalidFlagValue { .. }
    ));
    assert_eq!(
        error("RUN --mount=type=bind,from=$X,target=/x true").0,
        ErrorKind::MountFromVariable
    );
}

#[test]
fn unknown_flags_name_the_flag_and_suggest() {
    let (kind, col, hint) = error("COPY --chmown=1 a b");
    assert_eq!(
        kind,
        ErrorKind::UnknownFlag {
            instruction: "COPY".into(),
            flag: "chmown".into()
        }
    );
    assert_eq!(col, 6);
    assert!(hint.is_some_and(|h| h.contains("--chown") || h.contains("--chmod")));
    assert_eq!(
        error("COPY --from=a --from=b x y").0,
        ErrorKind::DuplicateFlag("from".into())
    );
    assert_eq!(
        error("COPY --from a b").0,
        ErrorKind::MissingFlagValue("from".into())
    );
    assert_eq!(
        error("COPY --link=maybe a b").0,
        ErrorKind::NotABool {
            flag: "link".into(),
            value: "maybe".into()
        }
    );
    assert_eq!(
        error("COPY --link= a b").0,
        ErrorKind::MissingFlagValue("link".into())
    );
    assert!(matches!(
        error("ENV --x=1 a=b").0,
        ErrorKind::UnknownFlag { .. }
    ));
    assert!(matches!(
        error("WORKDIR --x=1 /a").0,
        ErrorKind::UnknownFlag { .. }
    ));
}

#[test]
fn copy_and_add_flags() {
    let Instruction::Copy(c) = typed(
        "COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=.git a/./b c /dst/",
    ) else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!((c.chown.as_str(), c.chmod.as_str()), ("1:2", "755"));
    assert!(c.link && c.parents);
    assert_eq!(c.exclude, vec!["*.md", ".git"]);
    assert_eq!(c.paths.sources, vec!["a/./b", "c"]);
    assert_eq!(c.paths.dest, "/dst/");

    let Instruction::Add(a) = typed(
        "ADD --keep-git-dir=true --checksum=sha256:abc --unpack=false --link=false https://x/y.tgz /",
    ) else {
        panic!()
    };
    assert_eq!(a.keep_git_dir, Some(true));
    assert_eq!(a.unpack, Some(false));
    assert!(!a.link);
    assert_eq!(a.checksum, "sha256:abc");
    assert!(matches!(
        error("ADD --from=x a b").0,
        ErrorKind::UnknownFlag { .. }
    ));
    assert!(matches!(
        error("COPY --checksum=x a b").0,
        ErrorKind::UnknownFlag { .. }
    ));
    assert_eq!(error("COPY onlyone").0, ErrorKind::NoDestination("COPY"));
    assert_eq!(error("ADD onlyone").0, ErrorKind::NoDestination("ADD"));
}

#[test]
fn copy_heredoc_sources() {
    let n = node("COPY <<EOF <<'RAW' /etc/\nhello $X\nEOF\nkeep $X\nRAW");
    let Instruction::Copy(c) = parse_node(&n).unwrap().instruction else {
        panic!()
    };
    assert!(c.paths.sources.is_empty());
    assert_eq!(c.paths.contents.len(), 2);
    assert_eq!(c.paths.contents[0].path, "EOF");
    assert!(c.paths.contents[0].expand);
    assert_eq!(c.paths.contents[1].data, "keep $X\n");
    assert!(!c.paths.contents[1].expand);
    let n = node("COPY a <<EOF\nx\nEOF");
    assert_eq!(
        *parse_node(&n).unwrap_err().kind,
        ErrorKind::HeredocDestination("COPY")
    );
}

#[test]
fn env_label_legacy_and_errors() {
    let Instruction::Env(e) = typed("ENV A=1 B=two") else {
        panic!()
    };
    assert_eq!(e.len(), 2);
    assert_eq!((e[1].key.as_str(), e[1].value.as_str()), ("B", "two"));
    let Instruction::Env(e) = typed("ENV A legacy value") else {
        panic!()
    };
    assert!(e[0].no_delim);
    assert_eq!(e[0].value, "legacy value");
    let Instruction::Label(l) = typed("LABEL a=b") else {
        panic!()
    };
    assert_eq!(l[0].key, "a");
    assert_eq!(error("ENV").0, ErrorKind::AtLeastOneArgument("ENV"));
    assert_eq!(error("LABEL =x").0, ErrorKind::BlankName("LABEL"));
}

#[test]
fn cmd_entrypoint_shell_forms() {
    let Instruction::Cmd(c) = typed("CMD echo hi") else {
        panic!()
    };
    assert!(c.prepend_shell);
    let Instruction::Entrypoint(c) = typed(r#"ENTRYPOINT ["/bin/app", "--x"]"#) else {
        panic!()
    };
    assert_eq!(c.args, vec!["/bin/app", "--x"]);
    assert!(!c.prepend_shell);
    let Instruction::Shell(s) = typed(r#"SHELL ["/bin/bash", "-eo", "pipefail", "-c"]"#) else {
        panic!()
    };
    assert_eq!(s.len(), 4);
    // The parser refuses this already; the typed layer checks it too for hand-built trees.
    let mut n = node(r#"SHELL ["/bin/sh"]"#);
    n.args = Args::Values(vec!["/bin/bash -c".into()]);
    let e = parse_node(&n).unwrap_err();
    let (kind, hint) = (*e.kind, e.hint);
    assert_eq!(kind, ErrorKind::NotJson("SHELL"));
    assert!(hint.is_some());
}

#[test]
fn single_and_multi_argument_instructions() {
    assert_eq!(typed("USER app:app"), Instruction::User("app:app".into()));
    assert_eq!(typed("WORKDIR /src"), Instruction::Workdir("/src".into()));
    assert_eq!(
        typed("STOPSIGNAL SIGTERM"),
        Instruction::StopSignal("SIGTERM".into())
    );
    assert_eq!(typed("MAINTAINER me"), Instruction::Maintainer("me".into()));
    assert_eq!(
        typed("EXPOSE 8080/udp 80"),
        Instruction::Expose(vec!["80".into(), "8080/udp".into()]),
        "sorted as BuildKit does"
    );
    assert_eq!(
        typed(r#"VOLUME ["/data", "/logs"]"#),
        Instruction::Volume(vec!["/data".into(), "/logs".into()])
    );
    // USER, WORKDIR... take the rest of the line as one value, as in BuildKit.
    assert_eq!(typed("USER a b"), Instruction::User("a b".into()));
    assert_eq!(error("WORKDIR").0, ErrorKind::ExactlyOneArgument("WORKDIR"));
    assert_eq!(
        error("STOPSIGNAL").0,
        ErrorKind::ExactlyOneArgument("STOPSIGNAL")
    );
    assert_eq!(
        error("MAINTAINER").0,
        ErrorKind::ExactlyOneArgument("MAINTAINER")
    );
    assert_eq!(error("EXPOSE").0, ErrorKind::AtLeastOneArgument("EXPOSE"));
    assert_eq!(error(r#"VOLUME [" "]"#).0, ErrorKind::EmptyVolume);
}

#[test]
fn arg_several_per_line_with_defaults() {
    let Instruction::Arg(a) = typed("ARG A B=2 C=") else {
        panic!()
    };
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].default, None);
    assert_eq!(a[1].default.as_deref(), Some("2"));
    assert_eq!(a[2].default.as_deref(), Some(""));
    assert_eq!(error("ARG =x").0, ErrorKind::BlankName("ARG"));
    assert_eq!(error("ARG").0, ErrorKind::AtLeastOneArgument("ARG"));
}

#[test]
fn onbuild_triggers() {
    let Instruction::Onbuild(o) = typed("ONBUILD COPY . /app") else {
        panic!()
    };
    assert_eq!(o.expression, "COPY . /app");
    assert!(matches!(o.trigger.instruction, Instruction::Copy(_)));
    // The parser refuses ONBUILD ONBUILD already; the typed layer does too for hand-built trees.
    let mut n = node("ONBUILD RUN x");
    if let Args::Sub(sub) = &mut n.args {
        sub.instruction = "onbuild".into();
    }
    assert_eq!(*parse_node(&n).unwrap_err().kind, ErrorKind::OnbuildChain);
    assert_eq!(
        error("ONBUILD FROM x").0,
        ErrorKind::OnbuildTrigger("FROM".into())
    );
    assert_eq!(
        error("ONBUILD MAINTAINER x").0,
        ErrorKind::OnbuildTrigger("MAINTAINER".into())
    );
    assert!(matches!(
        error("ONBUILD COPY --bad=1 a b").0,
        ErrorKind::UnknownFlag { .. }
    ));
}

#[test]
fn healthcheck_forms_and_flags() {
    let Instruction::Healthcheck(h) = typed(
        "HEALTHCHECK --interval=5s --timeout=1m30s --start-period=500ms --start-interval=2s --retries=3 CMD curl -f http://localhost/",
    ) else {
        panic!()
    };
    assert_eq!(h.test, vec!["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(h.interval_ns, 5_000_000_000);
    assert_eq!(h.timeout_ns, 90_000_000_000);
    assert_eq!(h.start_period_ns, 500_000_000);
    assert_eq!(h.start_interval_ns, 2_000_000_000);
    assert_eq!(h.retries, 3);
    let Instruction::Healthcheck(h) = typed(r#"HEALTHCHECK CMD ["/bin/check", "-q"]"#) else {
        panic!()
    };
    assert_eq!(h.test, vec!["CMD", "/bin/check", "-q"]);
    let Instruction::Healthcheck(h) = typed("HEALTHCHECK NONE") else {
        panic!()
    };
    assert_eq!(h.test, vec!["NONE"]);
    assert_eq!(
        error("HEALTHCHECK NONE x").0,
        ErrorKind::HealthcheckNoneArguments
    );
    assert_eq!(
        error("HEALTHCHECK CMD").0,
        ErrorKind::HealthcheckMissingCommand
    );
    assert_eq!(
        error("HEALTHCHECK CONNECT TCP 7000").0,
        ErrorKind::HealthcheckType("CONNECT".into())
    );
    assert_eq!(
        error("HEALTHCHECK --interval=10us CMD x").0,
        ErrorKind::IntervalTooShort("interval".into())
    );
    assert_eq!(
        error("HEALTHCHECK --retries=-1 CMD x").0,
        ErrorKind::NegativeRetries(-1)
    );
    assert!(matches!(
        error("HEALTHCHECK --timeout=soon CMD x").0,
        ErrorKind::InvalidFlagValue { .. }
    ));
    assert!(matches!(
        error("HEALTHCHECK --timeot=1s CMD x").0,
        ErrorKind::UnknownFlag { .. }
    ));
}

#[test]
fn unknown_instruction_suggests_the_nearest() {
    // The parser reports these first; the typed layer does too for trees built by other frontends.
    let unknown = |kw: &str| {
        let mut n = node("RUN make");
        n.instruction = kw.to_string();
        parse_node(&n).unwrap_err()
    };
    let e = unknown("runn");
    assert_eq!(*e.kind, ErrorKind::UnknownInstruction("RUNN".into()));
    assert_eq!(e.span.start.column, 1);
    assert_eq!(e.hint.as_deref(), Some("did you mean RUN?"));
    assert_eq!(unknown("coppy").hint.as_deref(), Some("did you mean COPY?"));
}

#[test]
fn instructions_before_from_are_refused_except_arg() {
    let df = dockerfile("ARG V=1\nRUN x\nFROM a");
    let e = instructions::parse_dockerfile(&df).unwrap_err();
    assert_eq!(*e.kind, ErrorKind::NoStage("RUN".into()));
    assert_eq!(e.span.start.line, 2);
    let df = dockerfile("ARG V=1\nFROM a\nARG W\nFROM b AS x\nRUN y");
    let t = instructions::parse_dockerfile(&df).unwrap();
    assert_eq!(t.meta_args.len(), 1);
    assert_eq!(t.stages.len(), 2);
    assert_eq!(t.stages[0].commands.len(), 1);
    assert_eq!(t.stages[1].from.name.as_deref(), Some("x"));
}

fn mount(text: &str) -> Result<instructions::MountSpec, String> {
    parse_mount(text, &mut |w| Ok(w.replace("$T", "/t"))).map_err(|(m, _)| m)
}

#[test]
fn mounts_of_every_type() {
    let m = mount("type=bind,source=src,target=/src,rw").unwrap();
    assert_eq!(m.kind, MountType::Bind);
    assert!(!m.readonly);
    let m = mount("target=/x").unwrap();
    assert!(m.readonly, "bind mounts are read-only by default");
    let m = mount("type=cache,target=$T,id=go,sharing=locked,uid=1000,gid=1000,mode=0700").unwrap();
    assert_eq!(m.kind, MountType::Cache);
    assert_eq!(m.target, "/t", "values are expanded");
    assert_eq!(m.sharing, Some(CacheSharing::Locked));
    assert_eq!(
        (m.uid, m.gid, m.mode),
        (Some(1000), Some(1000), Some(0o700))
    );
    assert!(!m.readonly);
    let m = mount("type=tmpfs,target=/tmp,size=64m").unwrap();
    assert_eq!(m.size_bytes, 64 << 20);
    let m = mount("type=secret,id=npmrc,target=/root/.npmrc,required").unwrap();
    assert!(m.required && m.readonly);
    let m = mount("type=secret,id=tok,env=TOKEN").unwrap();
    assert_eq!(m.env.as_deref(), Some("TOKEN"));
    let m = mount("type=ssh,id=gh,required=true,mode=0600").unwrap();
    assert_eq!(m.kind, MountType::Ssh);
    assert!(m.required);
    let m = mount(r#""type=bind","source=a,b",target=/q"#).unwrap();
    assert_eq!(m.source, "a,b", "csv quoting");
}

#[test]
fn mount_errors() {
    let cases = [
        ("type=nfs,target=/x", "unsupported mount type"),
        ("type=bind,target=/x,mode=0700", "mode not allowed"),
        ("type=tmpfs,target=/x,uid=1", "uid not allowed"),
        ("type=bind,target=/x,required", "unexpected key 'required'"),
        ("type=cache,target=/x,size=1m", "unexpected key 'size'"),
        (
            "type=cache,target=/x,sharing=everyone",
            "unsupported sharing value",
        ),
        (
            "type=bind,target=/x,sharing=shared",
            "invalid cache sharing",
        ),
        (
            "type=secret,from=x,id=a",
            "secret mount should not have a from",
        ),
        ("type=secret", "one of source, target required"),
        ("type=secret,source=a,id=b", "both source and id"),
        ("type=cache,target=/x,bogus=1", "unexpected key 'bogus'"),
        ("type=cache,target=/x,uid=abc", "invalid value abc for uid"),
        ("type=cache,target=/x,ro=maybe", "invalid value for ro"),
        ("type=bind,target", "must be a key=value pair"),
        ("type=tmpfs,target=/x,size=lots", "invalid value for size"),
    ];
    for (text, want) in cases {
        let e = mount(text).expect_err(text);
        assert!(e.contains(want), "{text}: {e} should contain {want}");
    }
    let (_, hint) = parse_mount("type=cahce,target=/x", &mut |w| Ok(w.to_string())).unwrap_err();
    assert_eq!(hint.as_deref(), Some("did you mean cache?"));
}

#[test]
fn value_parsers() {
    assert_eq!(ram_in_bytes("1g"), Some(1 << 30));
    assert_eq!(ram_in_bytes("512KiB"), Some(512 << 10));
    assert_eq!(ram_in_bytes("100"), Some(100));
    assert_eq!(ram_in_bytes("1x"), None);
    assert_eq!(parse_chmod("755"), Ok(Chmod::Octal(0o755)));
    assert_eq!(
        parse_chmod("u+x,g-w"),
        Ok(Chmod::Symbolic("u+x,g-w".into()))
    );
    assert!(parse_chmod("8888").is_err());
    assert!(parse_chmod("17777").is_err());
    assert!(parse_chmod("u+q").is_err());
    assert_eq!(parse_port("80").unwrap(), vec!["80/tcp"]);
    assert_eq!(parse_port("53/UDP").unwrap(), vec!["53/udp"]);
    assert_eq!(parse_port("8000-8002/tcp").unwrap().len(), 3);
    assert!(parse_port("99999").is_err());
    assert!(parse_port("80/icmp").is_err());
    assert!(instructions::valid_signal("SIGKILL"));
    assert!(instructions::valid_signal("term"));
    assert!(instructions::valid_signal("9"));
    assert!(instructions::valid_signal("SIGRTMIN+3"));
    assert!(!instructions::valid_signal("SIGNOPE"));
    assert_eq!(
        instructions::parse_go_duration("1h2m3s"),
        Ok(3_723_000_000_000)
    );
    assert!(instructions::parse_go_duration("5").is_err());
}
