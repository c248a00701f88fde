//! What `docker build --call=targets|outline` prints, read from the syntax tree without building:
//! the stages a Dockerfile offers (with the comment above each `FROM` as its description), and for
//! one target the build arguments it reads (default and the comment above each `ARG`), the secrets
//! and ssh agents its `RUN --mount`s ask for.

use std::collections::BTreeSet;

use super::ast::{Dockerfile, Node};
use super::instructions::csv_fields;

/// A stage `--target` can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The stage's name, or its index when it has none.
    pub name: String,
    /// The comment lines directly above its `FROM`.
    pub description: String,
    pub base: String,
    /// The last stage: what a build without `--target` builds.
    pub default: bool,
    pub line: usize,
}

/// A build argument a target reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineArg {
    pub name: String,
    pub default: Option<String>,
    pub description: String,
    pub line: usize,
}

/// A secret or ssh agent a target's steps mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineMount {
    pub id: String,
    pub required: bool,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outline {
    pub target: Target,
    pub args: Vec<OutlineArg>,
    pub secrets: Vec<OutlineMount>,
    pub ssh: Vec<OutlineMount>,
}

struct Stage<'a> {
    from: &'a Node,
    nodes: Vec<&'a Node>,
}

fn stages(df: &Dockerfile) -> (Vec<&Node>, Vec<Stage<'_>>) {
    let mut global = Vec::new();
    let mut out: Vec<Stage<'_>> = Vec::new();
    for n in &df.children {
        if n.instruction == "from" {
            out.push(Stage {
                from: n,
                nodes: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.nodes.push(n);
        } else {
            global.push(n);
        }
    }
    (global, out)
}

/// `FROM base [AS name]`: the base as written and the name.
fn from_parts(n: &Node) -> (String, Option<String>) {
    let v = n.args.values();
    let base = v.first().cloned().unwrap_or_default();
    let name = match v {
        [_, as_kw, name, ..] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_lowercase()),
        _ => None,
    };
    (base, name)
}

fn description(n: &Node) -> String {
    n.prev_comment
        .iter()
        .map(|c| c.trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every stage, in order.
pub fn targets(df: &Dockerfile) -> Vec<Target> {
    let (_, stages) = stages(df);
    let last = stages.len().saturating_sub(1);
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (base, name) = from_parts(s.from);
            Target {
                name: name.unwrap_or_else(|| i.to_string()),
                description: description(s.from),
                base,
                default: i == last,
                line: s.from.span.start.line,
            }
        })
        .collect()
}

/// The outline of `target` (the last stage when `None`); `Err` names the target that is not there.
pub fn outline(df: &Dockerfile, target: Option<&str>) -> Result<Outline, String> {
    let (global, stages) = stages(df);
    let all = targets(df);
    let index = match target {
        None => all
            .len()
            .checked_sub(1)
            .ok_or("the Dockerfile has no stage")?,
        Some(t) => all
            .iter()
            .position(|s| s.name.eq_ignore_ascii_case(t))
            .ok_or_else(|| format!("target stage {t:?} could not be found"))?,
    };
    // The stages the target needs: its base chain and what it copies or mounts from, by name or
    // index.
    let find = |word: &str| {
        all.iter()
            .position(|s| s.name.eq_ignore_ascii_case(word))
            .or_else(|| word.parse::<usize>().ok().filter(|i| *i < all.len()))
    };
    let mut needed = BTreeSet::new();
    let mut stack = vec![index];
    while let Some(i) = stack.pop() {
        if !needed.insert(i) {
            continue;
        }
        if let Some(j) = find(&all[i].base).filter(|j| *j < i) {
            stack.push(j);
        }
        for n in &stages[i].nodes {
            for f in &n.flags {
                let from = match f.name() {
                    "from" => f.value().map(str::to_string),
                    "mount" => mount_field(f.value().unwrap_or(""), "from"),
                    _ => None,
                };
                if let Some(j) = from.as_deref().and_then(find).filter(|j| *j < i) {
                    stack.push(j);
                }
            }
        }
    }
    let mut args: Vec<OutlineArg> = Vec::new();
    let mut secrets: Vec<OutlineMount> = Vec::new();
    let mut ssh: Vec<OutlineMount> = Vec::new();
    let mut add_args = |n: &Node| {
        for v in n.args.values() {
            let (name, default) = match v.split_once('=') {
                Some((k, d)) => (k.to_string(), Some(d.to_string())),
                None => (v.clone(), None),
            };
            if let Some(a) = args.iter_mut().find(|a| a.name == name) {
                // A stage's `ARG NAME` without a default takes the global one's.
                if a.default.is_none() {
                    a.default = default;
                }
                continue;
            }
            args.push(OutlineArg {
                name,
                default,
                description: description(n),
                line: n.span.start.line,
            });
        }
    };
    for n in global.iter().filter(|n| n.instruction == "arg") {
        add_args(n);
    }
    for &i in &needed {
        for n in stages[i].nodes.iter().filter(|n| n.instruction == "arg") {
            add_args(n);
        }
    }
    for &i in &needed {
        for n in stages[i].nodes.iter().filter(|n| n.instruction == "run") {
            for f in n.flags.iter().filter(|f| f.name() == "mount") {
                let text = f.value().unwrap_or("");
                let ty = mount_field(text, "type").unwrap_or_default();
                let required =
                    mount_field(text, "required").is_some_and(|v| v.is_empty() || v == "true");
                let line = n.span.start.line;
                match ty.as_str() {
                    "secret" => {
                        let id = mount_field(text, "id").or_else(|| {
                            mount_field(text, "target")
                                .or_else(|| mount_field(text, "dst"))
                                .map(|t| t.rsplit('/').next().unwrap_or("").to_string())
                        });
                        if let Some(id) = id.filter(|i| !secrets.iter().any(|s| &s.id == i)) {
                            secrets.push(OutlineMount { id, required, line });
                        }
                    }
                    "ssh" => {
                        let id = mount_field(text, "id").unwrap_or_else(|| "default".into());
                        if !ssh.iter().any(|s| s.id == id) {
                            ssh.push(OutlineMount { id, required, line });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(Outline {
        target: all[index].clone(),
        args,
        secrets,
        ssh,
    })
}

/// The value of `key` in a `--mount` spec (`""` for a bare `required`).
fn mount_field(text: &str, key: &str) -> Option<String> {
    csv_fields(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| match f.split_once('=') {
            Some((k, v)) if k.eq_ignore_ascii_case(key) => Some(v.to_string()),
            None if f.eq_ignore_ascii_case(key) => Some(String::new()),
            _ => None,
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parser::parse_file;

    const DF: &str = "\
# the Go toolchain version
ARG GO=1.22
ARG UNUSED_GLOBAL=1

# compiles the binary
FROM golang:${GO} AS build
# where the module cache goes
ARG GOCACHE=/cache
RUN --mount=type=secret,id=netrc,required --mount=type=ssh go build

FROM build AS test
ARG VERBOSE
RUN --mount=type=secret,target=/run/secrets/token go test

# the image that ships
FROM scratch AS release
COPY --from=build /app /app
";

    #[test]
    fn targets_are_the_stages_with_their_comments_and_the_last_is_the_default() {
        let df = parse_file("Dockerfile", DF).unwrap();
        let t = targets(&df);
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["build", "test", "release"]);
        assert_eq!(t[0].description, "compiles the binary");
        assert_eq!(t[1].description, "");
        assert!(t[2].default && !t[0].default);
    }

    #[test]
    fn an_outline_has_the_args_secrets_and_ssh_of_what_the_target_needs() {
        let df = parse_file("Dockerfile", DF).unwrap();
        let o = outline(&df, Some("release")).unwrap();
        let args: Vec<_> = o
            .args
            .iter()
            .map(|a| (a.name.as_str(), a.default.as_deref()))
            .collect();
        // The global ARGs, and build's (release copies from build), not test's.
        assert_eq!(
            args,
            [
                ("GO", Some("1.22")),
                ("UNUSED_GLOBAL", Some("1")),
                ("GOCACHE", Some("/cache"))
            ]
        );
        assert_eq!(o.args[0].description, "the Go toolchain version");
        assert_eq!(o.secrets.len(), 1);
        assert_eq!(
            (o.secrets[0].id.as_str(), o.secrets[0].required),
            ("netrc", true)
        );
        assert_eq!(o.ssh[0].id, "default");
        let test = outline(&df, Some("test")).unwrap();
        let ids: Vec<_> = test.secrets.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["netrc", "token"],
            "test builds on build, and mounts its own"
        );
        assert!(
            test.args
                .iter()
                .any(|a| a.name == "VERBOSE" && a.default.is_none())
        );
        assert!(outline(&df, Some("nope")).unwrap_err().contains("nope"));
    }
}
