//! `--cache-to` and `--cache-from` as BuildKit spells them: `type=registry,ref=REF[,mode=min|max]`,
//! `type=local,dest=DIR` / `type=local,src=DIR`, plus forge's `mounts=true`.

use std::path::PathBuf;

use forge_snapshotter::reference::Reference;

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// A manifest under a tag (or digest) of a registry repository.
    Registry(Reference),
    /// An OCI image layout directory; `tag` names the manifest in its `index.json`.
    Local { dir: PathBuf, tag: String },
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "{r}"),
            CacheLocation::Local { dir, tag } => write!(f, "{}:{tag}", dir.display()),
        }
    }
}

/// Which records an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// The steps whose layers the final image is made of (BuildKit's default).
    #[default]
    Min,
    /// Every step of every stage the build ran or took from its cache, test verdicts included.
    Max,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    pub location: CacheLocation,
    pub mode: CacheMode,
    /// Also the contents of the build's `RUN --mount=type=cache` ids.
    pub mounts: bool,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheImport {
    pub location: CacheLocation,
}

/// BuildKit options forge accepts and does not need: it always writes an OCI image manifest with
/// OCI media types, and compresses nothing again.
const IGNORED: &[&str] = &[
    "oci-mediatypes",
    "image-manifest",
    "compression",
    "compression-level",
    "force-compression",
];

/// The `KEY=VALUE` fields; a `type` forge does not have is refused first, whatever else is there.
fn fields(spec: &str) -> Result<Vec<(&str, &str)>, String> {
    let fields: Vec<(&str, &str)> = spec
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.split_once('=')
                .ok_or_else(|| format!("{f:?} is not KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    match fields.iter().find(|(k, _)| *k == "type") {
        Some((_, ty)) if !["registry", "local"].contains(ty) => Err(refuse_type(ty)),
        _ => Ok(fields),
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{key}={other}: want true or false")),
    }
}

fn registry_ref(value: &str) -> Result<Reference, String> {
    Reference::parse(value).map_err(|e| format!("ref={value}: {e}"))
}

fn refuse_type(ty: &str) -> String {
    match ty {
        "inline" => "type=inline is not supported: forge keeps its cache beside the image, not in \
                     its config; use type=registry,ref=REPO:TAG"
            .into(),
        "gha" | "s3" | "azblob" => format!(
            "type={ty} is not supported; use type=registry (any OCI registry) or type=local"
        ),
        other => format!("unknown cache type {other:?} (want registry or local)"),
    }
}

/// The location the fields name; `dir_key` is how the directory was spelt (`dest` or `src`).
fn location(
    ty: Option<&str>,
    reference: Option<Reference>,
    dir: Option<PathBuf>,
    tag: Option<String>,
    dir_key: &str,
) -> Result<CacheLocation, String> {
    match ty.unwrap_or("registry") {
        "registry" => Ok(CacheLocation::Registry(
            reference.ok_or("type=registry needs ref=REGISTRY/REPOSITORY:TAG")?,
        )),
        "local" => Ok(CacheLocation::Local {
            dir: dir.ok_or_else(|| format!("type=local needs {dir_key}=DIRECTORY"))?,
            tag: tag.unwrap_or_else(|| "latest".into()),
        }),
        other => Err(refuse_type(other)),
    }
}

impl CacheExport {
    /// Parses one `--cache-to` value.
    pub fn parse(spec: &str) -> Result<CacheExport, String> {
        let mut ty = None;
        let (mut reference, mut dest, mut tag) = (None, None, None);
        let mut mode = CacheMode::Min;
        let (mut mounts, mut ignore_error) = (false, false);
        for (k, v) in fields(spec)? {
            match k {
                "type" => ty = Some(v),
                "ref" => reference = Some(registry_ref(v)?),
                "dest" => dest = Some(PathBuf::from(v)),
                "tag" => tag = Some(v.to_string()),
                "mode" => {
                    mode = match v {
                        "min" => CacheMode::Min,
                        "max" => CacheMode::Max,
                        other => return Err(format!("mode={other}: want min or max")),
                    }
                }
                "mounts" => mounts = boolean(k, v)?,
                "ignore-error" => ignore_error = boolean(k, v)?,
                k if IGNORED.contains(&k) => {}
                other => {
                    return Err(format!(
                        "unknown option {other:?} (known: type, ref, dest, tag, mode, mounts, ignore-error)"
                    ));
                }
            }
        }
        let location = location(ty, reference, dest, tag, "dest")?;
        Ok(CacheExport {
            location,
            mode,
            mounts,
            ignore_error,
        })
    }
}

impl CacheImport {
    /// Parses one `--cache-from` value; a bare reference (`reg/app:cache`) is a registry cache,
    /// as BuildKit reads it.
    pub fn parse(spec: &str) -> Result<CacheImport, String> {
        if !spec.contains('=') {
            return Ok(CacheImport {
                location: CacheLocation::Registry(registry_ref(spec)?),
            });
        }
        let mut ty = None;
        let (mut reference, mut src, mut tag) = (None, None, None);
        for (k, v) in fields(spec)? {
            match k {
                "type" => ty = Some(v),
                "ref" => reference = Some(registry_ref(v)?),
                "src" => src = Some(PathBuf::from(v)),
                "tag" => tag = Some(v.to_string()),
                "digest" => {}
                other => {
                    return Err(format!(
                        "unknown option {other:?} (known: type, ref, src, tag)"
                    ));
                }
            }
        }
        let location = location(ty, reference, src, tag, "src")?;
        Ok(CacheImport { location })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_s_spellings_parse() {
        let e =
            CacheExport::parse("type=registry,ref=127.0.0.1:5000/app:cache,mode=max,mounts=true")
                .unwrap();
        assert_eq!(e.mode, CacheMode::Max);
        assert!(e.mounts && !e.ignore_error);
        assert!(
            matches!(&e.location, CacheLocation::Registry(r) if r.to_string() == "127.0.0.1:5000/app:cache")
        );
        let e = CacheExport::parse("type=local,dest=/tmp/c").unwrap();
        assert_eq!(e.mode, CacheMode::Min);
        assert_eq!(
            e.location,
            CacheLocation::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into()
            }
        );
        let i = CacheImport::parse("127.0.0.1:5000/app:cache").unwrap();
        assert!(matches!(i.location, CacheLocation::Registry(_)));
        let i = CacheImport::parse("type=local,src=/tmp/c,tag=main").unwrap();
        assert_eq!(
            i.location,
            CacheLocation::Local {
                dir: "/tmp/c".into(),
                tag: "main".into()
            }
        );
        // BuildKit's own options that change nothing for forge are accepted.
        assert!(
            CacheExport::parse("type=registry,ref=r/a:c,oci-mediatypes=true,image-manifest=true")
                .is_ok()
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        for (spec, want) in [
            ("type=registry", "needs ref="),
            ("type=local", "needs dest="),
            ("type=inline", "not supported"),
            ("type=gha,scope=x", "not supported"),
            ("type=registry,ref=r/a:c,mode=all", "want min or max"),
            ("type=registry,ref=r/a:c,mounts=yes", "want true or false"),
            (
                "type=registry,ref=r/a:c,colour=red",
                "unknown option \"colour\"",
            ),
            ("type=registry,ref=UPPER/Case", "ref=UPPER/Case"),
            ("ref", "not KEY=VALUE"),
        ] {
            let err = CacheExport::parse(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
        let err = CacheImport::parse("type=local").unwrap_err();
        assert!(err.contains("needs src="), "{err}");
    }
}
