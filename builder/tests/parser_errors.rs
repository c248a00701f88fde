//! Parse errors as a user sees them: the full rendered text (location, message, source line,
//! caret, hint), plus regression cases found by fuzzing, each named after its bug.

use forge_builder::frontend::dockerfile::{ParseErrorKind, dump, parse, parse_file};

fn rendered(source: &str) -> String {
    parse(source)
        .expect_err("the source must not parse")
        .to_string()
}

#[test]
fn unknown_instruction_with_hint() {
    assert_eq!(
        rendered("FROM alpine\nRUNN echo hi\n"),
        "Dockerfile:2:1: unknown instruction: RUNN\n 2 | RUNN echo hi\n   | ^^^^\nhint: did you mean RUN?"
    );
}

#[test]
fn unknown_instruction_transposed_letters_and_file_name() {
    let err = parse_file("app/Containerfile", "# base\nFORM alpine\n").unwrap_err();
    assert_eq!(err.line(), 2);
    assert_eq!(err.column(), 1);
    assert_eq!(err.kind, ParseErrorKind::UnknownInstruction("FORM".into()));
    assert_eq!(
        err.to_string(),
        "app/Containerfile:2:1: unknown instruction: FORM\n 2 | FORM alpine\n   | ^^^^\nhint: did you mean FROM?"
    );
}

#[test]
fn unknown_instruction_without_close_match_has_no_hint() {
    assert_eq!(
        rendered("FROM a\nXYZZY plugh\n"),
        "Dockerfile:2:1: unknown instruction: XYZZY\n 2 | XYZZY plugh\n   | ^^^^^"
    );
}

#[test]
fn caret_keeps_tabs_for_alignment() {
    assert_eq!(
        rendered("FROM a\n\t  RUNN x\n"),
        "Dockerfile:2:4: unknown instruction: RUNN\n 2 | \t  RUNN x\n   | \t  ^^^^\nhint: did you mean RUN?"
    );
}

#[test]
fn unknown_instruction_inside_onbuild() {
    assert_eq!(
        rendered("FROM a\nONBUILD COPPY . /\n"),
        "Dockerfile:2:9: unknown instruction: COPPY\n 2 | ONBUILD COPPY . /\n   |         ^^^^^\nhint: did you mean COPY?"
    );
}

#[test]
fn wide_line_numbers_align_the_gutter() {
    let mut source = "FROM a\n".repeat(11);
    source.push_str("EXPOES 80\n");
    assert_eq!(
        rendered(&source),
        "Dockerfile:12:1: unknown instruction: EXPOES\n 12 | EXPOES 80\n    | ^^^^^^\nhint: did you mean EXPOSE?"
    );
}

#[test]
fn unterminated_heredoc_points_at_marker() {
    assert_eq!(
        rendered("FROM a\nRUN cat <<EOF\nhello\nEOFX\n"),
        "Dockerfile:2:9: unterminated heredoc EOF\n 2 | RUN cat <<EOF\n   |         ^^^^^\nhint: end the heredoc with a line containing only EOF"
    );
}

#[test]
fn second_unterminated_heredoc_on_a_line() {
    let err = parse("FROM a\nCOPY <<A <<-B /d\na\nA\n\tb\n").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::UnterminatedHeredoc("B".into()));
    assert_eq!((err.line(), err.column()), (2, 10));
}

#[test]
fn heredoc_marker_that_does_not_lex_is_no_heredoc() {
    // BuildKit lexes the whole line first and ignores a failure there: no heredoc, no error.
    let df = parse("FROM a\nRUN <<'EOF\nRUN x\n").unwrap();
    assert!(df.children[1].heredocs.is_empty());
    assert_eq!(dump(&df), "(from \"a\")\n(run \"<<'EOF\")\n(run \"x\")\n");
}

#[test]
fn shell_requires_json() {
    assert_eq!(
        rendered("FROM a\nSHELL /bin/bash -c\n"),
        "Dockerfile:2:7: SHELL requires the arguments to be in JSON form\n 2 | SHELL /bin/bash -c\n   |       ^^^^^^^^^^^^\nhint: write `SHELL [\"/bin/sh\", \"-c\"]`"
    );
}

#[test]
fn json_array_of_non_strings() {
    assert_eq!(
        rendered("CMD [ \"echo\", [ \"nested json\" ] ]"),
        "Dockerfile:1:5: when using JSON array syntax, arrays must be comprised of strings only\n 1 | CMD [ \"echo\", [ \"nested json\" ] ]\n   |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"
    );
}

#[test]
fn env_without_value() {
    assert_eq!(
        rendered("FROM busybox\n\nENV PATH\n"),
        "Dockerfile:3:5: ENV must have two arguments\n 3 | ENV PATH\n   |     ^^^^\nhint: write `ENV name=value`"
    );
}

#[test]
fn label_pair_without_equals() {
    assert_eq!(
        rendered("FROM a\nLABEL a=b c\n"),
        "Dockerfile:2:7: syntax error - can't find = in \"c\"; must be of the form: name=value\n 2 | LABEL a=b c\n   |       ^^^^^"
    );
}

#[test]
fn empty_file_and_only_comments() {
    assert_eq!(rendered(""), "Dockerfile:1:1: file with no instructions");
    assert_eq!(
        rendered("# Hello\n# These are just comments\n\n"),
        "Dockerfile:3:1: file with no instructions"
    );
}

#[test]
fn duplicate_directive() {
    assert_eq!(
        rendered("# escape=`\n# Escape=\\\nFROM a\n"),
        "Dockerfile:2:1: only one escape parser directive can be used\n 2 | # Escape=\\\n   | ^^^^^^^^^^\nhint: parser directives may appear once each, at the top of the file"
    );
}

#[test]
fn invalid_escape_token() {
    assert_eq!(
        rendered("# escape=x\nFROM a\n"),
        "Dockerfile:1:1: invalid escape token 'x' does not match ` or \\\n 1 | # escape=x\n   | ^^^^^^^^^^\nhint: write `# escape=\\` or `# escape=``"
    );
}

#[test]
fn continuation_without_instruction() {
    assert_eq!(
        rendered("FROM a\n\\\n# only a comment\n"),
        "Dockerfile:2:1: line continuation with no instruction\n 2 | \\\n   | ^"
    );
}

#[test]
fn line_longer_than_buildkit_scanner_limit() {
    let long = format!("FROM a\nLABEL x={}\n", "a".repeat(65536));
    assert_eq!(
        rendered(&long),
        "Dockerfile:2:1: dockerfile line greater than max allowed size of 65535"
    );
    // 65535 bytes before the newline is still accepted.
    let fits = format!("FROM a\nLABEL x={}\n", "a".repeat(65535 - 8));
    assert!(parse(&fits).is_ok());
}

#[test]
fn message_accessors() {
    let err = parse("FROM a\nRUNN x").unwrap_err();
    assert_eq!(err.message(), "unknown instruction: RUNN");
    assert_eq!(err.file, "Dockerfile");
    assert_eq!(err.source_line.as_deref(), Some("RUNN x"));
    assert_eq!(err.hint.as_deref(), Some("did you mean RUN?"));
    // The dump of a good parse is unaffected by errors elsewhere.
    assert_eq!(dump(&parse("FROM a").unwrap()), "(from \"a\")\n");
}

#[test]
fn onbuild_chain_is_rejected_without_deep_recursion() {
    let line = format!("{}RUN x", "ONBUILD ".repeat(8000));
    let err = parse(&format!("FROM a\n{line}\n")).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::OnbuildChain);
    assert_eq!((err.line(), err.column()), (2, 9));
    let err = parse("FROM a\nONBUILD onbuild RUN x\n").unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::OnbuildChain);
}

#[test]
fn deeply_nested_substitution_does_not_overflow_the_stack() {
    let nested = format!("{}x{}", "${a:-".repeat(10000), "}".repeat(10000));
    let df = parse(&format!("FROM a\nRUN <<EOF {nested}\nEOF\n")).unwrap_err();
    // Too deep to lex here, so no heredoc is seen and `EOF` is read as an instruction.
    assert_eq!(df.kind, ParseErrorKind::UnknownInstruction("EOF".into()));
    let shallow = format!("{}x{}", "${a:-".repeat(50), "}".repeat(50));
    let df = parse(&format!("FROM a\nRUN {shallow} <<EOF\nbody\nEOF\n")).unwrap();
    assert_eq!(df.children[1].heredocs[0].content, "body\n");
}
