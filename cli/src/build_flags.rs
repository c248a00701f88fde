//! The values of `forge build`'s flags read into what the build API takes: outputs (`-o`),
//! secrets, ssh agents, `--add-host`, `--shm-size`, labels and `SOURCE_DATE_EPOCH`, each refused
//! as docker refuses it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use forge_builder::api::{Export, Secrets};

use crate::{Failure, failed, usage};

/// `--compression`'s values (and `-o ...,compression=`'s).
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum CompressionArg {
    Gzip,
    /// gzip deflated on every core in 128 KiB blocks, as pigz writes it: any gzip reader reads
    /// it, but its layers have other digests than `gzip`'s.
    GzipParallel,
    Zstd,
    Uncompressed,
}

/// Reads one `-o` flag.
pub(crate) fn parse_output(spec: &str) -> Result<Export, Failure> {
    // docker's shorthands: `-o DIR` is the filesystem into DIR, `-o -` a tar of it on stdout.
    // An empty one (`-o "$OUT"` with OUT unset) names no place: it would be the working
    // directory, whose files the image's would replace.
    if spec.trim().is_empty() {
        return Err(usage(
            "error: invalid --output \"\": it names no destination (-o DIR, -o -, or \
             type=...,dest=...)"
                .to_string(),
        ));
    }
    if !spec.contains('=') {
        return Ok(if spec == "-" {
            Export::Tar(PathBuf::from("-"))
        } else {
            Export::Local(PathBuf::from(spec))
        });
    }
    let mut kv: HashMap<String, String> = HashMap::new();
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            usage(format!(
                "error: invalid --output {spec:?}: {part:?} is not KEY=VALUE"
            ))
        })?;
        kv.insert(k.trim().to_string(), v.trim().to_string());
    }
    let kind = kv
        .get("type")
        .cloned()
        .ok_or_else(|| usage(format!("error: invalid --output {spec:?}: no type=")))?;
    let dest = || match kv.get("dest") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        Some(_) => Err(usage(format!(
            "error: invalid --output {spec:?}: dest= is empty (type={kind} needs a path, or - \
             for standard output)"
        ))),
        None => Err(usage(format!(
            "error: invalid --output {spec:?}: type={kind} needs dest="
        ))),
    };
    let flag = |k: &str| kv.get(k).is_some_and(|v| v == "true" || v == "1");
    // BuildKit keeps keys it does not know without a word; a misspelt one (`compresion=zstd`)
    // then does nothing. forge says which it leaves unused.
    let used: &[&str] = match kind.as_str() {
        "oci" | "docker" => &[
            "type",
            "dest",
            "tar",
            "name",
            "compression",
            "compression-level",
        ],
        "local" | "tar" => &["type", "dest"],
        _ => &[
            "type",
            "name",
            "push",
            "oci-mediatypes",
            "compression",
            "compression-level",
        ],
    };
    let mut unused: Vec<&str> = kv
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k))
        .collect();
    unused.sort();
    if !unused.is_empty() {
        errln!(
            "warning: --output {spec:?}: {} not used by forge for type={kind}, ignored",
            unused
                .iter()
                .map(|k| format!("{k}="))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match kind.as_str() {
        "oci" if kv.get("tar").is_some_and(|v| v == "false") => Ok(Export::OciDir(dest()?)),
        "oci" => Ok(Export::OciTar(dest()?)),
        "docker" => Ok(Export::DockerTar(dest()?)),
        "local" => Ok(Export::Local(dest()?)),
        "tar" => Ok(Export::Tar(dest()?)),
        "image" | "registry" => Ok(Export::Image {
            push: kind == "registry" || flag("push"),
            oci_mediatypes: kv.get("oci-mediatypes").is_none_or(|v| v != "false"),
        }),
        other => Err(usage(format!(
            "error: invalid --output {spec:?}: unknown type {other:?} (oci, docker, local, tar, image, registry)"
        ))),
    }
}

/// `compression=` and `compression-level=` of the `-o` flags (BuildKit's exporter keys for
/// `--compression` and `--compression-level`), the last given of each; a kind forge does not
/// know is refused.
pub(crate) fn output_compression(
    specs: &[String],
) -> Result<(Option<CompressionArg>, Option<i32>), Failure> {
    use clap::ValueEnum as _;
    let mut kind = None;
    let mut level = None;
    for spec in specs.iter().filter(|s| s.contains('=')) {
        for (k, v) in spec.split(',').filter_map(|p| p.split_once('=')) {
            let v = v.trim();
            match k.trim() {
                "compression" => {
                    kind = Some(CompressionArg::from_str(v, true).map_err(|_| {
                        usage(format!(
                            "error: invalid --output {spec:?}: compression={v} (gzip, \
                                 gzip-parallel, zstd, uncompressed)"
                        ))
                    })?)
                }
                "compression-level" => level = Some(v.parse().map_err(|_| {
                    usage(format!(
                        "error: invalid --output {spec:?}: compression-level={v} is not a number"
                    ))
                })?),
                _ => {}
            }
        }
    }
    Ok((kind, level))
}

/// The image names `-o ...,name=NAME` gives (buildx's way to name the image of an export), in
/// the order written; they name the image as `-t` does.
pub(crate) fn output_names(specs: &[String]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| s.contains('='))
        .flat_map(|s| s.split(','))
        .filter_map(|part| part.split_once('='))
        .filter(|(k, _)| k.trim() == "name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

pub(crate) fn parse_secrets(specs: &[String]) -> Result<Secrets, Failure> {
    let mut out = Secrets::default();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("env", v)) => env = Some(v.to_string()),
                Some(("type", _)) => {}
                Some((key, _)) => {
                    return Err(usage(format!(
                        "error: invalid --secret {spec:?}: unknown key {key:?} in {part:?} \
                         (id=ID,src=PATH or id=ID,env=VAR)"
                    )));
                }
                None => {
                    return Err(usage(format!(
                        "error: invalid --secret {spec:?}: {part:?} is not KEY=VALUE \
                         (id=ID,src=PATH or id=ID,env=VAR)"
                    )));
                }
            }
        }
        let id = id
            .or_else(|| env.clone())
            .or_else(|| {
                src.as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .ok_or_else(|| usage(format!("error: invalid --secret {spec:?}: no id")))?;
        let data = match (src, env) {
            (Some(p), _) => forge_builder::mask::read_secret_file(&p).map_err(|e| {
                failed(format!(
                    "error: cannot read secret {id:?} from {}: {e}",
                    p.display()
                ))
            })?,
            (None, Some(var)) => std::env::var_os(&var)
                .ok_or_else(|| {
                    failed(format!(
                        "error: secret {id:?}: environment variable {var} is not set"
                    ))
                })?
                .into_encoded_bytes(),
            (None, None) => std::env::var_os(&id)
                .ok_or_else(|| {
                    failed(format!(
                        "error: secret {id:?}: give src=PATH or env=VAR (no variable {id} either)"
                    ))
                })?
                .into_encoded_bytes(),
        };
        out.insert(id, data);
    }
    Ok(out)
}

pub(crate) fn parse_ssh(specs: &[String]) -> Result<HashMap<String, PathBuf>, Failure> {
    let mut out = HashMap::new();
    for spec in specs {
        let (id, sock) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), PathBuf::from(path)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                    failed(format!(
                        "error: --ssh {spec}: SSH_AUTH_SOCK is not set; give {spec}=SOCKET"
                    ))
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        out.insert(id, sock);
    }
    Ok(out)
}

/// `--shm-size` as docker reads it (`128m`, `1g`), above 0.
pub(crate) fn parse_shm_size(s: &str) -> Result<forge_runner::Bytes, String> {
    match forge_runner::Bytes::parse_size(s)? {
        forge_runner::Bytes(0) => Err(format!("{s:?}: /dev/shm needs a size above 0")),
        b => Ok(b),
    }
}

/// One `--add-host` as docker reads it: `NAME:IP` or `NAME=IP`, an IPv6 address in brackets or
/// not (`h:[::1]`, `h=::1`).
pub(crate) fn parse_add_host(spec: &str) -> Result<(String, std::net::IpAddr), Failure> {
    let bad = |why: &str| usage(format!("error: invalid --add-host {spec:?}: {why}"));
    let (name, ip) = match spec.split_once('=') {
        Some(pair) => pair,
        None => spec
            .split_once(':')
            .ok_or_else(|| bad("expected NAME:IP"))?,
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("the name is not a host name"));
    }
    if ip == "host-gateway" {
        return Err(bad(
            "host-gateway is docker's daemon's address; forge has no daemon and RUN steps do not \
             reach the host (give the address itself, and --allow network.host to reach it)",
        ));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip = ip
        .parse()
        .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
    Ok((name.to_string(), ip))
}

/// `--label KEY=VALUE`; a label with no `=` has an empty value, as docker gives it.
pub(crate) fn parse_labels(specs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    specs
        .iter()
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
            if k.is_empty() {
                return Err(usage(format!(
                    "error: invalid --label {s:?}: the key is empty"
                )));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `SOURCE_DATE_EPOCH`: `--build-arg SOURCE_DATE_EPOCH=N` (BuildKit's form, which also leaves it
/// an ordinary build argument), else the environment variable.
pub(crate) fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
) -> Result<Option<i64>, Failure> {
    let (value, from) = match build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => (v.clone(), "--build-arg SOURCE_DATE_EPOCH"),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => (v, "SOURCE_DATE_EPOCH"),
            Err(_) => return Ok(None),
        },
    };
    if value.is_empty() {
        return Ok(None);
    }
    value.trim().parse::<i64>().map(Some).map_err(|_| {
        usage(format!(
            "error: {from}={value:?} is not a number of seconds"
        ))
    })
}
