//! `.dockerignore` behaviour, case by case: Docker's documented examples, patternmatcher's rules
//! (anchoring, `**`, `*`/`?`/`[...]`, escapes, exceptions, last match wins), the file lookup rule, and
//! a walk over a real directory tree.

use std::fs;
use std::path::Path;

use forge_builder::frontend::dockerignore::{
    Dockerignore, DockerignoreError, find_ignore_file, read_patterns,
};

/// (ignore file lines, path, excluded?)
const CASES: &[(&[&str], &str, bool)] = &[
    // plain names are anchored at the root, unlike .gitignore, and cover what is below them
    (&["foo"], "foo", true),
    (&["foo"], "foo/bar", true),
    (&["foo"], "foo/bar/baz", true),
    (&["foo"], "sub/foo", false),
    (&["foo"], "foobar", false),
    (&["/foo"], "foo", true),
    (&["foo/"], "foo/x", true),
    (&["./foo"], "foo", true),
    (&["a//b/../c"], "a/c", true),
    (&["a/b"], "a", false),
    (&["a/b"], "a/b/c", true),
    // `*` and `?` never cross a `/`
    (&["*"], "fileutils.go", true),
    (&["*"], "dir/file", true),
    (&["*.go"], "main.go", true),
    (&["*.go"], "cmd/main.go", false),
    (&["a*"], "ab/c", true),
    (&["a*/b"], "abc/b", true),
    (&["a*/b"], "a/c/b", false),
    (&["a*b*c*d*e*/f"], "axbxcxdxexxx/f", true),
    (&["a*b*c*d*e*/f"], "axbxcxdxe/xxx/f", false),
    (&["a*b?c*x"], "abxbbxdbxebxczzx", true),
    (&["a*b?c*x"], "abxbbxdbxebxczzy", false),
    (&["a?b"], "a/b", false),
    (&["a*b"], "a/b", false),
    (&["a?b"], "a☺b", true),
    (&["a???b"], "a☺b", false),
    (&["abc?def"], "abcZdef", true),
    (&["abc?def"], "abcdef", false),
    (&[".*"], ".foo", true),
    (&[".*"], "foo", false),
    (&["abc.def"], "abcZdef", false),
    (&["abc.def"], "abc.def", true),
    // regexp metacharacters are literal
    (&["a(b)c/def"], "a(b)c/def", true),
    (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
    (
        &["dist/*.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    // bracket expressions
    (&["a[b-d]e"], "ace", true),
    (&["a[b-d]e"], "ae", false),
    (&["a[b-d]e"], "aae", false),
    (&["a[^b-d]e"], "aze", true),
    (&["ab[^c]"], "abc", false),
    (&["ab[^e-g]"], "abc", true),
    (&["a[^a]b"], "a☺b", true),
    (&["[a-ζ]*"], "α", true),
    (&["*[a-ζ]"], "A", false),
    (&["[\\]a]"], "]", true),
    (&["[\\-]"], "-", true),
    (&["[x\\-]"], "-", true),
    (&["[x\\-]"], "z", false),
    // escapes
    (&["a\\*b"], "a*b", true),
    (&["a\\*b"], "ab", false),
    (&["a\\*b"], "axb", false),
    (&["a\\\\"], "a\\", true),
    // `**` spans directories
    (&["**"], "file", true),
    (&["**"], "dir/file", true),
    (&["**/"], "dir/file", true),
    (&["**/**"], "dir/file", true),
    (&["dir/**"], "dir/file", true),
    (&["dir/**"], "dir/dir2/file", true),
    (&["abc/**"], "abc", false),
    (&["**/dir"], "dir", true),
    (&["**/dir"], "dir/file", true),
    (&["**/dir"], "a/b/dir", true),
    (&["**/dir2/*"], "dir/dir2/file", true),
    (&["**/dir2/**"], "dir/dir2/dir3/file", true),
    (&["**file"], "dir/dir/file", true),
    // patternmatcher tests `**file` as a plain suffix, so it also takes `xfile`
    (&["**file"], "dir/xfile", true),
    (&["**/file"], "dir/xfile", false),
    (&["**/file*.txt"], "dir/dir/file.txt", true),
    (&["**/**/*.txt"], "dir/dir/file.txt", true),
    (&["**/**/*.txt2"], "dir/dir/file.txt", false),
    (&["**/*.txt"], "file.txt", true),
    (&["a**/*.txt"], "a/dir/dir/file.txt", true),
    (&["a/*.txt"], "a/dir/file.txt", false),
    (&["a/*.txt**"], "a/file.txt", true),
    (&["**/foo/bar"], "dir/dir2/foo/bar", true),
    (&["**/.foo"], ".foo", true),
    (&["**/.foo"], "bar.foo", false),
    (&["**/*.go"], "a/b/c.go", true),
    // Docker's documented examples
    (&["*/temp*"], "somedir/temporary.txt", true),
    (&["*/temp*"], "somedir/temp", true),
    (&["*/temp*"], "temporary.txt", false),
    (&["*/temp*"], "somedir/subdir/temporary.txt", false),
    (&["*/*/temp*"], "somedir/subdir/temporary.txt", true),
    (&["*/*/temp*"], "somedir/temporary.txt", false),
    (&["temp?"], "tempa", true),
    (&["temp?"], "tempab", false),
    (&["temp?"], "sub/tempa", false),
    (&["*.md", "!README.md"], "CHANGES.md", true),
    (&["*.md", "!README.md"], "README.md", false),
    (&["*.md", "!README.md"], "docs/x.md", false),
    (
        &["*.md", "!README*.md", "README-secret.md"],
        "README-secret.md",
        true,
    ),
    (
        &["*.md", "!README*.md", "README-secret.md"],
        "README-public.md",
        false,
    ),
    (
        &["*.md", "README-secret.md", "!README*.md"],
        "README-secret.md",
        false,
    ),
    (
        &["*.md", "README-secret.md", "!README*.md"],
        "other.md",
        true,
    ),
    // the last matching rule wins
    (&["!fileutils.go", "*.go"], "fileutils.go", true),
    (&["*.go", "!fileutils.go"], "fileutils.go", false),
    (&["docs", "!docs/README.md"], "docs/README.md", false),
    (&["docs", "!docs/README.md"], "docs/other.md", true),
    (&["docs/", "!docs/README.md"], "docs/README.md", false),
    (&["docs/*", "!docs/README.md"], "docs/README.md", false),
    (&["**", "!util/docker/web"], "util/docker/web/foo", false),
    (&["**", "!util/docker/web"], "util/docker/other", true),
    (
        &["**", "!util/docker/web", "util/docker/web/foo"],
        "util/docker/web/foo",
        true,
    ),
    (
        &["**", "!dist/*.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
    ),
    (
        &[
            "node_modules",
            "!node_modules/keep",
            "node_modules/keep/tmp",
        ],
        "node_modules/keep/a",
        false,
    ),
    (
        &[
            "node_modules",
            "!node_modules/keep",
            "node_modules/keep/tmp",
        ],
        "node_modules/keep/tmp/x",
        true,
    ),
    // fsutil's walker carries directory results down: here `!a` was skipped at `a` (nothing was
    // excluded yet) and is then only tried against `a/b` itself, so `a/b` stays excluded even though
    // a stateless "last rule matching the path or a parent" reading would re-include it.
    (&["a/b", "!a"], "a/b", true),
    (&["a/b", "!a"], "a", false),
    // reading rules: comments only in column 0, whitespace trimmed, `!` then spaces
    (&["# foo", "bar"], "# foo", false),
    (&[" # foo"], "# foo", true),
    (&["  spaced  "], "spaced", true),
    (&["x", "! /x/keep"], "x/keep", false),
    (&["\u{feff}bom"], "bom", true),
    // the context root is never excluded; empty files exclude nothing
    (&["*"], ".", false),
    (&["**"], "", false),
    (&[], "anything", false),
    (&["", "   "], "anything", false),
    // a path given with a leading slash or `./` is still relative to the context root
    (&["foo"], "/foo/bar", true),
    (&["foo"], "./foo", true),
];

#[test]
fn pattern_table() {
    let mut failures = Vec::new();
    for (lines, path, want) in CASES {
        let text = lines.join("\n");
        let ignore = match Dockerignore::parse(&text) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{lines:?}: parse error {e}"));
                continue;
            }
        };
        let got = ignore.matches(path);
        if got != *want {
            failures.push(format!(
                "{lines:?} on {path:?}: expected excluded={want}, got {got}"
            ));
        }
    }
    println!(
        "dockerignore: {}/{} pattern cases pass",
        CASES.len() - failures.len(),
        CASES.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn long_paths_match_like_short_ones() {
    // Paths up to 256 bytes are matched from a buffer on the stack, longer ones from the heap:
    // the answer must not depend on which.
    let ignore = Dockerignore::parse("**/*.log\n!keep/**/k?ep.log\nsrc/[a-c]*/x\n").unwrap();
    for depth in [1, 20, 40, 80] {
        let dirs = "dir/".repeat(depth);
        let cases = [
            (format!("{dirs}app.log"), true),
            (format!("{dirs}app.txt"), false),
            (format!("keep/{dirs}keep.log"), false),
            (format!("keep/{dirs}kept.log"), true),
            (format!("src/b{}/x", "é".repeat(depth * 2)), true),
            (format!("src/d{}/x", "é".repeat(depth * 2)), false),
        ];
        for (path, want) in &cases {
            assert_eq!(ignore.matches(path), *want, "{} bytes: {path}", path.len());
            // An entry without children is answered without the state a directory hands down.
            assert_eq!(
                ignore.excluded_with_parent(path, None),
                ignore.match_with_parent(path, None).0,
                "{path}"
            );
        }
    }
}

#[test]
fn malformed_patterns_are_errors() {
    for bad in [
        "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "foo\\", "[z-a]",
    ] {
        let err = Dockerignore::parse(bad).expect_err(bad);
        assert!(
            matches!(err, DockerignoreError::BadPattern { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("syntax error in pattern"), "{err}");
    }
    for bare in ["!", "! ", "x\n!"] {
        let err = Dockerignore::parse(bare).expect_err(bare);
        assert!(
            matches!(err, DockerignoreError::BareExclamation),
            "{bare:?}: {err}"
        );
    }
}

#[test]
fn patterns_are_normalised_like_docker_reads_them() {
    let text = "\u{feff}test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n  x/./y/  \n#c\n";
    assert_eq!(
        read_patterns(text),
        vec![
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "x/y"
        ]
    );
    let ignore = Dockerignore::parse(text).unwrap();
    assert_eq!(ignore.patterns(), read_patterns(text).as_slice());
    assert_eq!(
        ignore.excludes(),
        vec!["test1", "test2", "a/file/here", "lastfile", "x/y"]
    );
    assert_eq!(ignore.exceptions(), vec!["inverted/abs/path"]);
    assert!(ignore.has_exceptions());
    assert!(
        Dockerignore::parse("# only a comment\n")
            .unwrap()
            .is_empty()
    );
    // `!` alone reads as `!`, which the matcher then rejects
    assert_eq!(read_patterns("!\n! "), vec!["!", "!"]);
}

#[test]
fn pruning_excluded_directories() {
    let ignore = Dockerignore::parse("node_modules\n!node_modules/keep\nbuild\n").unwrap();
    assert!(ignore.matches("node_modules"));
    assert!(ignore.may_match_below("node_modules"));
    assert!(!ignore.may_match_below("node_modules/pkg"));
    assert!(ignore.may_match_below("node_modules/keep"));
    assert!(!ignore.may_match_below("build"));
    let none = Dockerignore::parse("build\n").unwrap();
    assert!(!none.may_match_below("build"));
    let globbed = Dockerignore::parse("*\n!*/keep.txt\n").unwrap();
    assert!(globbed.may_match_below("anything"));
    assert!(!globbed.may_match_below("anything/deeper"));
    let deep = Dockerignore::parse("*\n!**/keep.txt\n").unwrap();
    assert!(deep.may_match_below("a/b/c"));
}

#[test]
fn ignore_file_lookup_prefers_the_dockerfile_specific_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let df_dir = tmp.path().join("df");
    fs::create_dir_all(&ctx).unwrap();
    fs::create_dir_all(&df_dir).unwrap();
    let dockerfile = df_dir.join("app.Dockerfile");
    fs::write(&dockerfile, "FROM scratch\n").unwrap();

    assert_eq!(find_ignore_file(&ctx, &dockerfile), None);
    // an empty Dockerfile-specific file is treated as missing, as BuildKit's frontend does
    fs::write(df_dir.join("app.Dockerfile.dockerignore"), "").unwrap();
    assert_eq!(find_ignore_file(&ctx, &dockerfile), None);
    fs::write(ctx.join(".dockerignore"), "a\n").unwrap();
    assert_eq!(
        find_ignore_file(&ctx, &dockerfile),
        Some(ctx.join(".dockerignore"))
    );
    fs::write(df_dir.join("app.Dockerfile.dockerignore"), "b\n").unwrap();
    assert_eq!(
        find_ignore_file(&ctx, &dockerfile),
        Some(df_dir.join("app.Dockerfile.dockerignore"))
    );
    // another Dockerfile in the same place does not pick up app.Dockerfile's file
    assert_eq!(
        find_ignore_file(&ctx, &df_dir.join("Dockerfile")),
        Some(ctx.join(".dockerignore"))
    );
    fs::write(df_dir.join("Dockerfile.dockerignore"), "c\n").unwrap();
    assert_eq!(
        find_ignore_file(&ctx, &df_dir.join("Dockerfile")),
        Some(df_dir.join("Dockerfile.dockerignore"))
    );
    assert_eq!(
        find_ignore_file(&ctx, Path::new("-")),
        Some(ctx.join(".dockerignore"))
    );
    // a directory of that name is not an ignore file
    fs::create_dir(ctx.join("x.Dockerfile.dockerignore")).unwrap();
    assert_eq!(
        find_ignore_file(&ctx, &ctx.join("x.Dockerfile")),
        Some(ctx.join(".dockerignore"))
    );
}

#[test]
fn walk_keeps_what_docker_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = [
        "Dockerfile",
        "README.md",
        "CHANGELOG.md",
        "docs/guide.md",
        "docs/README.md",
        "node_modules/pkg/index.js",
        "node_modules/keep/keep.txt",
        "build/out.o",
        "build/logs/x.log",
        "src/main.go",
        "src/temp.txt",
        "src/sub/temp.txt",
        "tempa",
        "secret/key.pem",
        "secret/nested/deeper/k",
    ];
    for f in files {
        let p = root.join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, f).unwrap();
    }
    let text = "# context rules\n*.md\n!README.md\nnode_modules\n!node_modules/keep\n**/*.log\n*/temp*\n/build/*.o\nsecret/\n";
    fs::write(root.join(".dockerignore"), text).unwrap();

    let ignore =
        Dockerignore::read(&find_ignore_file(root, &root.join("Dockerfile")).unwrap()).unwrap();
    let kept = ignore.walk(root).unwrap();
    let expected = [
        ".dockerignore",
        "Dockerfile",
        "README.md",
        "build",
        "build/logs",
        "docs",
        "docs/README.md",
        "docs/guide.md",
        "node_modules",
        "node_modules/keep",
        "node_modules/keep/keep.txt",
        "src",
        "src/main.go",
        "src/sub",
        "src/sub/temp.txt",
        "tempa",
    ];
    assert_eq!(kept, expected);

    // Every file's fate agrees with the path-at-a-time answer.
    for f in files {
        assert_eq!(kept.contains(&f.to_string()), !ignore.matches(f), "{f}");
    }
    // An excluded directory is listed only because something inside was re-included.
    assert!(ignore.matches("node_modules"));
    assert!(ignore.matches("secret/nested"));
}
