//! Variable expansion (`${NAME}`, `$NAME`, `$$` for a dollar) and `parallel: matrix:` expansion,
//! the two ways one written job or value becomes several concrete ones.
//!
//! An undefined variable is an error here, unlike GitLab (which expands it to nothing): in a tag
//! or an image name a typo would otherwise push `reg/app:v1.` and pass. (`variables:` values are
//! expanded as GitLab's are, in `vars.rs`.) Built-ins are always defined, empty when unknown
//! (outside a git repository). Scripts are not expanded here: the shell does it at run time, with
//! the job's variables in its environment.

use std::collections::BTreeMap;

use super::error::{PipelineError, Pos};
use super::file::{OneOrMany, OrderedMap, Parallel, Sp, Text, pos_of};
use crate::frontend::suggest::suggest;

/// Where a located scalar's text starts in the file, so that an error can point at a char inside
/// it: one column past the quote of a quoted scalar, and `None` for a block scalar (`|`, `>`),
/// whose lines do not map to columns one to one.
pub fn text_origin<T>(s: &Sp<T>, source: &str) -> Option<Pos> {
    let base = pos_of(s);
    let byte = usize::try_from(s.referenced.span().byte_offset()?).ok()?;
    match source.get(byte..)?.chars().next()? {
        '\'' | '"' => Some(base.shifted(1, 1)),
        '|' | '>' => None,
        _ => Some(base),
    }
}

/// The position of `width` chars at `offset` chars into the located scalar `s`, or the scalar
/// itself when its text cannot be mapped (see [`text_origin`]).
pub fn inner_pos<T>(s: &Sp<T>, source: &str, offset: usize, width: usize) -> Pos {
    match text_origin(s, source) {
        // A value written with escapes or spanning lines (a folded multi-line quoted scalar) may
        // not line up: a position that would leave the value's first line falls back to the
        // value itself (found by the fuzzer: an offset past the end of the line).
        Some(origin) => {
            let p = origin.shifted(offset, width);
            let line_chars = source
                .lines()
                .nth(p.line.saturating_sub(1))
                .map_or(0, |l| l.chars().count());
            if p.column + p.width.max(1) - 1 <= line_chars {
                p
            } else {
                pos_of(s)
            }
        }
        None => pos_of(s),
    }
}

/// An undefined variable in a string: its char offset, width, and name.
#[derive(Debug, PartialEq, Eq)]
pub struct Undefined {
    pub offset: usize,
    pub width: usize,
    pub name: String,
}

/// Expands `${NAME}` and `$NAME` from `vars`; `$$` is a literal `$`, and a `$` not followed by a
/// name stays as it is (`$1` in a sed expression).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, Undefined> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let is_start = |c: &char| c.is_ascii_alphabetic() || *c == '_';
    let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        let (name_start, braced) = match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
                continue;
            }
            Some('{') => (i + 2, true),
            Some(c) if is_start(c) => (i + 1, false),
            _ => {
                out.push('$');
                i += 1;
                continue;
            }
        };
        let mut end = name_start;
        while chars.get(end).is_some_and(is_name) {
            end += 1;
        }
        let closed = !braced || chars.get(end) == Some(&'}');
        if end == name_start || !closed || !chars.get(name_start).is_some_and(is_start) {
            // `${` without a name and `}`: not a reference, keep the text.
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = chars[name_start..end].iter().collect();
        let next = if braced { end + 1 } else { end };
        match vars.get(&name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(Undefined {
                    offset: i,
                    width: next - i,
                    name,
                });
            }
        }
        i = next;
    }
    Ok(out)
}

/// Expands a located string, or the located error naming the undefined variable.
pub fn expand_at(
    s: &Sp<String>,
    source: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, PipelineError> {
    expand(&s.value, vars).map_err(|u| {
        let hint = suggest(&u.name, vars.keys().map(String::as_str))
            .map(|n| format!("did you mean ${{{n}}}?"))
            .or_else(|| Some("define it under `variables:`, or write $$ for a literal $".into()));
        PipelineError::new(
            inner_pos(s, source, u.offset, u.width),
            format!("undefined variable `{}`", u.name),
        )
        .with_hint(hint)
    })
}

/// Expands a `variables:` map in order into `vars`: each value sees the ones above it (a
/// service's variables, over its job's).
pub fn define(
    map: &OrderedMap<Sp<Text>>,
    source: &str,
    vars: &mut BTreeMap<String, String>,
    errors: &mut Vec<PipelineError>,
) {
    for (k, v) in &map.0 {
        let s = Sp::new(v.value.0.clone(), v.referenced, v.defined);
        match expand_at(&s, source, vars) {
            Ok(value) => {
                vars.insert(k.value.clone(), value);
            }
            Err(e) => errors.push(e),
        }
    }
}

/// One job a matrix makes: its name suffix values and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The values in key order: the job is named `unit: [1, p]`.
    pub values: Vec<String>,
    pub vars: Vec<(String, String)>,
}

/// Most jobs one matrix may make (GitLab allows 200).
pub const MAX_MATRIX_JOBS: usize = 200;

/// Expands `parallel: matrix:`: each map in the list gives the product of its lists; each cell
/// also gets `CI_NODE_INDEX` (1 to N, in the order the cells are listed) and `CI_NODE_TOTAL`.
pub fn matrix(p: &Sp<Parallel>) -> Result<Vec<Instance>, PipelineError> {
    let matrix = match &p.value {
        Parallel::Matrix(m) => m,
        Parallel::Copies(n) => return copies(*n, pos_of(p)),
    };
    let empty = |pos| {
        PipelineError::new(pos, "matrix expands to no jobs")
            .with_hint(Some("give every variable at least one value".into()))
    };
    if matrix.value.is_empty() {
        return Err(empty(pos_of(matrix)));
    }
    let mut out = Vec::new();
    for entry in &matrix.value {
        let map: &OrderedMap<OneOrMany<Text>> = &entry.value;
        if map.0.is_empty() {
            return Err(empty(pos_of(entry)));
        }
        let mut combos = vec![Instance {
            values: Vec::new(),
            vars: Vec::new(),
        }];
        for (k, vals) in &map.0 {
            if vals.0.is_empty() {
                return Err(empty(pos_of(k)));
            }
            if combos.len().saturating_mul(vals.0.len()) + out.len() > MAX_MATRIX_JOBS {
                return Err(PipelineError::new(
                    pos_of(k),
                    format!("matrix expands to more than {MAX_MATRIX_JOBS} jobs"),
                ));
            }
            combos = combos
                .iter()
                .flat_map(|c| {
                    vals.0.iter().map(move |v| {
                        let mut c = c.clone();
                        c.values.push(v.0.clone());
                        c.vars.push((k.value.clone(), v.0.clone()));
                        c
                    })
                })
                .collect();
        }
        out.extend(combos);
    }
    // Each cell is one of the job's nodes, as GitLab numbers them (test splitters read these).
    let total = out.len().to_string();
    for (i, cell) in out.iter_mut().enumerate() {
        cell.vars
            .push(("CI_NODE_INDEX".to_string(), (i + 1).to_string()));
        cell.vars.push(("CI_NODE_TOTAL".to_string(), total.clone()));
    }
    Ok(out)
}

/// GitLab's `parallel: N`: N instances, `1/N` to `N/N`, with `CI_NODE_INDEX` and
/// `CI_NODE_TOTAL`.
fn copies(n: u64, at: super::error::Pos) -> Result<Vec<Instance>, PipelineError> {
    if n == 0 || n > MAX_MATRIX_JOBS as u64 {
        return Err(
            PipelineError::new(at, format!("parallel: {n} copies")).with_hint(Some(format!(
                "give 1 to {MAX_MATRIX_JOBS} copies, as GitLab allows"
            ))),
        );
    }
    Ok((1..=n)
        .map(|i| Instance {
            values: vec![format!("{i}/{n}")],
            vars: vec![
                ("CI_NODE_INDEX".to_string(), i.to_string()),
                ("CI_NODE_TOTAL".to_string(), n.to_string()),
            ],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("A", "1"), ("B_2", "two"), ("EMPTY", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_both_forms_and_escapes() {
        let v = vars();
        assert_eq!(expand("v${A}.$B_2-$EMPTY.", &v).unwrap(), "v1.two-.");
        assert_eq!(expand("$$A costs $5 ${", &v).unwrap(), "$A costs $5 ${");
        assert_eq!(expand("héllo $A", &v).unwrap(), "héllo 1");
        assert_eq!(
            expand("x ${NOPE}", &v),
            Err(Undefined {
                offset: 2,
                width: 7,
                name: "NOPE".into()
            })
        );
        assert_eq!(expand("$NOPE/x", &v).unwrap_err().width, 5);
    }
}
