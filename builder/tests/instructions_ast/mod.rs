//! Test helpers: Dockerfiles and single nodes through the real parser.
#![allow(dead_code)]

use forge_builder::frontend::dockerfile::ast::{Dockerfile, Node};
use forge_builder::frontend::dockerfile::parser;

/// The one instruction in `text` (which may span lines, e.g. with heredocs).
pub fn node(text: &str) -> Node {
    let df = parser::parse(&format!("{text}\n")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(df.children.len(), 1, "{text}");
    df.children.into_iter().next().unwrap()
}

pub fn dockerfile(src: &str) -> Dockerfile {
    parser::parse(src).unwrap_or_else(|e| panic!("{e}"))
}
