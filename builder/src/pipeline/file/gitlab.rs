//! The values GitLab writes in more than one form: a job's `image:` (a reference, or `{name,
//! entrypoint}`), a service (a bare image, GitLab's map with `alias:`, or forge's map with
//! `image:`), `only:`/`except:` (a list of refs, or a map), `artifacts: expire_in:` and
//! `reports:`; and `workflow:`.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{OneOrMany, OrderedMap, ReadySpec, RuleSpec, Sp, Text};

/// GitLab's `only:` or `except:`: a list of refs, or a map of `refs`, `changes` and `variables`.
#[derive(Debug, Clone, Default)]
pub struct OnlySpec {
    /// Branch or tag names, `/regex/`, `branches`, `tags`.
    pub refs: Option<Vec<Sp<String>>>,
    /// Globs of changed paths, as `rules: changes:`.
    pub changes: Option<Vec<Sp<String>>>,
    /// Expressions, as `rules: if:`; one that holds is a match.
    pub variables: Option<Vec<Sp<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnlyMap {
    refs: Option<Vec<Sp<String>>>,
    changes: Option<Vec<Sp<String>>>,
    variables: Option<Vec<Sp<String>>>,
}

impl<'de> Deserialize<'de> for OnlySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OnlySpec, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnlySpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of refs, or a map of `refs`, `changes` and `variables`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OnlySpec, A::Error> {
                let mut refs = Vec::new();
                while let Some(r) = seq.next_element()? {
                    refs.push(r);
                }
                Ok(OnlySpec {
                    refs: Some(refs),
                    ..OnlySpec::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnlySpec, A::Error> {
                let m = OnlyMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(OnlySpec {
                    refs: m.refs,
                    changes: m.changes,
                    variables: m.variables,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// GitLab's most levels of lists within a `script:` (its "nested array of strings up to 10
/// levels deep").
const MAX_COMMAND_NESTING: usize = 10;

/// `script:`, `before_script:` or `after_script:` as GitLab reads them: one command, or a list
/// whose items are commands or lists of them (what a YAML anchor of a list makes, `- *setup`),
/// flattened in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands(pub Vec<String>);

impl<'de> Deserialize<'de> for Commands {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Commands, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(CommandsVisitor {
            out: &mut out,
            depth: 0,
        })?;
        Ok(Commands(out))
    }
}

struct CommandsVisitor<'a> {
    out: &'a mut Vec<String>,
    depth: usize,
}

impl<'de> Visitor<'de> for CommandsVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a command, or a list of commands (lists within it are flattened)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.out.push(v.to_string());
        Ok(())
    }
    // A plain scalar that YAML types (`- true`, `- 42`) is the command its text names.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == MAX_COMMAND_NESTING {
            return Err(de::Error::custom(format!(
                "commands nest deeper than {MAX_COMMAND_NESTING} lists"
            )));
        }
        while seq
            .next_element_seed(CommandsVisitor {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

impl<'de> de::DeserializeSeed<'de> for CommandsVisitor<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A job's `image:`: the image and what runs the script in it.
#[derive(Debug, Clone)]
pub struct JobImageSpec {
    /// A named image, `NAME@STAGE`, or a registry reference.
    pub name: Sp<String>,
    /// GitLab's `entrypoint:`: the script's shell runs as its arguments (`["/bin/bash", "-lc",
    /// "exec \"$@\"", "--"]`). `[""]` or none: the shell alone, the image's ENTRYPOINT never
    /// in the way (what GitLab's `[""]` asks for).
    pub entrypoint: Option<Sp<Vec<Sp<String>>>>,
    /// Written as a map (`{name: ..., entrypoint: ...}`), which `extends:` merges key by key.
    pub map: bool,
}

impl JobImageSpec {
    /// `over` laid on `self` (`extends:`): two maps merge key by key, as GitLab deep-merges them;
    /// a bare name replaces a map whole, and is replaced whole.
    pub fn merged(self, over: JobImageSpec) -> JobImageSpec {
        if self.map && over.map {
            JobImageSpec {
                entrypoint: over.entrypoint.or(self.entrypoint),
                ..over
            }
        } else {
            over
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobImageMap {
    name: Sp<String>,
    entrypoint: Option<Sp<Vec<Sp<String>>>>,
}

impl<'de> Deserialize<'de> for JobImageSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobImageSpec, D::Error> {
        let e = Sp::<BareOr<JobImageMap>>::deserialize(d)?;
        Ok(match e.value {
            BareOr::Bare(name) => JobImageSpec {
                name: Sp::new(name, e.referenced, e.defined),
                entrypoint: None,
                map: false,
            },
            BareOr::Map(m) => JobImageSpec {
                name: m.name,
                entrypoint: m.entrypoint,
                map: true,
            },
        })
    }
}

/// A container started beside a job's (a database for integration tests), written as forge's
/// map (`name:` its host name, `image:`), GitLab's map (`name:` the image, `alias:` its host
/// names) or GitLab's bare image (`- postgres:16`).
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// forge's `name:` (given with `image:`): the one name the job reaches it by.
    pub name: Option<Sp<String>>,
    /// GitLab's `alias:`, one or more names split at commas and spaces. Without `name:` or
    /// `alias:` the names come from the image, as GitLab makes them (`tutum/wordpress:6`:
    /// `tutum__wordpress` and `tutum-wordpress`).
    pub aliases: Vec<Sp<String>>,
    pub image: Sp<String>,
    /// Replaces the image's ENTRYPOINT, and then its CMD too unless `command:` is given, as
    /// `docker run --entrypoint` does; `[""]` leaves no entrypoint.
    pub entrypoint: Option<Vec<Sp<String>>>,
    /// The command, in place of the image's.
    pub command: Option<Vec<Sp<String>>>,
    pub variables: OrderedMap<Sp<Text>>,
    /// Secrets of the job the service gets too, as environment variables and as
    /// `/run/secrets/NAME` (a database's password: `POSTGRES_PASSWORD_FILE: /run/secrets/DB`).
    pub secrets: Vec<Sp<String>>,
    pub ready: Option<ReadySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMap {
    name: Option<Sp<String>>,
    image: Option<Sp<String>>,
    alias: Option<Sp<String>>,
    entrypoint: Option<Vec<Sp<String>>>,
    command: Option<Vec<Sp<String>>>,
    #[serde(default)]
    variables: OrderedMap<Sp<Text>>,
    #[serde(default)]
    secrets: Vec<Sp<String>>,
    ready: Option<ReadySpec>,
}

impl<'de> Deserialize<'de> for ServiceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServiceSpec, D::Error> {
        let e = Sp::<BareOr<ServiceMap>>::deserialize(d)?;
        let m = match e.value {
            BareOr::Bare(image) => ServiceMap {
                name: None,
                image: Some(Sp::new(image, e.referenced, e.defined)),
                alias: None,
                entrypoint: None,
                command: None,
                variables: OrderedMap::default(),
                secrets: Vec::new(),
                ready: None,
            },
            BareOr::Map(m) => m,
        };
        // forge's form names the image with `image:`; GitLab's with `name:`.
        let (name, image) = match (m.name, m.image) {
            (name, Some(image)) => (name, image),
            (Some(image), None) => (None, image),
            (None, None) => {
                return Err(de::Error::custom(
                    "a service needs `image:` (or GitLab's `name:` naming the image)",
                ));
            }
        };
        let aliases = m.alias.map_or_else(Vec::new, |a| {
            a.value
                .split([',', ' ', '\t'])
                .filter(|n| !n.is_empty())
                .map(|n| Sp::new(n.to_string(), a.referenced, a.defined))
                .collect()
        });
        Ok(ServiceSpec {
            name,
            aliases,
            image,
            entrypoint: m.entrypoint,
            command: m.command,
            variables: m.variables,
            secrets: m.secrets,
            ready: m.ready,
        })
    }
}

/// A string, or a map read as `M`: the two ways GitLab writes an image.
enum BareOr<M> {
    Bare(String),
    Map(M),
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for BareOr<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<M>(PhantomData<M>);
        impl<'de, M: Deserialize<'de>> Visitor<'de> for V<M> {
            type Value = BareOr<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image reference, or a map with `name`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(BareOr::Bare(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                M::deserialize(de::value::MapAccessDeserializer::new(map)).map(BareOr::Map)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// GitLab's `artifacts: expire_in:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireIn {
    Never,
    After(Duration),
}

/// Parses a duration as GitLab's `expire_in` takes one: numbers each followed by a unit (`30
/// days`, `3 mins 4 sec`, `2h20min`, `1 week and 2 days`; a month is 30 days, a year 365), a bare
/// number of seconds, or `never`.
pub fn parse_expire_in(s: &str) -> Result<ExpireIn, String> {
    let bad = || {
        format!(
            "invalid expire_in {s:?}: write it as `30 days`, `1 week`, `2 hrs 20 min` or `never`"
        )
    };
    let text = s.trim().to_ascii_lowercase();
    if text == "never" {
        return Ok(ExpireIn::Never);
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(|n| ExpireIn::After(Duration::from_secs(n)))
            .map_err(|_| bad());
    }
    match human_duration(&text) {
        Ok(Some(d)) => Ok(ExpireIn::After(d)),
        Ok(None) => Err(bad()),
        Err(()) => Err(format!("expire_in {s:?} is too long")),
    }
}

/// GitLab's durations in words (its ChronicDuration): `2 hrs 20 min`, `3h 30m`, `1 week and 2
/// days`, lowercase. `Ok(None)` when `text` is not one, `Err` when it overflows.
pub(crate) fn human_duration(text: &str) -> Result<Option<Duration>, ()> {
    let mut total: u64 = 0;
    let mut rest = text;
    let mut terms = 0;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(r) = rest.strip_prefix("and ") {
            rest = r.trim_start();
        }
        if rest.is_empty() {
            break;
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Ok(None);
        }
        let n: u64 = rest[..digits].parse().map_err(|_| ())?;
        rest = rest[digits..].trim_start();
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..letters] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "wk" | "wks" | "week" | "weeks" => 7 * 86_400,
            "mo" | "mos" | "month" | "months" => 30 * 86_400,
            "y" | "yr" | "yrs" | "year" | "years" => 365 * 86_400,
            _ => return Ok(None),
        };
        rest = &rest[letters..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or(())?;
        terms += 1;
    }
    Ok((terms > 0).then(|| Duration::from_secs(total)))
}

impl<'de> Deserialize<'de> for ExpireIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ExpireIn, D::Error> {
        let s = Text::deserialize(d)?;
        parse_expire_in(&s.0).map_err(de::Error::custom)
    }
}

/// GitLab's `workflow:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The first that matches decides: `when: never` (or no match) makes no pipeline; its
    /// `variables:` join the file's.
    #[serde(default, deserialize_with = "super::rules_list")]
    pub rules: Option<Vec<RuleSpec>>,
    /// GitLab's pipeline name and auto-cancel settings: read, and said to be ignored.
    pub name: Option<Sp<de::IgnoredAny>>,
    pub auto_cancel: Option<Sp<de::IgnoredAny>>,
}

/// `artifacts: reports:`. JUnit and dotenv files are read; the other kinds GitLab knows
/// (`coverage_report`, `codequality`, `sast`, ...) are kept as artifacts, unread, and said so.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// JUnit XML files the job writes.
    pub junit: OneOrMany<String>,
    /// `KEY=VALUE` files whose variables the jobs receiving these artifacts get.
    pub dotenv: OneOrMany<String>,
    /// Another kind's files, with where the kind was written.
    pub kept: Vec<(Sp<String>, Vec<String>)>,
}

impl Reports {
    /// `over` laid on `self` kind by kind (`extends:`): a kind `over` names replaces this one's.
    pub fn merged(self, over: Reports) -> Reports {
        let or = |o: OneOrMany<String>, b: OneOrMany<String>| if o.0.is_empty() { b } else { o };
        let mut kept: Vec<(Sp<String>, Vec<String>)> = self
            .kept
            .into_iter()
            .filter(|(kind, _)| !over.kept.iter().any(|(k, _)| k.value == kind.value))
            .collect();
        kept.extend(over.kept);
        Reports {
            junit: or(over.junit, self.junit),
            dotenv: or(over.dotenv, self.dotenv),
            kept,
        }
    }
}

/// GitLab's report kinds: `junit` and `dotenv`, read; and the rest, whose files forge keeps
/// without reading them.
const REPORT_KINDS: &[&str] = &[
    "junit",
    "dotenv",
    "coverage_report",
    "codequality",
    "sast",
    "dependency_scanning",
    "container_scanning",
    "cluster_image_scanning",
    "dast",
    "license_scanning",
    "performance",
    "browser_performance",
    "load_performance",
    "metrics",
    "terraform",
    "accessibility",
    "requirements",
    "secret_detection",
    "cyclonedx",
    "api_fuzzing",
    "coverage_fuzzing",
    "annotations",
    "repository_xray",
];

/// `coverage_report: {coverage_format, path}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoverageReport {
    #[allow(dead_code)]
    coverage_format: String,
    path: String,
}

impl<'de> Deserialize<'de> for Reports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reports, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Reports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of report kinds to files")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Reports, A::Error> {
                let mut r = Reports::default();
                while let Some(kind) = map.next_key::<Sp<String>>()? {
                    match kind.value.as_str() {
                        "junit" => r.junit = map.next_value()?,
                        "coverage_report" => {
                            let c: CoverageReport = map.next_value()?;
                            r.kept.push((kind, vec![c.path]));
                        }
                        "dotenv" => r.dotenv = map.next_value()?,
                        k if REPORT_KINDS.contains(&k) => {
                            let files: OneOrMany<String> = map.next_value()?;
                            r.kept.push((kind, files.0));
                        }
                        other => return Err(de::Error::unknown_field(other, REPORT_KINDS)),
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_in_reads_as_gitlab_writes_it() {
        let after = |secs| Ok(ExpireIn::After(Duration::from_secs(secs)));
        assert_eq!(parse_expire_in("42"), after(42));
        assert_eq!(parse_expire_in("42 seconds"), after(42));
        assert_eq!(parse_expire_in("3 mins 4 sec"), after(184));
        assert_eq!(parse_expire_in("2 hrs 20 min"), after(8400));
        assert_eq!(parse_expire_in("2h20min"), after(8400));
        assert_eq!(parse_expire_in("1 week"), after(604_800));
        assert_eq!(parse_expire_in("30 days"), after(2_592_000));
        assert_eq!(parse_expire_in("6 mos 1 day"), after(180 * 86_400 + 86_400));
        assert_eq!(
            parse_expire_in("47 yrs 6 mos and 4d"),
            after((47 * 365 + 180 + 4) * 86_400)
        );
        assert_eq!(parse_expire_in("3 weeks and 2 days"), after(23 * 86_400));
        assert_eq!(parse_expire_in("Never"), Ok(ExpireIn::Never));
        for bad in [
            "",
            "soon",
            "1 fortnight",
            "week",
            "-1 day",
            "1.5 days",
            "99999999999999999 years",
        ] {
            assert!(parse_expire_in(bad).is_err(), "{bad}");
        }
    }
}
