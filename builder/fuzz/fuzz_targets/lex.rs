//! Fuzz target for the shell lexer: any word, in any of BuildKit's lexing modes, with any environment,
//! must expand or fail cleanly; an error's position must lie inside the word; a word with nothing for
//! the lexer to act on must come back unchanged.
#![no_main]

use forge_builder::frontend::dockerfile::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // Layout: `NAME=value` lines for the environment, then a NUL, then the word.
    let (env_text, word) = text.split_once('\0').unwrap_or(("", &text));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let escape = if mode & 1 == 0 { '\\' } else { '`' };
    let lexer = Lexer::new(escape)
        .raw_quotes(mode & 2 != 0)
        .raw_escapes(mode & 4 != 0)
        .skip_unset_env(mode & 8 != 0)
        .skip_process_quotes(mode & 16 != 0);

    match lexer.process_word(word, &env) {
        Ok(out) => {
            let inert = !word.contains(['$', '\'', '"', escape]);
            if inert {
                assert_eq!(out, word, "an inert word changed");
            }
        }
        Err(e) => assert!(
            e.position <= word.len(),
            "{e:?} outside {} bytes",
            word.len()
        ),
    }
    if let Err(e) = lexer.process_words(word, &env) {
        assert!(
            e.position <= word.len(),
            "{e:?} outside {} bytes",
            word.len()
        );
    }
    let _ = Lexer::process_heredoc_body(word, &env);
});
