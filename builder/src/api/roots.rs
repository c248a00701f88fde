//! Whether a build may speak TLS early on: to a registry reached over https (a base image, an
//! image `COPY --from` or a mount names, a named context, a pushed tag, a registry cache) or to
//! an `ADD` URL. A new store's build that may starts loading the trusted roots on a thread of its
//! own as soon as its Dockerfile is parsed, so that its first request finds them ready; a build
//! whose every registry is plain http (a loopback registry, one marked insecure) leaves them
//! unread: they cost a few milliseconds of CPU (a few hundred files read and parsed) on a core its
//! own start needs. Read from the syntax tree and the request, before lowering; anything it cannot
//! tell (a name made of build arguments, a reference that does not parse) counts as https.

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::RegistryClient;

use super::request::{BuildContext, BuildRequest};
use crate::cache_io::CacheLocation;
use crate::frontend::dockerfile::ast::{Args, Dockerfile};

/// Whether the build may reach anything over TLS (see the module).
pub(super) fn may_speak_tls(
    df: &Dockerfile,
    request: &BuildRequest,
    registry: &RegistryClient,
) -> bool {
    let over_tls = |reference: &str| match Reference::parse(reference) {
        Ok(r) => !registry.reached_over_plain_http(&r),
        Err(_) => true,
    };
    let named = |name: &str| request.build_contexts.get(name);
    // A `FROM`, `--from` or mount `from=` value: a stage, a named context or an image.
    let mut stages: Vec<String> = Vec::new();
    let source_over_tls = |value: &str, stages: &[String]| {
        if value.contains('$') {
            return true;
        }
        if value.eq_ignore_ascii_case("scratch")
            || stages.iter().any(|s| s.eq_ignore_ascii_case(value))
        {
            return false;
        }
        match named(value) {
            Some(BuildContext::Dir(_)) => false,
            Some(BuildContext::Image(r)) => over_tls(r),
            None => over_tls(value),
        }
    };
    for node in &df.children {
        let values = match &node.args {
            Args::Values(v) | Args::Json(v) => v.as_slice(),
            _ => &[],
        };
        for flag in &node.flags {
            let from = match flag.name() {
                "from" => flag.value(),
                "mount" => flag
                    .value()
                    .and_then(|spec| spec.split(',').find_map(|f| f.strip_prefix("from="))),
                _ => None,
            };
            if let Some(from) = from
                && !from.chars().all(|c| c.is_ascii_digit())
                && source_over_tls(from, &stages)
            {
                return true;
            }
        }
        match node.instruction.as_str() {
            "from" => {
                let Some(base) = values.first() else {
                    continue;
                };
                if source_over_tls(base, &stages) {
                    return true;
                }
                if let [_, as_, name, ..] = values
                    && as_.eq_ignore_ascii_case("as")
                {
                    stages.push(name.clone());
                }
            }
            "add"
                if values
                    .iter()
                    .any(|v| v.contains("://") || v.starts_with("git@")) =>
            {
                return true;
            }
            _ => {}
        }
    }
    let pushed = request.pushes() && request.tags.iter().any(|t| over_tls(t));
    let cached = request
        .cache
        .import
        .iter()
        .map(|i| &i.location)
        .chain(request.cache.export.iter().map(|e| &e.location))
        .any(|l| match l {
            CacheLocation::Registry(r) => !registry.reached_over_plain_http(r),
            CacheLocation::Local { .. } => false,
        });
    pushed || cached
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::dockerfile::parser::parse_file;
    use forge_snapshotter::registry::RegistryConfig;

    fn speaks_tls(dockerfile: &str, request: &BuildRequest) -> bool {
        let df = parse_file("Dockerfile", dockerfile).unwrap();
        let registry = RegistryClient::new(RegistryConfig {
            insecure: vec!["registry.internal:5000".into()],
            ..RegistryConfig::default()
        });
        may_speak_tls(&df, request, &registry)
    }

    fn request() -> BuildRequest {
        BuildRequest::new(".")
    }

    #[test]
    fn plain_http_registries_stages_and_scratch_need_no_roots() {
        let df = "FROM 127.0.0.1:5000/base:1 AS one\n\
                  RUN true\n\
                  FROM registry.internal:5000/tools AS two\n\
                  FROM localhost:5000/x\n\
                  COPY --from=one /a /a\n\
                  COPY --from=0 /b /b\n\
                  RUN --mount=type=bind,from=two,target=/t true\n\
                  FROM scratch\n\
                  COPY --from=ONE /a /a\n\
                  ADD local.tar /\n";
        assert!(!speaks_tls(df, &request()));
    }

    #[test]
    fn an_https_registry_anywhere_needs_them() {
        for df in [
            "FROM busybox\n",
            "FROM 127.0.0.1:5000/base AS one\nFROM ghcr.io/a/b\n",
            "FROM 127.0.0.1:5000/base\nCOPY --from=alpine:3 /a /a\n",
            "FROM 127.0.0.1:5000/base\nRUN --mount=type=bind,from=quay.io/x/y,target=/t true\n",
            "FROM 127.0.0.1:5000/base\nADD https://example.com/a.tar.gz /\n",
            "FROM 127.0.0.1:5000/base\nADD git@github.com:a/b.git /src\n",
            // Build arguments are not expanded here: a name made of them may be anything.
            "ARG BASE=127.0.0.1:5000/base\nFROM ${BASE}\n",
            "FROM 127.0.0.1:5000/base\nCOPY --from=$STAGE /a /a\n",
            "FROM Not-A-Reference!\n",
        ] {
            assert!(speaks_tls(df, &request()), "{df}");
        }
    }

    #[test]
    fn pushed_tags_caches_and_named_contexts_count() {
        let df = "FROM 127.0.0.1:5000/base\n";
        let mut pushed = request();
        pushed.tags = vec!["127.0.0.1:5000/app:1".into(), "ghcr.io/a/app:1".into()];
        assert!(!speaks_tls(df, &pushed), "tags that are not pushed");
        pushed.exports = vec![crate::api::Export::Image {
            push: true,
            oci_mediatypes: true,
        }];
        assert!(speaks_tls(df, &pushed));
        pushed.tags.truncate(1);
        assert!(!speaks_tls(df, &pushed));

        let mut cached = request();
        cached.cache.import = vec![crate::cache_io::CacheImport {
            location: CacheLocation::Registry(Reference::parse("ghcr.io/a/cache").unwrap()),
        }];
        assert!(speaks_tls(df, &cached));

        let mut named = request();
        named.build_contexts.insert(
            "base".into(),
            BuildContext::Image("docker.io/library/alpine".into()),
        );
        named
            .build_contexts
            .insert("tools".into(), BuildContext::Dir("tools".into()));
        assert!(!speaks_tls("FROM tools\n", &named));
        assert!(speaks_tls("FROM base\n", &named));
    }
}
