//! Word expansion as the lowering needs it: the BuildKit-exact [`Lexer`] over the stage's ordered
//! `(name, value)` scope, with errors flattened to the message the user sees.

use crate::frontend::dockerfile::shell::Lexer;

pub(crate) type Env = [(String, String)];

/// Expands one word (no field splitting): BuildKit's `ProcessWord`.
pub(crate) fn expand_word(escape: char, word: &str, env: &Env) -> Result<String, String> {
    Lexer::new(escape)
        .process_word(word, env)
        .map_err(|e| e.to_string())
}

/// Expands and splits into fields: BuildKit's `ProcessWords` (EXPOSE).
pub(crate) fn expand_words(escape: char, word: &str, env: &Env) -> Result<Vec<String>, String> {
    Lexer::new(escape)
        .process_words(word, env)
        .map_err(|e| e.to_string())
}

/// Expands a heredoc body (unquoted marker) as BuildKit's `ExpandRaw`: quotes are plain characters.
pub(crate) fn expand_raw(data: &str, env: &Env) -> Result<String, String> {
    Lexer::process_heredoc_body(data, env).map_err(|e| e.to_string())
}
