//! The Dockerfile frontend: BuildKit-compatible syntax (directives, heredocs, `RUN --mount`) parsed into
//! an [`ast`], expanded with the [`shell`] lexer, typed into [`instructions`], and lowered to the graph.

pub mod ast;
pub mod check;
pub mod dump;
pub mod instructions;
pub mod lower;
pub mod outline;
pub mod parser;
pub mod shell;

pub use ast::{Args, Directive, Dockerfile, Flag, Heredoc, Node, Pos, Span, Warning};
pub use dump::{dump, dump_node};
pub use parser::{ParseError, ParseErrorKind, parse, parse_file};
