//! GitLab's `!reference [KEY, KEY, ...]` tags: a value taken from elsewhere in the pipeline's
//! files (`script: - !reference [.setup, script]`). The YAML reader drops tags it does not know,
//! so left alone the tag read as the list of its keys: a job ran the words `.setup` and `script`
//! as commands. Each tagged list is replaced, in the file's text and on its own lines, by the value
//! it names written in YAML's flow style, before the file is read: the value then reads as if it
//! were written there (a list in a list is flattened where GitLab flattens it: scripts, `rules:`).
//! Values that hold references of their own are resolved too, at most 10 deep, as GitLab allows.

use granit_parser::{Event, Parser, ScalarStyle};

use super::error::{PipelineError, Pos};

/// How deep references may lead through other references (GitLab's limit).
const MAX_DEPTH: usize = 10;

/// A YAML node of a file, with where it is written (byte offsets) and, for a `!reference` list,
/// its keys.
#[derive(Debug, Clone)]
pub(super) struct Node {
    value: Value,
    start: usize,
    end: usize,
    line: usize,
    column: usize,
    reference: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum Value {
    /// The text, and whether it was written plain (unquoted), so that `true` stays a boolean.
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// The node tree of `text`, or `None` when it holds no `!reference` tag worth reading or does not
/// parse (the reader that follows reports that).
pub(super) fn tree(text: &str) -> Option<Node> {
    let chars_to_bytes: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let byte = |chars: usize| chars_to_bytes.get(chars).copied().unwrap_or(text.len());
    // Open collections: the node, a map's key waiting for its value, whether it is a
    // `!reference` list, and its anchor (0: none).
    let mut stack: Vec<(Node, Option<String>, bool, usize)> = Vec::new();
    let mut anchors: std::collections::HashMap<usize, Node> = std::collections::HashMap::new();
    let mut root = None;
    // Adds a finished node to its parent (a map takes a key, then its value).
    let attach = |stack: &mut Vec<(Node, Option<String>, bool, usize)>,
                  root: &mut Option<Node>,
                  node: Node| match stack.last_mut() {
        None => *root = Some(node),
        Some((parent, key, _, _)) => match &mut parent.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => match key.take() {
                None => {
                    *key = Some(match node.value {
                        Value::Scalar(s, _) => s,
                        _ => String::new(),
                    })
                }
                Some(k) => entries.push((k, node)),
            },
            Value::Scalar(..) => {}
        },
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        let (start, line, column) = (
            byte(span.start.index()),
            span.start.line(),
            span.start.col(),
        );
        let end = byte(span.end.index());
        let at = |value| Node {
            value,
            start,
            end,
            line,
            column,
            reference: None,
        };
        match event {
            Event::Scalar(value, style, anchor, _) => {
                let node = at(Value::Scalar(
                    value.into_owned(),
                    style == ScalarStyle::Plain,
                ));
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                attach(&mut stack, &mut root, node);
            }
            Event::SequenceStart(_, anchor, tag) => {
                let reference = tag
                    .as_ref()
                    .is_some_and(|t| t.handle() == "!" && t.suffix() == "reference");
                stack.push((at(Value::Seq(Vec::new())), None, reference, anchor));
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push((at(Value::Map(Vec::new())), None, false, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (mut node, _, reference, anchor) = stack.pop()?;
                node.end = end.max(node.end);
                if reference && let Value::Seq(items) = &node.value {
                    node.reference = Some(
                        items
                            .iter()
                            .map(|i| match &i.value {
                                Value::Scalar(s, _) => s.clone(),
                                _ => String::new(),
                            })
                            .collect(),
                    );
                }
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                attach(&mut stack, &mut root, node);
            }
            Event::Alias(id) => {
                let mut node = anchors.get(&id)?.clone();
                (node.start, node.end, node.line, node.column) = (start, end, line, column);
                attach(&mut stack, &mut root, node);
            }
            _ => {}
        }
    }
    root
}

/// `text` with each `!reference` tag of its `own` tree replaced by the value it names, looked up
/// in `trees` (the pipeline's files, the first that has the key winning); `None` when it has none.
pub(super) fn resolve(
    text: &str,
    own: &Node,
    trees: &[&Node],
) -> Result<Option<String>, Vec<PipelineError>> {
    let mut found = Vec::new();
    references(own, &mut found);
    if found.is_empty() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let mut replaced = Vec::new();
    // What the references write, in all: a value referenced by references referenced many times
    // over would otherwise grow without bound.
    let mut budget = super::MAX_FILE_BYTES;
    for r in found {
        match render_reference(r, trees, 0, &mut budget) {
            Ok(flow) => {
                // The tag written before the list is replaced with it.
                let start = text[..r.start]
                    .rfind("!reference")
                    .filter(|at| !text[*at..r.start].contains('\n'))
                    .unwrap_or(r.start);
                // The lines the tag spanned stay lines: every later position keeps its line.
                let breaks = text[start..r.end].matches('\n').count();
                replaced.push((start, r.end, format!("{flow}{}", "\n".repeat(breaks))));
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = text.to_string();
    replaced.sort_by_key(|(start, _, _)| std::cmp::Reverse(*start));
    for (start, end, with) in replaced {
        out.replace_range(start..end, &with);
    }
    Ok(Some(out))
}

/// The pipeline's file texts (the pipeline file's first, then the files it includes in the order
/// read) with their `!reference` tags resolved: the new text of each that has one (`None`: as
/// it was). A key is looked up as GitLab's merged file would give it: in the pipeline file, else
/// in the latest included file that has it. An error comes with the index of its file.
pub(super) fn resolve_all(
    texts: &[&str],
) -> Result<Vec<Option<String>>, Vec<(usize, PipelineError)>> {
    if !texts.iter().any(|t| t.contains("!reference")) {
        return Ok(vec![None; texts.len()]);
    }
    let trees: Vec<Option<Node>> = texts.iter().map(|t| tree(t)).collect();
    let order: Vec<&Node> = std::iter::once(0)
        .chain((1..texts.len()).rev())
        .filter_map(|i| trees[i].as_ref())
        .collect();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let resolved = match &trees[i] {
            Some(own) if text.contains("!reference") => resolve(text, own, &order),
            _ => Ok(None),
        };
        match resolved {
            Ok(r) => out.push(r),
            Err(e) => {
                errors.extend(e.into_iter().map(|e| (i, e)));
                out.push(None);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The outermost `!reference` lists under `node`.
fn references<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    if node.reference.is_some() {
        out.push(node);
        return;
    }
    match &node.value {
        Value::Seq(items) => items.iter().for_each(|i| references(i, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, v)| references(v, out)),
        Value::Scalar(..) => {}
    }
}

fn render_reference(
    r: &Node,
    trees: &[&Node],
    depth: usize,
    budget: &mut usize,
) -> Result<String, PipelineError> {
    let keys = r.reference.as_deref().unwrap_or_default();
    let written = format!("!reference [{}]", keys.join(", "));
    let at = Pos::new(r.line, r.column + 1, 1);
    if depth >= MAX_DEPTH {
        return Err(PipelineError::new(
            at,
            format!("{written} leads through more than {MAX_DEPTH} references"),
        )
        .with_hint(Some(
            "GitLab follows at most 10; a reference may lead back to itself".into(),
        )));
    }
    if keys.is_empty() || keys.iter().any(String::is_empty) {
        return Err(PipelineError::new(
            at,
            format!("{written}: a reference names keys, each a string"),
        ));
    }
    let mut missing = format!("no `{}` in the pipeline's files", keys[0]);
    for tree in trees {
        let mut node = *tree;
        let mut walked = true;
        for (i, key) in keys.iter().enumerate() {
            let next = match &node.value {
                Value::Map(entries) => entries.iter().rev().find(|(k, _)| k == key),
                _ => None,
            };
            match next {
                Some((_, n)) => node = n,
                None => {
                    if i > 0 {
                        missing = format!("`{}` has no key `{key}`", keys[..i].join("."));
                    }
                    walked = false;
                    break;
                }
            }
        }
        if walked {
            let text = render(node, trees, depth + 1, budget)?;
            *budget = budget.checked_sub(text.len()).ok_or_else(|| {
                PipelineError::new(
                    at,
                    format!(
                        "{written}: the references write more than {} bytes",
                        super::MAX_FILE_BYTES
                    ),
                )
            })?;
            return Ok(text);
        }
    }
    Err(PipelineError::new(at, format!("{written}: {missing}")))
}

/// `node` in YAML's flow style, on one line.
fn render(
    node: &Node,
    trees: &[&Node],
    depth: usize,
    budget: &mut usize,
) -> Result<String, PipelineError> {
    if node.reference.is_some() {
        return render_reference(node, trees, depth, budget);
    }
    Ok(match &node.value {
        Value::Scalar(s, plain) => scalar(s, *plain),
        Value::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push(render(i, trees, depth, budget)?);
            }
            format!("[{}]", out.join(", "))
        }
        Value::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                out.push(format!(
                    "{}: {}",
                    scalar(k, false),
                    render(v, trees, depth, budget)?
                ));
            }
            format!("{{{}}}", out.join(", "))
        }
    })
}

/// A scalar as flow YAML: a plain word stays plain (so `true`, `3` and `null` keep their types),
/// anything else is double-quoted with JSON's escapes, which YAML reads the same.
fn scalar(s: &str, plain: bool) -> String {
    let word = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
        && !s.starts_with(['-', '.']);
    if plain && word {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(text: &str) -> String {
        let t = tree(text).unwrap();
        resolve(text, &t, &[&t])
            .unwrap()
            .unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn a_reference_is_replaced_by_the_value_it_names_on_its_own_lines() {
        let text = ".setup:\n  script:\n    - echo \"a, b\"\n    - make\n  vars: &v {A: \"1\", on: true}\njobs:\n  t:\n    script:\n      - !reference [.setup,\n          script]\n      - echo after\n    variables: !reference [.setup, vars]\n";
        let out = resolved(text);
        assert_eq!(out.lines().count(), text.lines().count(), "{out}");
        assert!(
            out.contains("      - [\"echo \\\"a, b\\\"\", make]\n"),
            "{out}"
        );
        assert!(
            out.contains("    variables: {\"A\": \"1\", \"on\": true}\n"),
            "{out}"
        );
        assert!(!out.contains("!reference"), "{out}");
    }

    #[test]
    fn a_missing_key_or_a_loop_is_an_error_at_the_reference() {
        let err = |text: &str| {
            let t = tree(text).unwrap();
            resolve(text, &t, &[&t]).unwrap_err().remove(0)
        };
        let e = err("a:\n  x: 1\nb: !reference [a, y]\n");
        assert_eq!(e.pos.line, 3, "{e:?}");
        assert!(e.message.contains("`a` has no key `y`"), "{e:?}");
        let e = err("b: !reference [nothing]\n");
        assert!(e.message.contains("no `nothing`"), "{e:?}");
        let e = err("a: !reference [b]\nb: !reference [a]\n");
        assert!(e.message.contains("more than 10"), "{e:?}");
        // Ten levels, each naming the one below ten times: 10^9 copies of `x`, refused.
        let mut bomb = String::from("l0: [x]\n");
        for i in 1..10 {
            let refs = vec![format!("!reference [l{}]", i - 1); 10].join(", ");
            bomb.push_str(&format!("l{i}: [{refs}]\n"));
        }
        bomb.push_str("top: !reference [l9]\n");
        let e = err(&bomb);
        assert!(e.message.contains("write more than"), "{e:?}");
    }
}
