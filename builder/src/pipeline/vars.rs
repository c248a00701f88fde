//! A job's variables as GitLab gives them: every definition of a name, in the order they win
//! (built-ins, the file's `variables:`, a workflow rule's, a matrix cell's, the job's own, its
//! deciding rule's), expanded only once all are known. So a value reads the definitions that win
//! in the end, wherever they were written (`URL: https://$ENV.example.com` at the top reads the
//! `ENV` a rule gives the job), as GitLab's runner expands a job's variables. A value naming its
//! own name reads the definition below it (`PATH: $PATH:/opt/bin` in a job extends the file's);
//! a name defined nowhere reads as nothing, as in GitLab, and is said once as a warning; names
//! that refer to each other in a circle are an error.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{PipelineError, Pos};
use super::expand::{Undefined, expand, inner_pos};
use super::file::{OrderedMap, Sp, Text};

/// One definition of a variable.
#[derive(Debug, Clone)]
struct Def {
    text: String,
    /// Taken as written (a built-in, a matrix value): never expanded.
    literal: bool,
    /// Where it is written, for the errors and warnings about it.
    at: Option<Sp<String>>,
}

/// Every definition of every name, the winning one last; and the names of the job's secrets,
/// which no value reads (see [`Defs::secrets`]).
#[derive(Debug, Clone, Default)]
pub struct Defs(BTreeMap<String, Vec<Def>>, BTreeSet<String>);

/// What a variable's expansion said: the names defined nowhere (a warning each) and the circles
/// (an error each), by where they are written.
#[derive(Debug, Default)]
pub struct Said {
    pub errors: Vec<PipelineError>,
    pub warnings: Vec<(Pos, String)>,
    seen: BTreeSet<(usize, usize, String)>,
}

impl Said {
    fn once(&mut self, at: Pos, what: String) -> bool {
        self.seen.insert((at.line, at.column, what))
    }

    /// A warning at `at`, said once.
    pub fn warn(&mut self, at: Pos, what: String) {
        if self.once(at, what.clone()) {
            self.warnings.push((at, what));
        }
    }
}

impl Defs {
    /// A value taken as it is.
    pub fn literal(&mut self, name: &str, value: &str) {
        self.0.entry(name.to_string()).or_default().push(Def {
            text: value.to_string(),
            literal: true,
            at: None,
        });
    }

    /// A `variables:` map, over what is defined, leaving out the names `skip` says.
    pub fn define(&mut self, map: &OrderedMap<Sp<Text>>, skip: impl Fn(&str) -> bool) {
        for (k, v) in map.0.iter().filter(|(k, _)| !skip(&k.value)) {
            self.0.entry(k.value.clone()).or_default().push(Def {
                text: v.value.0.clone(),
                literal: false,
                at: Some(Sp::new(v.value.0.clone(), v.referenced, v.defined)),
            });
        }
    }

    /// The job's secrets: they reach its shell (and its services) when it runs, never a value
    /// of `variables:`, which is hashed into the job's key, so that a secret's value stays out
    /// of every key. A value reading one is warned of as that, not as a name defined nowhere.
    pub fn secrets(&mut self, names: impl IntoIterator<Item = String>) {
        self.1.extend(names);
    }

    /// Whether a name has a definition.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Every name's winning value, expanded.
    pub fn expand_all(&self, source: &str, said: &mut Said) -> BTreeMap<String, String> {
        let mut e = Expander {
            defs: self,
            source,
            done: BTreeMap::new(),
            open: Vec::new(),
            said,
        };
        self.0
            .iter()
            .map(|(name, defs)| (name.clone(), e.value(name, defs.len() - 1)))
            .collect()
    }
}

struct Expander<'a, 's> {
    defs: &'a Defs,
    source: &'a str,
    /// Values made, by name and definition.
    done: BTreeMap<(String, usize), String>,
    /// The definitions being expanded, to find a circle.
    open: Vec<(String, usize)>,
    said: &'s mut Said,
}

impl Expander<'_, '_> {
    /// The value of definition `level` of `name`.
    fn value(&mut self, name: &str, level: usize) -> String {
        let key = (name.to_string(), level);
        if let Some(v) = self.done.get(&key) {
            return v.clone();
        }
        let def = &self.defs.0[name][level];
        if def.literal {
            return def.text.clone();
        }
        if let Some(at) = self.open.iter().position(|k| *k == key) {
            let circle: Vec<&str> = self.open[at..].iter().map(|(n, _)| n.as_str()).collect();
            let pos = def.at.as_ref().map(super::file::pos_of).unwrap_or_default();
            let what = format!(
                "variable `{name}` refers to itself: {} -> {name}",
                circle.join(" -> ")
            );
            if self.said.once(pos, what.clone()) {
                self.said
                    .errors
                    .push(PipelineError::new(pos, what).with_hint(Some(
                        "write $$ for a literal $, or give one of them a value of its own".into(),
                    )));
            }
            return String::new();
        }
        self.open.push(key.clone());
        // Each name it reads, resolved and handed in, until the text expands whole.
        let mut known: BTreeMap<String, String> = BTreeMap::new();
        let value = loop {
            match expand(&def.text, &known) {
                Ok(v) => break v,
                Err(Undefined {
                    name: read,
                    offset,
                    width,
                }) => {
                    let below = if read == name {
                        level.checked_sub(1)
                    } else {
                        None
                    };
                    let found = match (below, self.defs.0.get(&read)) {
                        (Some(l), _) => Some(l),
                        (None, Some(defs)) if read != name => Some(defs.len() - 1),
                        _ => None,
                    };
                    let v = match found {
                        Some(l) => self.value(&read, l),
                        None => {
                            if let Some(at) = &def.at {
                                let pos = inner_pos(at, self.source, offset, width);
                                let what = if self.defs.1.contains(&read) {
                                    format!(
                                        "`${read}` is a secret of the job: it reaches the job's \
                                         shell, not `variables:` (their values are hashed into \
                                         the job's key, where no secret goes), so `{name}` reads \
                                         nothing there; read `${read}` in the script instead \
                                         (GitLab expands a masked variable here)"
                                    )
                                } else {
                                    format!(
                                        "`${read}` is defined nowhere here: `{name}` reads nothing there, as in GitLab"
                                    )
                                };
                                if self.said.once(pos, what.clone()) {
                                    self.said.warnings.push((pos, what));
                                }
                            }
                            String::new()
                        }
                    };
                    known.insert(read, v);
                }
            }
        };
        self.open.pop();
        self.done.insert(key, value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(layers: &[&[(&str, &str)]]) -> Defs {
        let mut d = Defs::default();
        for layer in layers {
            for (k, v) in *layer {
                d.0.entry(k.to_string()).or_default().push(Def {
                    text: v.to_string(),
                    literal: false,
                    at: None,
                });
            }
        }
        d
    }

    #[test]
    fn values_read_the_definitions_that_win_wherever_written() {
        let d = defs(&[
            &[
                ("URL", "https://$ENV.example.com"),
                ("ENV", "dev"),
                ("PATH", "/bin"),
            ],
            &[
                ("ENV", "prod"),
                ("PATH", "$PATH:/opt/bin"),
                ("COST", "$$5 ${NOPE}x"),
            ],
        ]);
        let mut said = Said::default();
        let v = d.expand_all("", &mut said);
        assert_eq!(v["URL"], "https://prod.example.com");
        assert_eq!(v["PATH"], "/bin:/opt/bin");
        assert_eq!(v["COST"], "$5 x");
        assert!(said.errors.is_empty(), "{:?}", said.errors);
    }

    #[test]
    fn a_circle_is_an_error_and_ends() {
        let d = defs(&[&[("A", "x$B"), ("B", "y$A")]]);
        let mut said = Said::default();
        let v = d.expand_all("", &mut said);
        assert_eq!(said.errors.len(), 1, "{:?}", said.errors);
        assert!(said.errors[0].message.contains("refers to itself"));
        assert!(v["A"].starts_with('x'));
    }
}
