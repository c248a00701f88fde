//! Test scaffolding: builds AST nodes the way the parser shapes them, from one-line instructions, so
//! that the typed-instruction and lowering tests do not depend on the parser's own tests.
#![allow(dead_code)]

use forge_builder::frontend::dockerfile::ast::{Args, Dockerfile, Flag, Heredoc, Node, Pos, Span};

fn span(line: usize, col: usize, len: usize) -> Span {
    Span {
        start: Pos { line, column: col },
        end: Pos {
            line,
            column: col + len,
        },
    }
}

/// One node from `text` at `line` (flags, then arguments shaped per instruction).
pub fn node(line: usize, text: &str) -> Node {
    node_with_heredocs(line, text, vec![])
}

pub fn node_with_heredocs(line: usize, text: &str, heredocs: Vec<Heredoc>) -> Node {
    let text = text.trim();
    let (kw, mut rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut col = kw.len() + 2;
    let mut flags = Vec::new();
    rest = rest.trim_start();
    while rest.starts_with("--") {
        let (flag, r) = rest.split_once(' ').unwrap_or((rest, ""));
        flags.push(Flag {
            text: flag.to_string(),
            span: span(line, col, flag.len()),
        });
        col += flag.len() + 1;
        rest = r.trim_start();
    }
    let instruction = kw.to_ascii_lowercase();
    let args = match instruction.as_str() {
        _ if rest.is_empty() => Args::Empty,
        "run" | "cmd" | "entrypoint" | "shell" => match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Json(v),
            Err(_) => Args::Values(vec![rest.to_string()]),
        },
        "healthcheck" => {
            let (typ, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
            match serde_json::from_str::<Vec<String>>(cmd.trim()) {
                Ok(mut v) => {
                    v.insert(0, typ.to_string());
                    Args::Json(v)
                }
                Err(_) if cmd.trim().is_empty() => Args::Values(vec![typ.to_string()]),
                Err(_) => Args::Values(vec![typ.to_string(), cmd.trim().to_string()]),
            }
        }
        "env" | "label" => {
            let mut v = Vec::new();
            if !rest.contains('=') {
                let (k, val) = rest.split_once(' ').unwrap_or((rest, ""));
                v.extend([k.to_string(), val.trim().to_string(), String::new()]);
            } else {
                for tok in rest.split_whitespace() {
                    let (k, val) = tok.split_once('=').unwrap_or((tok, ""));
                    v.extend([k.to_string(), val.to_string(), "=".to_string()]);
                }
            }
            Args::Values(v)
        }
        "onbuild" => Args::Sub(Box::new(node_with_heredocs(line, rest, heredocs.clone()))),
        _ => match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Json(v),
            Err(_) => Args::Values(rest.split_whitespace().map(String::from).collect()),
        },
    };
    Node {
        instruction,
        keyword_span: span(line, 1, kw.len()),
        flags,
        args,
        args_pos: Pos { line, column: col },
        heredocs,
        original: text.to_string(),
        span: span(line, 1, text.len()),
        prev_comment: vec![],
    }
}

pub fn heredoc(name: &str, content: &str, expand: bool) -> Heredoc {
    Heredoc {
        name: name.to_string(),
        file_descriptor: 0,
        expand,
        chomp: false,
        content: content.to_string(),
        span: Span::default(),
    }
}

/// A Dockerfile of one node per line of `src` (blank lines skipped, line numbers kept).
pub fn dockerfile(src: &str) -> Dockerfile {
    Dockerfile {
        directives: vec![],
        escape: '\\',
        children: src
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| node(i + 1, l))
            .collect(),
        warnings: vec![],
    }
}

pub fn dockerfile_of(children: Vec<Node>) -> Dockerfile {
    Dockerfile {
        directives: vec![],
        escape: '\\',
        children,
        warnings: vec![],
    }
}
