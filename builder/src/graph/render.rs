//! Renderings of a graph for people and tools: text (`forge graph`), JSON and Graphviz dot. Output is
//! deterministic so that it can be snapshot-tested.

use std::fmt::Write;

use super::{CacheSharing, Chmod, FileAction, Graph, MountKind, NodeRef, Op, SourceOp};

fn input(r: Option<NodeRef>) -> String {
    r.map_or_else(|| "scratch".to_string(), |r| format!("#{}", r.0))
}

fn q(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_default()
}

/// One-line summary of an op (without its mounts' or actions' details).
fn summary(op: &Op) -> String {
    match op {
        Op::Source(SourceOp::Scratch) => "source scratch".into(),
        Op::Source(SourceOp::Image {
            reference,
            platform,
        }) => format!("source image {reference} ({platform})"),
        Op::Source(SourceOp::Local {
            name,
            include_patterns,
            exclude_patterns,
        }) => {
            let mut s = format!("source local {name}");
            if !include_patterns.is_empty() {
                let _ = write!(s, " include={}", q(include_patterns));
            }
            if !exclude_patterns.is_empty() {
                let _ = write!(s, " exclude={}", q(exclude_patterns));
            }
            s
        }
        Op::Source(SourceOp::Http {
            url,
            filename,
            checksum,
        }) => {
            let mut s = format!("source http {url} filename={filename}");
            if let Some(c) = checksum {
                let _ = write!(s, " checksum={c}");
            }
            s
        }
        Op::Source(SourceOp::Git {
            remote,
            reference,
            subdir,
            keep_git_dir,
            checksum,
        }) => {
            let mut s = format!("source git {remote}");
            if !reference.is_empty() {
                let _ = write!(s, " ref={reference}");
            }
            if !subdir.is_empty() {
                let _ = write!(s, " subdir={subdir}");
            }
            if *keep_git_dir {
                s.push_str(" keep-git-dir");
            }
            if let Some(c) = checksum {
                let _ = write!(s, " checksum={c}");
            }
            s
        }
        Op::Exec(x) => {
            let mut s = format!(
                "exec {} cwd={} network={}",
                q(&x.args),
                x.cwd,
                serde_json::to_value(x.network)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            );
            if !x.user.is_empty() {
                let _ = write!(s, " user={}", x.user);
            }
            if x.security == super::SecurityMode::Insecure {
                s.push_str(" security=insecure");
            }
            if let Some(t) = &x.test {
                let _ = write!(s, " test artifacts={}", q(&t.artifacts));
            }
            s
        }
        Op::File(f) => format!("file on {} ({} actions)", input(f.base), f.actions.len()),
        Op::Merge(m) => format!(
            "merge {}",
            m.inputs
                .iter()
                .map(|i| input(*i))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn details(op: &Op) -> Vec<String> {
    let mut out = Vec::new();
    match op {
        Op::Exec(x) => {
            if !x.env.is_empty() {
                out.push(format!("env {}", q(&x.env)));
            }
            for m in &x.mounts {
                let line = match &m.kind {
                    MountKind::Bind {
                        input: i,
                        source_path,
                        readonly,
                        output,
                    } => format!(
                        "mount {} bind from {}:{}{}{}",
                        m.target,
                        input(*i),
                        source_path,
                        if *readonly { " ro" } else { "" },
                        if *output { " (output)" } else { "" }
                    ),
                    MountKind::Cache {
                        id,
                        sharing,
                        input: i,
                        source_path,
                        readonly,
                    } => format!(
                        "mount {} cache id={} sharing={} from {}:{}{}",
                        m.target,
                        id,
                        match sharing {
                            CacheSharing::Shared => "shared",
                            CacheSharing::Private => "private",
                            CacheSharing::Locked => "locked",
                        },
                        input(*i),
                        source_path,
                        if *readonly { " ro" } else { "" }
                    ),
                    MountKind::Tmpfs {
                        size_bytes,
                        readonly,
                    } => format!(
                        "mount {} tmpfs size={}{}",
                        m.target,
                        size_bytes,
                        if *readonly { " ro" } else { "" }
                    ),
                    MountKind::Secret {
                        id,
                        env,
                        required,
                        uid,
                        gid,
                        mode,
                    } => format!(
                        "mount {} secret id={}{}{} uid={} gid={} mode={:o}",
                        m.target,
                        id,
                        env.as_ref()
                            .map(|e| format!(" env={e}"))
                            .unwrap_or_default(),
                        if *required { " required" } else { "" },
                        uid,
                        gid,
                        mode
                    ),
                    MountKind::Ssh {
                        id,
                        required,
                        uid,
                        gid,
                        mode,
                    } => format!(
                        "mount {} ssh id={}{} uid={} gid={} mode={:o}",
                        m.target,
                        id,
                        if *required { " required" } else { "" },
                        uid,
                        gid,
                        mode
                    ),
                };
                out.push(line);
            }
        }
        Op::File(f) => {
            for a in &f.actions {
                out.push(match a {
                    FileAction::Copy {
                        from,
                        src,
                        dest,
                        options,
                    } => {
                        let mut s = format!("copy {}:{} -> {}", input(*from), src, dest);
                        if let Some(o) = &options.owner {
                            let _ = write!(s, " owner={o}");
                        }
                        match &options.mode {
                            Some(Chmod::Octal(m)) => {
                                let _ = write!(s, " mode={m:o}");
                            }
                            Some(Chmod::Symbolic(m)) => {
                                let _ = write!(s, " mode={m}");
                            }
                            None => {}
                        }
                        if !options.include_patterns.is_empty() {
                            let _ = write!(s, " include={}", q(&options.include_patterns));
                        }
                        if !options.exclude_patterns.is_empty() {
                            let _ = write!(s, " exclude={}", q(&options.exclude_patterns));
                        }
                        if options.attempt_unpack {
                            s.push_str(" unpack");
                        }
                        s
                    }
                    FileAction::Mkdir {
                        path,
                        mode,
                        make_parents,
                        owner,
                    } => format!(
                        "mkdir {} mode={:o}{}{}",
                        path,
                        mode,
                        if *make_parents { " parents" } else { "" },
                        owner
                            .as_ref()
                            .map(|o| format!(" owner={o}"))
                            .unwrap_or_default()
                    ),
                    FileAction::Mkfile {
                        path, mode, data, ..
                    } => format!("mkfile {} mode={:o} ({} bytes)", path, mode, data.len()),
                    FileAction::Rm { path, .. } => format!("rm {path}"),
                    FileAction::Symlink { target, link } => format!("symlink {link} -> {target}"),
                });
            }
        }
        _ => {}
    }
    out
}

pub(super) fn text(g: &Graph) -> String {
    let mut s = String::new();
    for (i, v) in g.vertices.iter().enumerate() {
        let _ = writeln!(s, "#{i} {}", v.id);
        if !v.description.is_empty() {
            let _ = writeln!(s, "    {}", v.description);
        }
        let _ = writeln!(s, "    {}", summary(&v.op));
        for d in details(&v.op) {
            let _ = writeln!(s, "      {d}");
        }
    }
    for o in &g.outputs {
        let _ = writeln!(s, "output {} = #{}", o.name, o.root.0);
        let img = &o.image;
        let _ = writeln!(s, "    platform {}/{}", img.os, img.architecture);
        if !img.env.is_empty() {
            let _ = writeln!(s, "    env {}", q(&img.env));
        }
        if !img.user.is_empty() {
            let _ = writeln!(s, "    user {}", img.user);
        }
        if !img.working_dir.is_empty() {
            let _ = writeln!(s, "    workdir {}", img.working_dir);
        }
        if let Some(e) = &img.entrypoint {
            let _ = writeln!(s, "    entrypoint {}", q(e));
        }
        if let Some(c) = &img.cmd {
            let _ = writeln!(s, "    cmd {}", q(c));
        }
        for (k, v) in &img.labels {
            let _ = writeln!(s, "    label {k}={v}");
        }
        if !img.exposed_ports.is_empty() {
            let ports: Vec<&str> = img.exposed_ports.iter().map(String::as_str).collect();
            let _ = writeln!(s, "    expose {}", ports.join(" "));
        }
        if !img.volumes.is_empty() {
            let vols: Vec<&str> = img.volumes.iter().map(String::as_str).collect();
            let _ = writeln!(s, "    volumes {}", vols.join(" "));
        }
        if !img.stop_signal.is_empty() {
            let _ = writeln!(s, "    stopsignal {}", img.stop_signal);
        }
        if let Some(h) = &img.healthcheck {
            let _ = writeln!(s, "    healthcheck {}", q(&h.test));
        }
        if !img.shell.is_empty() {
            let _ = writeln!(s, "    shell {}", q(&img.shell));
        }
        for t in &img.onbuild {
            let _ = writeln!(s, "    onbuild {t}");
        }
        for h in &img.history {
            let _ = writeln!(
                s,
                "    history {}{}",
                h.created_by,
                if h.empty_layer { "" } else { " (layer)" }
            );
        }
        for gate in &o.gates {
            let _ = writeln!(s, "    gate #{}", gate.0);
        }
    }
    s
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) fn dot(g: &Graph) -> String {
    let mut s = String::from("digraph forge {\n  node [shape=box, fontname=\"monospace\"];\n");
    for (i, v) in g.vertices.iter().enumerate() {
        let short = &v.id.to_hex()[..12];
        let label = if v.description.is_empty() {
            summary(&v.op)
        } else {
            v.description.clone()
        };
        let _ = writeln!(
            s,
            "  v{i} [label=\"#{i} {short}\\n{}\"];",
            dot_escape(&label)
        );
    }
    for (i, v) in g.vertices.iter().enumerate() {
        let mut inputs = v.op.inputs();
        inputs.dedup();
        for r in inputs {
            let _ = writeln!(s, "  v{} -> v{i};", r.0);
        }
    }
    for (n, o) in g.outputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  out{n} [shape=doubleoctagon, label=\"output {}\"];",
            dot_escape(&o.name)
        );
        let _ = writeln!(s, "  v{} -> out{n};", o.root.0);
        for gate in &o.gates {
            let _ = writeln!(s, "  v{} -> out{n} [style=dashed, label=\"gate\"];", gate.0);
        }
    }
    s.push_str("}\n");
    s
}

pub(super) fn json(g: &Graph) -> serde_json::Value {
    serde_json::to_value(g).unwrap_or(serde_json::Value::Null)
}
