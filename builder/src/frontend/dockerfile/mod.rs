//! The Dockerfile frontend: BuildKit-compatible syntax (directives, heredocs, `RUN --mount`) parsed into
//! an [`ast`], expanded with the [`shell`] lexer, typed into [`instructions`], and lowered to the graph.

pub mod ast;
pub mod dump;
pub mod instructions;
pub mod lower;
pub mod parser;
pub mod shell;
