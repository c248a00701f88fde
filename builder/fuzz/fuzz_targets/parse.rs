//! Fuzz target for the Dockerfile parser: any input must parse or fail cleanly, spans must stay
//! inside the source, the dump must hold one line per instruction, the error rendering must not
//! panic, a tree's dump re-parsed must not panic either, and lowering the tree to a graph (instruction
//! parsing, variable expansion, stage resolution; no image resolver, so no I/O) fails cleanly or
//! succeeds: the nesting that once overflowed the stack lives in expansion, not in the parser.
#![no_main]

use forge_builder::frontend::dockerfile::lower::{LowerOptions, lower};
use forge_builder::frontend::dockerfile::{Node, Span, dump, parse};
use libfuzzer_sys::fuzz_target;

fn check_span(span: &Span, lines: usize, what: &str) {
    assert!(
        span.start.line >= 1 && span.start.column >= 1,
        "{what}: {span:?}"
    );
    assert!(
        span.end.line <= lines.max(1),
        "{what} ends past the source: {span:?}"
    );
    assert!(span.start.line <= span.end.line, "{what}: {span:?}");
}

fn check_node(node: &Node, lines: usize) {
    check_span(&node.span, lines, "node");
    check_span(&node.keyword_span, lines, "keyword");
    assert!(node.span.start.line <= node.keyword_span.start.line);
    for flag in &node.flags {
        check_span(&flag.span, lines, "flag");
        assert!(flag.span.end.line <= node.span.end.line);
    }
    for heredoc in &node.heredocs {
        check_span(&heredoc.span, lines, "heredoc");
    }
    if let Some(sub) = node.sub_node() {
        check_node(sub, lines);
    }
    let _ = node.keyword();
}

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let lines = source.split_inclusive('\n').count();
    match parse(&source) {
        Ok(df) => {
            for node in &df.children {
                check_node(node, lines);
            }
            let text = dump(&df);
            // Go quoting escapes every newline, so each instruction is exactly one line.
            assert_eq!(text.lines().count(), df.children.len());
            // The dump is not Dockerfile syntax, but it is text the parser must survive.
            let _ = parse(&text);
            if let Err(e) = lower(&df, &LowerOptions::default()) {
                let _ = e.to_string();
            }
        }
        Err(err) => {
            let _ = err.to_string();
            assert!(err.line() >= 1 && err.column() >= 1, "{err:?}");
        }
    }
});
