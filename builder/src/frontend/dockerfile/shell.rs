//! BuildKit-compatible shell word processing: quotes, escapes, `$VAR` / `${VAR...}` expansion with every
//! modifier, and field splitting. Used by the instructions BuildKit expands (not RUN/CMD/ENTRYPOINT).
//!
//! API contract (shared by the parser and instructions modules):
//! - `Lexer::new(escape)` builds a lexer for the file's escape character.
//! - `Lexer::process_word(word, env)` expands one word to one string (no field splitting).
//! - `Lexer::process_words(word, env)` expands and splits into fields, as BuildKit's `ProcessWords`.
//! - `Env` looks a variable up; `impl Env for [(String, String)]` and for `BTreeMap<String, String>`.
