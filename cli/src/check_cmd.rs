//! `forge build --check`: the Dockerfile's build checks, printed as `docker build --check` prints
//! them (rule, link, message, the place in the file with the lines around it), without building.

use std::path::Path;

use forge_builder::frontend::dockerfile::check::{CheckOptions, Finding, check as run_checks};
use forge_builder::frontend::dockerfile::{outline, parser};

use crate::build_cmd::BuildArgs;
use crate::{Failure, display_name, failed, parse_build_args, render};

/// The Dockerfile `-f` names (`-` for standard input), or the context's: its name for messages
/// and its text.
fn read_dockerfile(g: &crate::GraphArgs) -> Result<(String, String), Failure> {
    Ok(match &g.file {
        Some(f) if f == Path::new("-") => (
            "Dockerfile (standard input)".to_string(),
            crate::read_stdin_dockerfile()?,
        ),
        Some(f) => (display_name(f), crate::read_dockerfile(f)?),
        None => {
            let f = g.context.join("Dockerfile");
            (display_name(&f), crate::read_dockerfile(&f)?)
        }
    })
}

/// Runs the checks; exit 1 when any rule is broken, as docker's `--check` does.
pub(crate) fn check(args: &BuildArgs) -> Result<(), Failure> {
    let g = &args.graph;
    let (name, src) = read_dockerfile(g)?;
    let df = parser::parse_file(&name, &src).map_err(|e| failed(format!("error: {e}")))?;
    let build_args = parse_build_args(&g.build_args)?;
    // Base images' environments from the store only: a check asks no registry.
    let store = match &args.root {
        Some(root) => forge_snapshotter::store::Store::open(root).ok(),
        None => forge_snapshotter::store::Store::open_default().ok(),
    };
    let base_env = |reference: &str| {
        store
            .as_ref()
            .and_then(|s| forge_builder::source::stored_env_names(s, reference))
    };
    let findings = run_checks(
        &df,
        &CheckOptions {
            build_args: &build_args,
            base_env: &base_env,
        },
    )
    .map_err(|e| {
        failed(render(
            &name,
            &src,
            Some(e.span),
            &e.kind.to_string(),
            e.hint.as_deref(),
        ))
    })?;
    let mut out = String::new();
    for f in &findings {
        out.push_str(&finding(&name, &src, f));
    }
    match findings.len() {
        0 => out.push_str("Check complete, no warnings found.\n"),
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
    }
    // A reader that stops early (`| head`) is not an error of the check.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: String::new(),
        })
    }
}

/// One finding: the rule and its page, the message, `file:line:column`, and the lines around it
/// with the one it is on marked.
fn finding(file: &str, src: &str, f: &Finding) -> String {
    let line = f.span.start.line;
    let mut out = format!(
        "WARNING: {} - {}\n{}\n{file}:{line}:{}\n--------------------\n",
        f.rule.name,
        f.rule.url(),
        f.message,
        f.span.start.column
    );
    let lines: Vec<&str> = src.lines().collect();
    let last = f.span.end.line.max(line);
    let first = line.saturating_sub(2).max(1);
    let end = (last + 1).min(lines.len());
    for n in first..=end {
        let text = lines.get(n - 1).copied().unwrap_or_default();
        let mark = if (line..=last).contains(&n) {
            ">>>"
        } else {
            "   "
        };
        out.push_str(format!(" {n:>3} | {mark} {text}").trim_end());
        out.push('\n');
    }
    out.push_str("--------------------\n\n");
    out
}

/// `--call targets`: the stages, each with the comment above its FROM, the default marked.
pub(crate) fn targets(args: &BuildArgs) -> Result<(), Failure> {
    let (name, src) = read_dockerfile(&args.graph)?;
    let df = parser::parse_file(&name, &src).map_err(|e| failed(format!("error: {e}")))?;
    let rows: Vec<[String; 2]> = outline::targets(&df)
        .into_iter()
        .map(|t| {
            let name = if t.default {
                format!("{} (default)", t.name)
            } else {
                t.name
            };
            [name, t.description]
        })
        .collect();
    print(&table(["TARGET", "DESCRIPTION"], &rows));
    Ok(())
}

/// `--call outline`: what the target (`--target`, else the last stage) reads from the command
/// line: build arguments with their defaults and descriptions, secrets, ssh agents.
pub(crate) fn outline(args: &BuildArgs) -> Result<(), Failure> {
    let g = &args.graph;
    let (name, src) = read_dockerfile(g)?;
    let df = parser::parse_file(&name, &src).map_err(|e| failed(format!("error: {e}")))?;
    let o =
        outline::outline(&df, g.target.as_deref()).map_err(|e| failed(format!("error: {e}")))?;
    let mut out = format!("TARGET:      {}\n", o.target.name);
    if !o.target.description.is_empty() {
        out.push_str(&format!("DESCRIPTION: {}\n", o.target.description));
    }
    if !o.args.is_empty() {
        let rows: Vec<[String; 3]> = o
            .args
            .iter()
            .map(|a| {
                [
                    a.name.clone(),
                    a.default.clone().unwrap_or_else(|| "<none>".into()),
                    a.description.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(["BUILD ARG", "VALUE", "DESCRIPTION"], &rows));
    }
    for (title, mounts) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if mounts.is_empty() {
            continue;
        }
        let rows: Vec<[String; 2]> = mounts
            .iter()
            .map(|m| [m.id.clone(), m.required.to_string()])
            .collect();
        out.push('\n');
        out.push_str(&table([title, "REQUIRED"], &rows));
    }
    print(&out);
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart; trailing blanks trimmed.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        format!("{}\n", l.trim_end())
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Writes to standard output; a reader that stops early (`| head`) is not an error.
fn print(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}
