//! The Dockerfile parser against BuildKit's own parser golden files (read from the shared
//! conformance copy, never vendored), plus our cases for what those files do not cover: heredocs,
//! spans and columns, backtick escape, CRLF and a byte-order mark.

use std::fs;
use std::path::{Path, PathBuf};

use forge_builder::frontend::dockerfile::{Args, Pos, Span, dump, parse};

/// `<conformance>/buildkit/parser`, or `None` (after saying why) when the shared copy is absent.
fn parser_cases() -> Option<PathBuf> {
    forge_testsupport::conformance("parser")
}

fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", path.display()))
}

/// The differing lines of two texts, for a failure report.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i).copied(), a.get(i).copied());
        if x != y {
            out.push_str(&format!(
                "  line {}:\n    - {}\n    + {}\n",
                i + 1,
                x.unwrap_or("<none>"),
                y.unwrap_or("<none>")
            ));
        }
    }
    out
}

#[test]
fn buildkit_testfiles_dump_byte_for_byte() {
    let Some(dir) = parser_cases() else { return };
    let cases = case_dirs(&dir.join("testfiles"));
    assert!(!cases.is_empty(), "no testfiles under {}", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let source = read(&case.join("Dockerfile"));
        let expected = read(&case.join("result"));
        match parse(&source) {
            Ok(df) => {
                let actual = dump(&df);
                if actual != expected {
                    failures.push(format!(
                        "{name}: dump differs\n{}",
                        line_diff(&expected, &actual)
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: parse failed: {e}")),
        }
    }
    println!(
        "parser conformance: {}/{} testfiles match",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn buildkit_negative_testfiles_fail() {
    let Some(dir) = parser_cases() else { return };
    let cases = case_dirs(&dir.join("testfiles-negative"));
    assert!(!cases.is_empty());
    let mut parsed = Vec::new();
    for case in &cases {
        let source = read(&case.join("Dockerfile"));
        match parse(&source) {
            Err(e) => eprintln!("{}: {}", case.display(), e.message()),
            Ok(_) => parsed.push(case.display().to_string()),
        }
    }
    println!(
        "parser conformance: {}/{} negative testfiles rejected",
        cases.len() - parsed.len(),
        cases.len()
    );
    assert!(parsed.is_empty(), "parsed but should fail: {parsed:?}");
}

/// BuildKit's `TestParseIncludesLineNumbers` table for `testfile-line/Dockerfile`.
#[test]
fn buildkit_testfile_line_numbers() {
    let Some(dir) = parser_cases() else { return };
    let df = parse(&read(&dir.join("testfile-line/Dockerfile"))).unwrap();
    let lines: Vec<(usize, usize)> = df
        .children
        .iter()
        .map(|n| (n.span.start.line, n.span.end.line))
        .collect();
    assert_eq!(lines, [(5, 5), (11, 12), (17, 31)]);
    assert_eq!(df.directives.len(), 1);
    assert_eq!(df.directives[0].name, "escape");
    assert_eq!(df.directives[0].value, "\\");
}

fn pos(line: usize, column: usize) -> Pos {
    Pos { line, column }
}

fn span(l1: usize, c1: usize, l2: usize, c2: usize) -> Span {
    Span {
        start: pos(l1, c1),
        end: pos(l2, c2),
    }
}

#[test]
fn heredoc_forms_and_bodies() {
    let src = "FROM alpine\n\
RUN <<EOF\necho a\n\techo b\nEOF\n\
RUN <<-EOT\n\tone\n\t\ttwo\n\tEOT\n\
COPY <<\"A\" <<'B' /dest/\n$x\nA\n$y\nB\n\
RUN 3<<EOF cat <&3\nfd\nEOF\n\
ADD <<eo'f' /f\nbody\neof\n\
RUN <<EMPTY\nEMPTY\n\
RUN [\"<<EOF\"]\n\
USER <<X\n";
    let df = parse(src).unwrap();
    let h = |i: usize| &df.children[i].heredocs;

    assert_eq!(h(1).len(), 1);
    assert_eq!(h(1)[0].name, "EOF");
    assert_eq!(h(1)[0].content, "echo a\n\techo b\n");
    assert!(h(1)[0].expand && !h(1)[0].chomp);
    assert_eq!(h(1)[0].file_descriptor, 0);
    assert_eq!(h(1)[0].span, span(2, 5, 5, 4));
    assert_eq!(df.children[1].span, span(2, 1, 5, 4));

    assert_eq!(h(2)[0].name, "EOT");
    assert!(h(2)[0].chomp);
    assert_eq!(h(2)[0].content, "one\ntwo\n", "chomp strips leading tabs");

    assert_eq!(h(3).len(), 2, "two heredocs on one line");
    assert_eq!((h(3)[0].name.as_str(), h(3)[0].expand), ("A", false));
    assert_eq!((h(3)[1].name.as_str(), h(3)[1].expand), ("B", false));
    assert_eq!(h(3)[0].content, "$x\n");
    assert_eq!(h(3)[1].content, "$y\n");
    assert_eq!(h(3)[0].span.start, pos(10, 6));
    assert_eq!(h(3)[1].span.start, pos(10, 12));
    assert_eq!(df.children[3].span.end.line, 14);

    assert_eq!(h(4)[0].file_descriptor, 3);
    assert_eq!(h(4)[0].content, "fd\n");
    assert_eq!(
        df.children[4].args,
        Args::Values(vec!["3<<EOF cat <&3".into()])
    );

    assert_eq!((h(5)[0].name.as_str(), h(5)[0].expand), ("eof", false));
    assert_eq!(h(6)[0].content, "");
    assert!(h(7).is_empty(), "JSON form has no heredocs");
    assert!(h(8).is_empty(), "USER does not take heredocs");
    assert_eq!(df.children.len(), 9);
}

#[test]
fn heredoc_in_onbuild_and_crlf_body() {
    let df = parse("FROM a\r\nONBUILD RUN <<EOF\r\nx\r\nEOF\r\nRUN b\r\n").unwrap();
    assert_eq!(df.children[1].heredocs[0].content, "x\r\n");
    assert_eq!(df.children[1].span, span(2, 1, 4, 4));
    assert_eq!(df.children[2].instruction, "run");
    assert_eq!(
        dump(&df),
        "(from \"a\")\n(onbuild (run \"<<EOF\"))\n(run \"b\")\n"
    );
}

#[test]
fn columns_of_keyword_flags_and_args() {
    let src = "FROM x\n  COPY --from=build  --chown=1:1 src dst\nRUN --mount=type=cache,target=/c \\\n    --network=none echo hi\n";
    let df = parse(src).unwrap();
    let copy = &df.children[1];
    assert_eq!(copy.keyword_span, span(2, 3, 2, 7));
    assert_eq!(copy.flags[0].text, "--from=build");
    assert_eq!(copy.flags[0].name(), "from");
    assert_eq!(copy.flags[0].value(), Some("build"));
    assert_eq!(copy.flags[0].span, span(2, 8, 2, 20));
    assert_eq!(copy.flags[1].span, span(2, 22, 2, 33));
    assert_eq!(copy.args_pos, pos(2, 34));
    assert_eq!(copy.args, Args::Values(vec!["src".into(), "dst".into()]));

    let run = &df.children[2];
    assert_eq!(run.flags.len(), 2);
    assert_eq!(run.flags[1].span, span(4, 5, 4, 19));
    assert_eq!(run.args_pos, pos(4, 20));
    assert_eq!(run.span, span(3, 1, 4, 27));
    assert_eq!(
        run.original,
        "RUN --mount=type=cache,target=/c     --network=none echo hi"
    );
}

#[test]
fn columns_count_chars_not_bytes() {
    let df = parse("FROM x\nLABEL é=ü \\\n  ß=1\nENV a=b").unwrap();
    assert_eq!(df.children[1].args_pos, pos(2, 7));
    assert_eq!(df.children[1].span, span(2, 1, 3, 6));
    assert_eq!(df.children[2].span, span(4, 1, 4, 8));
}

#[test]
fn backtick_escape_directive() {
    let src = "# escape=`\nFROM windows\nRUN dir `\n  c:\\\nCOPY a\\b c:\\\n";
    let df = parse(src).unwrap();
    assert_eq!(df.escape, '`');
    assert_eq!(df.directives.len(), 1);
    assert_eq!(df.directives[0].span, span(1, 1, 1, 11));
    assert_eq!(
        dump(&df),
        "(from \"windows\")\n(run \"dir   c:\\\\\")\n(copy \"a\\\\b\" \"c:\\\\\")\n"
    );
}

#[test]
fn directives_are_case_insensitive_and_only_at_top() {
    let df =
        parse("#SYNTAX = docker/dockerfile:1\n# Check=skip=all\n# escape=`\nFROM a\n").unwrap();
    let names: Vec<_> = df
        .directives
        .iter()
        .map(|d| (d.name.as_str(), d.value.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("syntax", "docker/dockerfile:1"),
            ("check", "skip=all"),
            ("escape", "`")
        ]
    );
    assert!(
        df.children[0].prev_comment.is_empty(),
        "directives are not comments of FROM"
    );

    // An unknown directive ends the directive block and is a plain comment.
    let df = parse("# foo=bar\n# escape=`\nFROM a\nRUN x \\\n y\n").unwrap();
    assert!(df.directives.is_empty());
    assert_eq!(df.escape, '\\');
    assert_eq!(df.children[0].prev_comment, ["foo=bar", "escape=`"]);
    assert_eq!(dump(&df), "(from \"a\")\n(run \"x  y\")\n");

    // An empty line ends the directive block too.
    let df = parse("\n# escape=`\nFROM a\n").unwrap();
    assert!(df.directives.is_empty());
}

#[test]
fn crlf_line_endings() {
    let df = parse("FROM a\r\nRUN echo \\\r\n  hi\r\nENV A=1 \\\r\n\r\n  B=2\r\n").unwrap();
    assert_eq!(
        dump(&df),
        "(from \"a\")\n(run \"echo   hi\")\n(env \"A\" \"1\" \"=\" \"B\" \"2\" \"=\")\n"
    );
    assert_eq!(df.children[1].span, span(2, 1, 3, 5));
    assert_eq!(df.warnings.len(), 1);
    assert_eq!(df.warnings[0].span.start, pos(5, 1));
}

#[test]
fn utf8_bom_at_start() {
    let df = parse("\u{feff}# escape=`\nFROM a\nRUN x `\n y\n").unwrap();
    assert_eq!(df.escape, '`');
    assert_eq!(df.directives[0].span.start, pos(1, 1));
    assert_eq!(dump(&df), "(from \"a\")\n(run \"x  y\")\n");
    let df = parse("\u{feff}FROM a").unwrap();
    assert_eq!(df.children[0].keyword_span, span(1, 1, 1, 5));
}

#[test]
fn empty_continuation_lines_warn_like_buildkit() {
    let src = "\nFROM alpine:3.6\n\nRUN valid \\\n    continuation\n\nRUN something \\\n\n    following \\\n\n    more\n\nRUN another \\\n\n    thing\n\nRUN non-indented \\\n# this is a comment\n   after-comment\n\nRUN indented \\\n    # this is an indented comment\n    comment\n\t";
    let df = parse(src).unwrap();
    assert_eq!(df.warnings.len(), 2);
    assert!(
        df.warnings[0]
            .message
            .contains("RUN something     following     more")
    );
    assert!(df.warnings[1].message.contains("RUN another     thing"));
    assert_eq!(df.warnings[0].span.start.line, 8);
}

#[test]
fn comments_and_keyword_case() {
    let df = parse("# top\n\n# about from\nfrom a AS b\n#\n# about run\nRun x\n").unwrap();
    assert_eq!(df.children[0].prev_comment, ["top", "about from"]);
    assert_eq!(df.children[1].prev_comment, ["about run"]);
    assert_eq!(df.children[1].instruction, "run");
    assert_eq!(df.children[1].keyword(), "Run");
    assert_eq!(
        df.children[0].args,
        Args::Values(vec!["a".into(), "AS".into(), "b".into()])
    );
}

#[test]
fn argument_shapes_per_instruction() {
    let src = "FROM a\nARG x y=\"1 2\" z=\nENV k v w\nCMD [\"a\", \"b\"]\nSHELL [\"pwsh\"]\n\
HEALTHCHECK --interval=1s CMD [\"true\"]\nHEALTHCHECK NONE\nMAINTAINER me  you\nVOLUME [\"/v\"]\n\
EXPOSE 80/tcp 443\nSTOPSIGNAL SIGKILL\nWORKDIR /w d\nONBUILD\nRUN\n";
    let df = parse(src).unwrap();
    let a = |i: usize| &df.children[i].args;
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(a(1), &Args::Values(v(&["x", "y=\"1 2\"", "z="])));
    assert_eq!(a(2), &Args::Values(v(&["k", "v w"])));
    assert!(df.children[2].legacy_key_value);
    assert_eq!(a(3), &Args::Json(v(&["a", "b"])));
    assert_eq!(a(4), &Args::Json(v(&["pwsh"])));
    assert_eq!(a(5), &Args::Json(v(&["CMD", "true"])));
    assert_eq!(a(6), &Args::Values(v(&["NONE"])));
    assert_eq!(a(7), &Args::Values(v(&["me  you"])));
    assert_eq!(a(8), &Args::Json(v(&["/v"])));
    assert_eq!(a(9), &Args::Values(v(&["80/tcp", "443"])));
    assert_eq!(a(10), &Args::Values(v(&["SIGKILL"])));
    assert_eq!(a(11), &Args::Values(v(&["/w d"])));
    assert_eq!(a(12), &Args::Empty);
    assert_eq!(a(13), &Args::Empty);
}

#[test]
fn flags_double_dash_and_quotes() {
    let df = parse("FROM a\nCOPY --chown=\"a b\" -- --weird dst\nCOPY --x\n").unwrap();
    assert_eq!(df.children[1].flags[0].text, "--chown=a b");
    assert_eq!(
        df.children[1].args,
        Args::Values(vec!["--weird".into(), "dst".into()])
    );
    assert_eq!(df.children[2].flags[0].text, "--x");
    assert_eq!(df.children[2].args, Args::Empty);
    assert_eq!(df.children[2].args_pos, pos(3, 9));
}

/// BuildKit's `TestParseExtractsHeredoc` table (its `USER <<INVALID` / `INVALID` pair left out:
/// BuildKit's parser keeps `INVALID` as an ignored instruction, ours reports it as unknown).
#[test]
fn buildkit_heredoc_extraction_table() {
    let src = "\nFROM alpine:3.6\n\nENV NAME=me\n\nRUN ls\n\n\
RUN <<EMPTY\nEMPTY\n\nRUN 3<<EMPTY2\nEMPTY2\n\nRUN \"<<NOHEREDOC\"\n\n\
RUN <<INDENT\n\tfoo\n\tbar\nINDENT\n\n\
RUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n\n\
RUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n\n\
RUN <<-EXPAND\n\texpand $NAME\nEXPAND\n\n\
RUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n\n\
RUN <<COPY\necho hello world\necho foo bar\nCOPY\n\n\
RUN <<COMMENT\n# internal comment\necho hello world\necho foo bar # trailing comment\nCOMMENT\n\n\
RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\n\
COPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\n\n\
COPY <<EOF /quotes\n\"foo\"\n'bar'\nEOF\n\n\
COPY <<X <<Y /dest\nY\nX\nX\nY\n\n\
RUN <<COMPLEX python3\nprint('hello world')\nCOMPLEX\n\n\
COPY <<file.txt /dest\nhello world\nfile.txt\n\n\
RUN <<eo'f'\necho foo\neof\n\n\
RUN <<eo\\'f\necho foo\neo'f\n\n\
RUN <<'e'o\\'f\necho foo\neo'f\n\n\
RUN <<'one two'\necho bar\none two\n\n\
RUN <<$EOF\n$EOF\n\n\
RUN <<  EOF\nEOF\n\n\
RUN <<  EOF  > foo\nEOF\n\t";
    // (name, content, expand, chomp, fd); chomped bodies are stored with tabs stripped.
    type H = (&'static str, &'static str, bool, bool, u32);
    let expected: Vec<Vec<H>> = vec![
        vec![],
        vec![],
        vec![("EMPTY", "", true, false, 0)],
        vec![("EMPTY2", "", true, false, 3)],
        vec![],
        vec![("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
        vec![("UNINDENT", "baz\nquux\n", true, true, 0)],
        vec![("UNINDENT2", "baz\nquux\n", true, true, 0)],
        vec![("EXPAND", "expand $NAME\n", true, true, 0)],
        vec![("NOEXPAND", "don't expand $NAME\n", false, true, 0)],
        vec![("COPY", "echo hello world\necho foo bar\n", true, false, 0)],
        vec![(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
            0,
        )],
        vec![("MOUNT", "echo hello\n", true, false, 0)],
        vec![
            ("FILE1", "content 1\n", true, false, 0),
            ("FILE2", "content 2\n", true, false, 0),
        ],
        vec![("EOF", "\"foo\"\n'bar'\n", true, false, 0)],
        vec![("X", "Y\n", true, false, 0), ("Y", "X\n", true, false, 0)],
        vec![("COMPLEX", "print('hello world')\n", true, false, 0)],
        vec![("file.txt", "hello world\n", true, false, 0)],
        vec![("eof", "echo foo\n", false, false, 0)],
        vec![("eo'f", "echo foo\n", true, false, 0)],
        vec![("eo'f", "echo foo\n", false, false, 0)],
        vec![("one two", "echo bar\n", false, false, 0)],
        vec![("$EOF", "", true, false, 0)],
        vec![("EOF", "", true, false, 0)],
        vec![("EOF", "", true, false, 0)],
    ];
    let df = parse(src).unwrap();
    assert_eq!(df.children.len(), expected.len() + 1);
    for (i, want) in expected.iter().enumerate() {
        let got: Vec<(String, String, bool, bool, u32)> = df.children[i + 1]
            .heredocs
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    h.content.clone(),
                    h.expand,
                    h.chomp,
                    h.file_descriptor,
                )
            })
            .collect();
        let want: Vec<(String, String, bool, bool, u32)> = want
            .iter()
            .map(|&(n, c, e, ch, fd)| (n.to_string(), c.to_string(), e, ch, fd))
            .collect();
        assert_eq!(
            got,
            want,
            "instruction {}: {}",
            i + 1,
            df.children[i + 1].original
        );
    }
}

/// BuildKit's `TestParseJSONHeredoc`: exec-form instructions never take heredocs.
#[test]
fn buildkit_json_form_has_no_heredoc() {
    let df = parse("\nFROM alpine:3.6\n\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n\t")
        .unwrap();
    assert!(df.children[1..].iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(df.children.len(), 4);
}
