//! Store commands: `forge pull`, `forge images`, `forge rmi`, `forge prune`, `forge store check`. They open the per-user
//! store (or `--root`) and report on stderr as they go; results go to stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use forge_builder::gc::{self, GcOptions, Parts, parse_size};
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{PullEvent, RegistryClient, RegistryConfig};
use forge_snapshotter::snapshot::AnySnapshotter;
use forge_snapshotter::store::{ImageRecord, Store};
use forge_snapshotter::unpack::{UnpackOptions, UnpackWarning, unpack_layer_verified};

use crate::{Failure, failed, usage};

#[derive(Args)]
pub struct StoreArgs {
    /// The store directory (default: $XDG_DATA_HOME/forge, ~/.local/share/forge, or /var/lib/forge
    /// for root).
    #[arg(long, env = "FORGE_ROOT")]
    root: Option<PathBuf>,
}

impl StoreArgs {
    pub(crate) fn open(&self) -> Result<Store, Failure> {
        match &self.root {
            Some(root) => Store::open(root),
            None => Store::open_default(),
        }
        .map_err(|e| failed(format!("error: cannot open the store: {e}")))
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// The image to pull, as Docker names it (`busybox`, `host:5000/app:1`, `name@sha256:...`).
    image: String,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Only remove what has not been used for this long (`90s`, `30m`, `12h`, `7d`): cache records
    /// by last use, blobs by last write, snapshots by when they were made.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// Stop once the store (blobs + snapshots + cache mounts) holds at most this many bytes
    /// (`500M`, `2G`); least recently used go first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    keep_bytes: Option<u64>,
    /// Also remove cache mounts (`RUN --mount=type=cache`) no running step holds, and pipeline
    /// jobs' caches (`cache: key: paths:`).
    #[arg(long)]
    cache_mounts: bool,
    /// Everything nothing needs, cache mounts and jobs' caches included.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Remove what is broken (corrupt blobs, records and roots that name missing blobs, snapshots
    /// without data, leftovers), so that the next build makes it again.
    #[arg(long)]
    repair: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn pull(args: &PullArgs) -> Result<(), Failure> {
    let reference = Reference::parse(&args.image).map_err(|e| usage(format!("error: {e}")))?;
    let store = args.store.open()?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    });
    let quiet = args.quiet;
    let start = Instant::now();
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let record = runtime
        .block_on(client.pull(&store, &reference, &move |event| {
            if !quiet {
                report(&event);
            }
        }))
        .map_err(|e| failed(format!("error: {e}")))?;
    if quiet {
        outln!("{}", record.manifest.digest);
    } else {
        errln!("pulled in {:.1?}", start.elapsed());
        outln!("{} {}", record.reference, record.manifest.digest);
    }
    Ok(())
}

/// One line per event that changes a layer's state; byte progress is left to a tty renderer.
fn report(event: &PullEvent) {
    match event {
        PullEvent::Resolved {
            reference,
            manifest,
            platform,
            layers,
        } => errln!("resolved {reference} -> {manifest} ({platform}, {layers} layers)"),
        PullEvent::Started { digest, total, .. } => {
            errln!("pulling  {} ({})", short(digest), human(*total))
        }
        PullEvent::Done { digest, bytes } => {
            errln!("done     {} ({})", short(digest), human(*bytes))
        }
        PullEvent::Cached { digest, .. } => errln!("cached   {}", short(digest)),
        PullEvent::Retrying {
            what,
            attempt,
            took,
            delay,
            error,
        } => {
            errln!("retry    {what} in {delay:.1?}: try {attempt} failed after {took:.1?}: {error}")
        }
        PullEvent::Progress { .. } | PullEvent::Stored { .. } | PullEvent::Failed { .. } => {}
    }
}

#[derive(Args)]
pub struct UnpackArgs {
    /// An image already in the store (`forge pull` it first).
    image: String,
    /// The directory to unpack into (created; must be empty or absent).
    dest: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

/// Unpacks a stored image's layers, in order, into a directory. As an ordinary user the caller has
/// already entered a user namespace with the subordinate ids mapped (see `main`), so the image's
/// owners are kept as the ids a rootless step will see.
pub fn unpack(args: &UnpackArgs) -> Result<(), Failure> {
    let normalised = Reference::parse(&args.image)
        .map_err(|e| usage(format!("error: {e}")))?
        .to_string();
    let store = args.store.open()?;
    let record = store
        .get_image(&normalised)
        .map_err(|e| failed(format!("error: {e}")))?
        .ok_or_else(|| {
            failed(format!(
                "error: no image {normalised} in the store at {}\nhint: run `forge pull {normalised}` first",
                store.root().display()
            ))
        })?;
    let config: serde_json::Value = store
        .read_blob(&record.config.digest)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            failed(format!(
                "error: config of {normalised} is missing or not JSON"
            ))
        })?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != record.layers.len() {
        return Err(failed(format!(
            "error: config of {normalised} lists {} diff_ids for {} layers",
            diff_ids.len(),
            record.layers.len()
        )));
    }
    if args.dest.exists()
        && std::fs::read_dir(&args.dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(usage(format!(
            "error: {} exists and is not an empty directory",
            args.dest.display()
        )));
    }
    std::fs::create_dir_all(&args.dest)
        .map_err(|e| failed(format!("error: cannot create {}: {e}", args.dest.display())))?;
    let options = UnpackOptions::default();
    for (layer, diff_id) in record.layers.iter().zip(&diff_ids) {
        let diff_id = diff_id
            .parse()
            .map_err(|e| failed(format!("error: bad diff_id {diff_id:?} in the config: {e}")))?;
        let blob = store
            .open_blob(&layer.digest)
            .map_err(|e| failed(format!("error: {e}")))?;
        let summary =
            unpack_layer_verified(blob, &layer.media_type, &args.dest, &options, &diff_id)
                .map_err(|e| {
                    failed(format!(
                        "error: layer {}: {}",
                        layer.digest,
                        forge_snapshotter::error_text::one_line(&e)
                    ))
                })?;
        for warning in &summary.warnings {
            match warning {
                UnpackWarning::DeviceSkipped { entry, .. } => {
                    errln!("warning: {entry}: device node not created (not permitted here)")
                }
                other => errln!("warning: {other:?}"),
            }
        }
        errln!("unpacked {}", short(&layer.digest));
    }
    outln!("{} -> {}", normalised, args.dest.display());
    Ok(())
}

pub fn images(args: &StoreArgs) -> Result<(), Failure> {
    let store = args.open()?;
    let images = store
        .list_images()
        .map_err(|e| failed(format!("error: {e}")))?;
    if images.is_empty() {
        outln!("no images in the store at {}", store.root().display());
        return Ok(());
    }
    let width = images
        .iter()
        .map(|i| i.reference.len())
        .max()
        .unwrap_or(0)
        .max("IMAGE".len());
    outln!(
        "{:<width$}  {:<71}  {:<14}  SIZE",
        "IMAGE",
        "DIGEST",
        "PLATFORM"
    );
    for image in images {
        let size: u64 = image.layers.iter().map(|l| l.size).sum();
        outln!(
            "{:<width$}  {:<71}  {:<14}  {}",
            image.reference,
            image.manifest.digest.to_string(),
            image.platform,
            human(size)
        );
    }
    Ok(())
}

pub fn rmi(reference: &str, args: &StoreArgs) -> Result<(), Failure> {
    let store = args.open()?;
    // By name, or by ID where one name carries it (docker refuses an ID several names share
    // without -f, and so does forge, naming them).
    let (normalised, record) = stored_image(&store, reference)?;
    let by_name = Reference::parse(reference).is_ok_and(|r| r.to_string() == normalised);
    if !by_name {
        let names: Vec<String> = store
            .list_images()
            .map_err(|e| failed(format!("error: {e}")))?
            .into_iter()
            .filter(|r| r.config.digest == record.config.digest)
            .map(|r| r.reference)
            .collect();
        if names.len() > 1 {
            return Err(failed(format!(
                "error: the image {reference} has several names ({}): remove each by its name",
                names.join(", ")
            )));
        }
    }
    match store.remove_image(&normalised) {
        Ok(true) => {
            outln!("removed {normalised}");
            Ok(())
        }
        Ok(false) => Err(failed(format!(
            "error: no image {normalised} in the store at {}",
            store.root().display()
        ))),
        Err(e) => Err(failed(format!("error: {e}"))),
    }
}

/// Runs `f` on the store's parts (content store and snapshots) that prune and check work on.
fn with_parts<T>(
    args: &StoreArgs,
    f: impl FnOnce(&Parts<'_>) -> Result<T, gc::GcError>,
) -> Result<T, Failure> {
    let store = args.open()?;
    let dir = store.root().join("snapshots");
    let snapshots = AnySnapshotter::open(&dir, None).map_err(|e| {
        failed(format!(
            "error: cannot open the snapshots {}: {e}",
            dir.display()
        ))
    })?;
    f(&Parts {
        root: store.root(),
        store: &store,
        snapshots: &snapshots,
    })
    .map_err(|e| failed(format!("error: {e}")))
}

pub fn prune(args: &PruneArgs) -> Result<(), Failure> {
    let options = GcOptions {
        older_than: args.older_than,
        keep_bytes: args.keep_bytes,
        cache_mounts: args.cache_mounts || args.all,
    };
    let report = with_parts(&args.store, |parts| {
        // The blob step waits for running builds (they hold the store's shared lock): say so, or a
        // prune beside a long build looks hung.
        if gc::any_build_running(parts.root) {
            errln!("a build is running on this store: the prune waits for it to finish");
        }
        gc::prune(parts, &options)
    })?;
    let mut freed = 0;
    for (kind, r) in report.lines() {
        outln!("removed {} {kind}, {}", r.count, human(r.bytes));
        freed += r.bytes;
    }
    if report.builds_running {
        outln!("kept every snapshot: a build is running");
    }
    outln!(
        "freed {}; the store holds {} (was {})",
        human(freed),
        human(report.bytes_after),
        human(report.bytes_before)
    );
    Ok(())
}

pub fn check(args: &CheckArgs) -> Result<(), Failure> {
    let (found, repairs) = with_parts(&args.store, |parts| gc::check(parts, args.repair))?;
    let s = &found.store;
    outln!("checked {} blobs", s.blobs);
    for (name, actual) in &s.corrupt {
        outln!("corrupt blob {name}: content hashes to {actual}");
    }
    for d in &s.missing {
        outln!("missing blob {d}: referenced but not in the store");
    }
    for (d, stored, want) in &s.bad_refcounts {
        outln!("reference count of {d} is {stored}, its roots make {want}");
    }
    for k in &found.records_missing_blobs {
        outln!("cache record {k} names blobs the store lacks");
    }
    for k in &found.snapshots_missing_data {
        outln!("snapshot {k:?} has no data directory");
    }
    for p in &found.leftovers {
        outln!("leftover {}", p.display());
    }
    if found.is_clean() {
        outln!("the store is consistent");
        return Ok(());
    }
    if !args.repair {
        return Err(failed(
            "error: the store has problems\nhint: `forge store check --repair` removes what is broken; the next build makes it again".into(),
        ));
    }
    outln!(
        "repaired: removed {} blobs, {} cache records, {} snapshots, {} leftovers; dropped {} roots",
        repairs.blobs_removed,
        repairs.records_removed,
        repairs.snapshots_removed,
        repairs.leftovers_removed,
        repairs.roots_dropped.len()
    );
    for (kind, name) in &repairs.roots_dropped {
        outln!("dropped {kind} {name}");
    }
    Ok(())
}

fn short(digest: &impl std::fmt::Display) -> String {
    let s = digest.to_string();
    let hex = s.split_once(':').map_or(s.as_str(), |(_, h)| h);
    hex.chars().take(12).collect()
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

pub(crate) fn normalise(name: &str) -> Result<String, Failure> {
    Reference::parse(name)
        .map(|r| r.to_string())
        .map_err(|e| usage(format!("error: invalid image name {name:?}: {e}")))
}

/// The stored image `given` names: by its name, or, as docker takes them, by its ID (the config
/// digest that `build -q`, `--iidfile` and `images` print: `sha256:` and 64 hex digits, or a
/// prefix of its hex digits, 4 or more, that one image alone has; a name is looked for first).
/// Returns the name it is stored under and its record; an ID several names carry gives the first.
pub(crate) fn stored_image(
    store: &forge_snapshotter::store::Store,
    given: &str,
) -> Result<(String, ImageRecord), Failure> {
    let by_id = given.starts_with("sha256:");
    if !by_id {
        let name = normalise(given)?;
        if let Some(record) = store
            .get_image(&name)
            .map_err(|e| failed(format!("error: {e}")))?
        {
            return Ok((name, record));
        }
    }
    let hex = given.strip_prefix("sha256:").unwrap_or(given);
    if !((4..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(no_image(&normalise(given)?, store));
    }
    let hex = hex.to_ascii_lowercase();
    let found: Vec<ImageRecord> = store
        .list_images()
        .map_err(|e| failed(format!("error: {e}")))?
        .into_iter()
        .filter(|r| {
            r.config
                .digest
                .to_string()
                .strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(&hex))
        })
        .collect();
    let mut ids: Vec<String> = found.iter().map(|r| r.config.digest.to_string()).collect();
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 if by_id => Err(failed(format!(
            "error: no image with the ID {given} in the store at {} (forge images lists them)",
            store.root().display()
        ))),
        0 => Err(no_image(&normalise(given)?, store)),
        1 => {
            let record = found.into_iter().next().expect("one found");
            Ok((record.reference.clone(), record))
        }
        _ => Err(failed(format!(
            "error: the ID prefix {given} names more than one image ({}): give more of it",
            ids.join(", ")
        ))),
    }
}

pub(crate) fn no_image(name: &str, store: &forge_snapshotter::store::Store) -> Failure {
    failed(format!(
        "error: no image {name} in the store at {} (forge images lists them)",
        store.root().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_sizes_print_as_documented() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
