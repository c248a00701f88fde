//! Giving disk back: `forge prune` (and the automatic prune after a build) over everything a store
//! holds, and `forge store check`. It lives in the builder because it must read cache records to know
//! which blobs and snapshots they still need; the pieces it removes belong to the crates below.
//!
//! What is needed, and so kept:
//! - a blob held by a root (an image, a cache record) or a live lease (the store's rule);
//! - a committed snapshot whose name is the chain id of a prefix of the layers of an image or of a
//!   cache record, or the parent of a snapshot kept; and every committed snapshot while any build is
//!   running (a running build may be about to mount one a record it just read names);
//! - anything of a build or step whose lock is held (its `tmp/build-*`, `run/step-*`, its scratch
//!   snapshots), an `extract-*` snapshot whose writer holds its lock, a cache mount instance a step
//!   holds.
//!
//! Everything else may go: cache records first when asked (oldest first, by last use), then what
//! they held. `keep_bytes` is the store's size to stop at: blobs + snapshots + cache mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use forge_snapshotter::layer::chain_id_step;
use forge_snapshotter::lock::{self, FileLock, LockMode};
use forge_snapshotter::snapshot::{
    AnySnapshotter, Kind, SnapshotError, Snapshotter, remove_abandoned_extracts, tree_usage,
};
use forge_snapshotter::store::{Digest as BlobDigest, PrunePolicy, Store, StoreError};
use oci_spec::image::Digest;

use crate::ops::Built;
use crate::pipeline::run::JOB_CACHE_ROOT;
use crate::solver::{CacheError, CacheStore, DiskCache, Record};

/// The root kind cache records hold their blobs under.
pub const CACHE_ROOT: &str = "build-cache";

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What to prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Only what has not been used for this long: records by last use, blobs by last write,
    /// snapshots by when they were committed.
    pub older_than: Option<Duration>,
    /// Stop once the store (blobs + snapshots + cache mounts) is at most this many bytes.
    pub keep_bytes: Option<u64>,
    /// Also remove the cache mounts (`RUN --mount=type=cache`) no step holds.
    pub cache_mounts: bool,
}

/// How many things of one kind went, and the bytes they held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub count: usize,
    pub bytes: u64,
}

impl Reclaimed {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What [`prune`] did, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub cache_records: Reclaimed,
    pub blobs: Reclaimed,
    pub snapshots: Reclaimed,
    /// `extract-*` snapshots of unpacks that died.
    pub extracts: Reclaimed,
    /// Dead builds' and steps' `tmp/build-*`, `run/step-*` and scratch snapshots.
    pub dead_builds: Reclaimed,
    pub cache_mounts: Reclaimed,
    /// Pipeline jobs' GitLab caches (`cache: key: paths:`), dropped with the cache mounts; the
    /// bytes show with the blobs they held.
    pub job_caches: Reclaimed,
    /// The store's size (blobs + snapshots + cache mounts) before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Committed snapshots were all kept because a build was running.
    pub builds_running: bool,
}

impl GcReport {
    /// One `kind: count (bytes)` line per kind, for people.
    pub fn lines(&self) -> Vec<(&'static str, Reclaimed)> {
        vec![
            ("cache records", self.cache_records),
            ("blobs", self.blobs),
            ("snapshots", self.snapshots),
            ("partial unpacks", self.extracts),
            ("dead builds", self.dead_builds),
            ("cache mounts", self.cache_mounts),
            ("job caches", self.job_caches),
        ]
    }
}

/// The store's parts, as a session or the CLI opens them.
pub struct Parts<'a> {
    pub root: &'a Path,
    pub store: &'a Store,
    pub snapshots: &'a AnySnapshotter,
}

impl Parts<'_> {
    fn cache(&self) -> Result<DiskCache, GcError> {
        Ok(DiskCache::open(self.root.join("build-cache"))?)
    }

    fn cache_mount_root(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }
}

fn usage(path: &Path) -> u64 {
    tree_usage(path).map_or(0, |u| u.bytes)
}

fn cutoff(age: Option<Duration>) -> Option<SystemTime> {
    age.map(|a| {
        SystemTime::now()
            .checked_sub(a)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    })
}

/// Whether any build of the store at `root` is running, in any process.
pub fn any_build_running(root: &Path) -> bool {
    let tmp = crate::scratch::tmp_root(root);
    let Ok(entries) = fs::read_dir(&tmp) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("build-")
            && name
                .strip_suffix(".lock")
                .is_some_and(|n| lock::is_live(&tmp, n))
    })
}

/// Sweeps `parent/<prefix>*` directories nobody holds, counting their bytes.
fn sweep_dead_dirs(parent: &Path, prefix: &str, into: &mut Reclaimed) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let mut bytes = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && !name.ends_with(".lock") && !lock::is_live(parent, &name) {
            bytes += usage(&e.path());
        }
    }
    let n = lock::sweep_dead(parent, prefix);
    into.count += n;
    into.bytes += bytes;
}

/// The chain ids of every prefix of `diff_ids`.
fn chains<'a>(diff_ids: impl IntoIterator<Item = &'a Digest>, into: &mut BTreeSet<String>) {
    let mut parent: Option<Digest> = None;
    for d in diff_ids {
        let next = chain_id_step(parent.as_ref(), d);
        into.insert(next.to_string());
        parent = Some(next);
    }
}

/// The diff ids an image's config lists; empty when the config is missing or unreadable.
fn image_diff_ids(store: &Store, config: &BlobDigest) -> Vec<Digest> {
    let Ok(bytes) = store.read_blob(config) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    value["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str()?.parse().ok())
        .collect()
}

/// Snapshot names the store's images and cache records need.
fn needed_snapshots(parts: &Parts<'_>, cache: &DiskCache) -> Result<BTreeSet<String>, GcError> {
    let mut needed = BTreeSet::new();
    for image in parts.store.list_images()? {
        chains(
            &image_diff_ids(parts.store, &image.config.digest),
            &mut needed,
        );
    }
    for (key, _) in cache.entries()? {
        if let Some(Built::Fs { layers }) = cache.get(&key)?.and_then(|r| Built::from_record(&r)) {
            chains(layers.iter().map(|l| &l.diff_id), &mut needed);
        }
    }
    Ok(needed)
}

/// Removes committed snapshots nothing needs, leaves first and oldest first, while the store is
/// over `keep` (when given). `total` is the store's size, lowered by what goes.
fn collect_snapshots(
    parts: &Parts<'_>,
    cache: &DiskCache,
    opts: &GcOptions,
    total: &mut u64,
    report: &mut GcReport,
) -> Result<(), GcError> {
    // The store to itself while snapshots go. A build holds a store session for its whole life and
    // reads cache records only inside it; without this, a build that started after the check
    // below could mount a snapshot a record names just as it is removed (found by the chaos
    // test: "snapshot ... not found"). With a session held anywhere, the step waits for a later
    // prune, as it did for a running build.
    let Some(_alone) = parts.store.try_alone()? else {
        report.builds_running = true;
        return Ok(());
    };
    if any_build_running(parts.root) {
        report.builds_running = true;
        return Ok(());
    }
    let needed = needed_snapshots(parts, cache)?;
    let cutoff = cutoff(opts.older_than).map(|t| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    loop {
        let list = parts.snapshots.list()?;
        let by_key: BTreeMap<&str, _> = list.iter().map(|i| (i.key.as_str(), i)).collect();
        // Kept: needed ones, any not committed (a view or active one has an owner that decides),
        // and the ancestors of those.
        let mut kept = BTreeSet::new();
        for info in &list {
            if info.kind != Kind::Committed
                || needed.contains(&info.key)
                || cutoff.is_some_and(|c| info.created > c)
            {
                let mut cur = Some(info.key.as_str());
                while let Some(k) = cur {
                    if !kept.insert(k) {
                        break;
                    }
                    cur = by_key.get(k).and_then(|i| i.parent.as_deref());
                }
            }
        }
        let parents: BTreeSet<&str> = list.iter().filter_map(|i| i.parent.as_deref()).collect();
        let mut leaves: Vec<_> = list
            .iter()
            .filter(|i| !kept.contains(i.key.as_str()) && !parents.contains(i.key.as_str()))
            .collect();
        if leaves.is_empty() {
            return Ok(());
        }
        leaves.sort_by_key(|i| (i.created, i.key.clone()));
        for info in leaves {
            if opts.keep_bytes.is_some_and(|keep| *total <= keep) {
                return Ok(());
            }
            let bytes = parts.snapshots.usage(&info.key).map_or(0, |u| u.bytes);
            match parts.snapshots.remove(&info.key) {
                Ok(()) => {
                    report.snapshots.add(bytes);
                    *total = total.saturating_sub(bytes);
                }
                // Another process took it (or made a child of it) meanwhile.
                Err(SnapshotError::NotFound(_) | SnapshotError::HasChildren { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Unneeded snapshots, then unheld blobs, within the budget.
fn collect(
    parts: &Parts<'_>,
    cache: &DiskCache,
    opts: &GcOptions,
    total: &mut u64,
    report: &mut GcReport,
) -> Result<(), GcError> {
    collect_snapshots(parts, cache, opts, total, report)?;
    let (_, blob_bytes) = parts.store.blob_totals()?;
    let others = total.saturating_sub(blob_bytes);
    let pruned = parts.store.prune(&PrunePolicy {
        older_than: opts.older_than,
        keep_bytes: opts.keep_bytes.map(|k| k.saturating_sub(others)),
    })?;
    report.blobs.count += pruned.removed.len();
    report.blobs.bytes += pruned.freed_bytes;
    *total = total.saturating_sub(pruned.freed_bytes);
    Ok(())
}

/// Drops the cache record of `key` and the root that holds its blobs; `false` when a process is
/// computing it now.
fn drop_record(
    store: &Store,
    cache: &DiskCache,
    key: &crate::solver::CacheKey,
) -> Result<bool, GcError> {
    if !cache.remove(key) {
        return Ok(false);
    }
    store.remove_root(CACHE_ROOT, &key.to_hex())?;
    Ok(true)
}

/// Removes cache mount instances no step holds (and layouts of older versions, which nothing reads).
fn prune_cache_mounts(root: &Path, into: &mut Reclaimed) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != "v1" {
            into.add(usage(&e.path()));
            lock::remove_same_fs(&e.path());
            continue;
        }
        let Ok(caches) = fs::read_dir(e.path()) else {
            continue;
        };
        for cache in caches.flatten() {
            let Ok(instances) = fs::read_dir(cache.path()) else {
                continue;
            };
            for inst in instances.flatten() {
                let name = inst.file_name().to_string_lossy().into_owned();
                if name.parse::<u32>().is_err() {
                    continue;
                }
                let lock_path = cache.path().join(format!("{name}.lock"));
                let Ok(Some(held)) = FileLock::try_acquire(&lock_path, LockMode::Exclusive) else {
                    continue;
                };
                into.add(usage(&inst.path()));
                lock::remove_same_fs(&inst.path());
                held.remove();
            }
        }
    }
}

/// The store's size: blobs + snapshots + cache mounts.
pub fn store_bytes(parts: &Parts<'_>) -> Result<u64, GcError> {
    let (_, blobs) = parts.store.blob_totals()?;
    let mut snaps = 0;
    for info in parts.snapshots.list()? {
        snaps += parts.snapshots.usage(&info.key).map_or(0, |u| u.bytes);
    }
    Ok(blobs + snaps + usage(&parts.cache_mount_root()))
}

/// Prunes the store (see the module docs for what stays). The store's reserve is given back first,
/// so that this works on a full disk, and made again at the end.
pub fn prune(parts: &Parts<'_>, opts: &GcOptions) -> Result<GcReport, GcError> {
    parts.store.release_reserve();
    let result = prune_inner(parts, opts);
    parts.store.restore_reserve();
    result
}

fn prune_inner(parts: &Parts<'_>, opts: &GcOptions) -> Result<GcReport, GcError> {
    let mut report = GcReport::default();
    let cache = parts.cache()?;
    // What dead work left: free whatever the budget, it is nobody's.
    sweep_dead_dirs(
        &crate::scratch::tmp_root(parts.root),
        "build-",
        &mut report.dead_builds,
    );
    sweep_dead_dirs(&parts.root.join("run"), "step-", &mut report.dead_builds);
    for bytes in crate::scratch::remove_dead_scratch_snapshots(parts.root, parts.snapshots) {
        report.dead_builds.add(bytes);
    }
    for (_, u) in remove_abandoned_extracts(parts.snapshots)? {
        report.extracts.add(u.bytes);
    }
    cache.dead_temp_files(true);
    if opts.cache_mounts {
        prune_cache_mounts(&parts.cache_mount_root(), &mut report.cache_mounts);
        for (name, _) in parts.store.roots(JOB_CACHE_ROOT)? {
            parts.store.remove_root(JOB_CACHE_ROOT, &name)?;
            report.job_caches.add(0);
        }
    }
    let mut total = store_bytes(parts)?;
    report.bytes_before =
        total + report.dead_builds.bytes + report.extracts.bytes + report.cache_mounts.bytes;

    // Roots of records that are gone hold blobs for nothing.
    let records: BTreeSet<String> = cache.entries()?.iter().map(|(k, _)| k.to_hex()).collect();
    for (name, _) in parts.store.roots(CACHE_ROOT)? {
        if !records.contains(&name) {
            parts.store.remove_root(CACHE_ROOT, &name)?;
        }
    }

    let cutoff = cutoff(opts.older_than);
    let candidates: Vec<_> = cache
        .entries()?
        .into_iter()
        .filter(|(_, used)| cutoff.is_none_or(|c| *used <= c))
        .collect();
    match opts.keep_bytes {
        None => {
            for (key, _) in &candidates {
                if drop_record(parts.store, &cache, key)? {
                    report.cache_records.add(0);
                }
            }
            collect(parts, &cache, opts, &mut total, &mut report)?;
        }
        Some(keep) => {
            collect(parts, &cache, opts, &mut total, &mut report)?;
            for (key, _) in &candidates {
                if total <= keep {
                    break;
                }
                if drop_record(parts.store, &cache, key)? {
                    report.cache_records.add(0);
                    collect(parts, &cache, opts, &mut total, &mut report)?;
                }
            }
        }
    }
    // Notes of re-stamped layers whose blobs went with the records are worth nothing.
    crate::export::Restamped::new(parts.root.join("restamped")).forget_gone(parts.store);
    report.bytes_after = store_bytes(parts)?;
    Ok(report)
}

/// Parses `FORGE_GC_KEEP_BYTES` (or any size given the same way): digits with an optional K, M, G
/// or T (binary) suffix, `B`/`iB` allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500M or 2G"))?;
    let factor: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    Ok(n.saturating_mul(factor))
}

/// The automatic prune's budget: `FORGE_GC_KEEP_BYTES`, unset (no automatic prune) by default.
pub fn auto_keep_bytes() -> Option<Result<u64, String>> {
    let v = std::env::var("FORGE_GC_KEEP_BYTES").ok()?;
    let v = v.trim();
    (!v.is_empty()).then(|| parse_size(v))
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckFindings {
    pub store: forge_snapshotter::store::CheckReport,
    /// Cache records (key hex) naming blobs the store lacks.
    pub records_missing_blobs: Vec<String>,
    /// Snapshots whose directory is gone.
    pub snapshots_missing_data: Vec<String>,
    /// Temp files and directories dead writers left.
    pub leftovers: Vec<PathBuf>,
}

impl CheckFindings {
    pub fn is_clean(&self) -> bool {
        self.store.is_clean()
            && self.records_missing_blobs.is_empty()
            && self.snapshots_missing_data.is_empty()
            && self.leftovers.is_empty()
    }
}

/// What [`check`] repaired.
#[derive(Debug, Clone, Default)]
pub struct Repairs {
    pub blobs_removed: usize,
    pub roots_dropped: Vec<(String, String)>,
    pub records_removed: usize,
    pub snapshots_removed: usize,
    pub leftovers_removed: usize,
}

fn dead_dirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(prefix) && !name.ends_with(".lock") && !lock::is_live(parent, &name))
                .then(|| e.path())
        })
        .collect()
}

/// Checks the store: every blob against its name, roots against blobs, reference counts, cache
/// records against blobs, snapshots against their directories, and leftovers of dead writers. With
/// `repair`, removes what is broken so that the next build makes it again.
pub fn check(parts: &Parts<'_>, repair: bool) -> Result<(CheckFindings, Repairs), GcError> {
    let cache = parts.cache()?;
    let mut findings = CheckFindings {
        store: parts.store.check()?,
        ..CheckFindings::default()
    };
    let mut lost: BTreeSet<BlobDigest> = findings.store.missing.iter().cloned().collect();
    lost.extend(findings.store.corrupt.iter().map(|(d, _)| d.clone()));
    let mut broken_records = Vec::new();
    for (key, _) in cache.entries()? {
        let Some(built) = cache.get(&key)?.and_then(|r| Built::from_record(&r)) else {
            continue;
        };
        if built
            .blobs()
            .iter()
            .any(|d| lost.contains(d) || !parts.store.has_blob(d))
        {
            findings.records_missing_blobs.push(key.to_hex());
            broken_records.push(key);
        }
    }
    findings.snapshots_missing_data = parts.snapshots.missing_data()?;
    findings.leftovers = cache.dead_temp_files(false);
    findings
        .leftovers
        .extend(dead_dirs(&crate::scratch::tmp_root(parts.root), "build-"));
    findings
        .leftovers
        .extend(dead_dirs(&parts.root.join("run"), "step-"));

    let mut repairs = Repairs::default();
    if !repair {
        return Ok((findings, repairs));
    }
    parts.store.release_reserve();
    for (digest, _) in &findings.store.corrupt {
        if parts.store.remove_blob(digest)?.is_some() {
            repairs.blobs_removed += 1;
        }
    }
    for key in &broken_records {
        if cache.remove(key) {
            repairs.records_removed += 1;
        }
    }
    if !findings.store.is_clean() {
        repairs.roots_dropped = parts.store.drop_roots_holding(&lost)?;
    }
    // A snapshot without data goes with its descendants (they are unusable without it).
    let mut doomed: BTreeSet<String> = findings.snapshots_missing_data.iter().cloned().collect();
    loop {
        let list = parts.snapshots.list()?;
        let more: Vec<String> = list
            .iter()
            .filter(|i| i.parent.as_ref().is_some_and(|p| doomed.contains(p)))
            .map(|i| i.key.clone())
            .filter(|k| !doomed.contains(k))
            .collect();
        if more.is_empty() {
            break;
        }
        doomed.extend(more);
    }
    while !doomed.is_empty() {
        let list = parts.snapshots.list()?;
        let parents: BTreeSet<&str> = list.iter().filter_map(|i| i.parent.as_deref()).collect();
        let leaves: Vec<String> = doomed
            .iter()
            .filter(|k| !parents.contains(k.as_str()))
            .cloned()
            .collect();
        if leaves.is_empty() {
            break;
        }
        for k in leaves {
            parts.snapshots.remove(&k)?;
            doomed.remove(&k);
            repairs.snapshots_removed += 1;
        }
    }
    repairs.leftovers_removed = cache.dead_temp_files(true).len();
    let mut swept = Reclaimed::default();
    sweep_dead_dirs(&crate::scratch::tmp_root(parts.root), "build-", &mut swept);
    sweep_dead_dirs(&parts.root.join("run"), "step-", &mut swept);
    repairs.leftovers_removed += swept.count;
    parts.store.restore_reserve();
    Ok((findings, repairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_documented() {
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10"), Ok(10));
        assert!(parse_size("3X").is_err());
        assert!(parse_size("M").is_err());
    }
}
