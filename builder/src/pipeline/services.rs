//! A job's `services:` -> [`ServicePlan`]s: each service's image resolved, its variables expanded,
//! its secrets checked against the job's, and the names the job reaches it by: forge's `name:`,
//! GitLab's `alias:`, or else the names GitLab makes from the image.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::error::PipelineError;
use super::expand::{self, expand_at};
use super::file::{JobSpec, ServiceSpec, Sp, pos_of};
use super::plan::{ImageUse, Names, Ready, ServicePlan};
use super::resolve::resolve_image;

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_READY_INTERVAL: Duration = Duration::from_secs(1);

/// The plans of `job`'s `services`, with `vars` the job's variables. A name that two services
/// would answer to, or that is no host name, is refused where it is written.
pub(super) fn plan(
    services: &[ServiceSpec],
    job: &JobSpec,
    source: &str,
    vars: &BTreeMap<String, String>,
    names: &Names<'_>,
    errors: &mut Vec<PipelineError>,
) -> Vec<ServicePlan> {
    let mut taken = BTreeSet::new();
    let mut plans = Vec::new();
    for s in services {
        let image = resolve_image(&s.image, source, vars, names, errors);
        let hosts = host_names(s, &image, source, vars, errors);
        for (name, at) in &hosts {
            if !taken.insert(name.clone()) {
                errors.push(PipelineError::new(
                    *at,
                    format!("service `{name}` is defined twice in this job"),
                ));
            }
        }
        let mut hosts = hosts.into_iter().map(|(n, _)| n);
        let name = hosts.next().unwrap_or_default();
        let mut svars = vars.clone();
        expand::define(&s.variables, source, &mut svars, errors);
        for secret in &s.secrets {
            if !job
                .secrets
                .iter()
                .flatten()
                .any(|j| j.value == secret.value)
            {
                errors.push(
                    PipelineError::new(
                        pos_of(secret),
                        format!(
                            "service `{name}`: secret `{}` is not one of the job's secrets",
                            secret.value
                        ),
                    )
                    .with_hint(Some(format!(
                        "a service gets only secrets its job has: add `{}` to the job's \
                         `secrets:`",
                        secret.value
                    ))),
                );
            }
        }
        plans.push(ServicePlan {
            name,
            aliases: hosts.collect(),
            image,
            entrypoint: s
                .entrypoint
                .as_ref()
                .map(|e| e.iter().map(|c| c.value.clone()).collect()),
            command: s
                .command
                .iter()
                .flatten()
                .map(|c| c.value.clone())
                .collect(),
            variables: s
                .variables
                .0
                .iter()
                .filter_map(|(k, _)| svars.get(&k.value).map(|v| (k.value.clone(), v.clone())))
                .collect(),
            secrets: s.secrets.iter().map(|x| x.value.clone()).collect(),
            ready: s.ready.as_ref().map(|r| Ready {
                command: r.command.value.clone(),
                timeout: r
                    .timeout
                    .as_ref()
                    .map_or(DEFAULT_READY_TIMEOUT, |t| t.value.0),
                interval: r
                    .interval
                    .as_ref()
                    .map_or(DEFAULT_READY_INTERVAL, |t| t.value.0),
            }),
        });
    }
    plans
}

/// The names a service answers to, each with where it is written: forge's `name:`, GitLab's
/// aliases, or the names made from its image.
fn host_names(
    s: &ServiceSpec,
    image: &ImageUse,
    source: &str,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<PipelineError>,
) -> Vec<(String, super::error::Pos)> {
    let given: Vec<&Sp<String>> = s.name.iter().chain(&s.aliases).collect();
    if !given.is_empty() {
        return given
            .into_iter()
            .filter(|n| {
                let ok = is_host_name(&n.value);
                if !ok {
                    errors.push(
                        PipelineError::new(
                            pos_of(n),
                            format!("service name `{}` is not a host name", n.value),
                        )
                        .with_hint(Some(
                            "a host name is letters, digits, `-`, `_` and `.`, starting with a \
                             letter or digit"
                                .into(),
                        )),
                    );
                }
                ok
            })
            .map(|n| (n.value.clone(), pos_of(n)))
            .collect();
    }
    // GitLab makes the names from the image as written (after variables), not as resolved:
    // `postgres:16` answers to `postgres`, not to `docker.io__library__postgres`.
    let written = match image {
        ImageUse::Named(n) | ImageUse::Stage { image: n, .. } => n.clone(),
        ImageUse::Registry(_) => expand_at(&s.image, source, vars).unwrap_or_default(),
    };
    let made = names_from_image(&written);
    if made.is_empty() {
        errors.push(
            PipelineError::new(
                pos_of(&s.image),
                format!("service image `{written}` gives no host name to reach it by"),
            )
            .with_hint(Some(
                "give the service `alias:` (GitLab's form) or `name:` with `image:`".into(),
            )),
        );
    }
    made.into_iter().map(|n| (n, pos_of(&s.image))).collect()
}

/// GitLab's names for a service from its image: the reference without its digest and tag, with
/// each `/` made `__`, then `-` (`tutum/wordpress:6` -> `tutum__wordpress`, `tutum-wordpress`).
/// A registry with a port leaves a `:` in both, and so no name.
pub(super) fn names_from_image(image: &str) -> Vec<String> {
    let image = image.split('@').next().unwrap_or_default();
    let path = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    let mut out: Vec<String> = Vec::new();
    for n in [path.replace('/', "__"), path.replace('/', "-")] {
        if is_host_name(&n) && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// A name `/etc/hosts` can carry and a resolver finds: letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit, at most 253 bytes.
pub fn is_host_name(n: &str) -> bool {
    n.len() <= 253
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_from_the_image_as_gitlab_makes_them() {
        assert_eq!(names_from_image("postgres:16"), ["postgres"]);
        assert_eq!(names_from_image("redis"), ["redis"]);
        assert_eq!(
            names_from_image("tutum/wordpress:latest"),
            ["tutum__wordpress", "tutum-wordpress"]
        );
        assert_eq!(
            names_from_image("registry.example.com/group/db@sha256:abcd"),
            [
                "registry.example.com__group__db",
                "registry.example.com-group-db"
            ]
        );
        // A registry's port leaves a colon: no name (the file must give an alias).
        assert!(names_from_image("127.0.0.1:5000/db:1").is_empty());
        assert!(names_from_image("").is_empty());
    }

    #[test]
    fn host_names_are_what_a_hosts_file_can_hold() {
        for ok in ["db", "my_db.1", "a-b", "9lives"] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-db",
            ".db",
            "my db",
            "db:5432",
            "d$b",
            &"a".repeat(254),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
