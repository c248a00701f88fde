//! Slash paths as images, contexts and Dockerfiles spell them (always `/`, whatever the host), cleaned
//! the way Go's `path` package does, because BuildKit decides what a path means with it: the
//! frontend, the .dockerignore matcher, the context and the file operations all clean through here.

/// Go's `path.Clean`: the shortest equivalent slash path. `..` at the root stays at the root, a
/// relative path keeps its leading `..`s, nothing at all is `.`, and a trailing slash is dropped.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `path.Join("/", p)`: `p` cleaned as seen from the root, so it always starts with `/` and no
/// `..` climbs above it.
pub fn join_root(p: &str) -> String {
    clean_path(&format!("/{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            ("a//b/./c/", "a/b/c"),
            ("/a/../b/./c/", "/b/c"),
            ("/../a", "/a"),
            ("/..", "/"),
            ("a/..", "."),
            ("../../a/..", "../.."),
            ("a/../..", ".."),
            ("./", "."),
            ("/", "/"),
            ("**/", "**"),
        ] {
            assert_eq!(clean_path(input), want, "clean({input:?})");
        }
    }

    /// The file operations' own copy cleaned every path as if it were absolute; that is `join_root`,
    /// not `clean_path`: a relative `..` must not survive into a path inside the root.
    #[test]
    fn join_root_never_climbs_above_the_root() {
        for (input, want) in [
            ("", "/"),
            ("/", "/"),
            ("a/../b/./c/", "/b/c"),
            ("../../etc/passwd", "/etc/passwd"),
            ("/x/../../y", "/y"),
            ("app//sub/.", "/app/sub"),
        ] {
            assert_eq!(join_root(input), want, "join_root({input:?})");
        }
    }
}
