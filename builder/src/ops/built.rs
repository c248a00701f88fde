//! What a vertex leaves: a filesystem as a list of layers (blobs in the store, or snapshots kept
//! alone), a local directory, or a test step's verdict with its artifacts and log; and how a
//! result is a cache record, read back across processes and versions.

use forge_snapshotter::store::Digest as BlobDigest;
use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use crate::solver::Record;

/// One layer of a result: what a manifest and a config need, and where the blob is (the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub media_type: String,
    /// The blob's digest (the store's type: it names the file).
    pub digest: BlobDigest,
    pub size: u64,
    pub diff_id: Digest,
    /// `registry/repository` the blob came from, for a cross-repository mount when pushing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Set when no blob was written: the layer exists only as its committed snapshot (named by
    /// the chain id of the layers up to it). Its tar was never made, so `diff_id` (and `digest`,
    /// the same) is a name drawn for the snapshot, not a hash of content, and `size` is 0;
    /// [`write_unwritten`](super::write_unwritten) makes the blob, with its real diff_id, when something needs one. While
    /// a build runs, a layer it is writing behind the steps after it is such a stand-in too, until
    /// the solver settles the output that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwritten: Option<Unwritten>,
    /// When the step that made it ran (RFC 3339, as Go writes it), carried with the result
    /// through the cache and registry caches: its history entry's time in an image, as BuildKit
    /// takes a layer's from its cache record's creation, so a fully cached rebuild is the same
    /// image. `None` for a base image's layers (their history has the times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// How forge wrote the mtimes of the layer's tar: the SOURCE_DATE_EPOCH they were clamped to,
    /// if any. An image built with another epoch gets the layer re-stamped to it
    /// ([`crate::export::restamp`]), so a cache filled with one epoch serves builds with any.
    /// `None` for a layer forge did not write (a base image's), and for one whose record an older
    /// forge wrote: see [`Layer::mtimes_unknown`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtimes: Option<Mtimes>,
}

/// The mtimes in a layer forge wrote ([`Layer::mtimes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mtimes {
    /// The SOURCE_DATE_EPOCH every later mtime was clamped to; `None`: the files' own times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clamped_to: Option<i64>,
}

impl Layer {
    /// A layer whose record does not say how its mtimes were written, though it is not one of
    /// `base` (the layers of the images the build starts from, which forge never writes) nor
    /// waiting to be written: a layer from a record of a forge before [`Layer::mtimes`]. Its tar
    /// may be clamped to any epoch, and one cannot tell which of its times were clamped, so it
    /// cannot be re-stamped; a build with SOURCE_DATE_EPOCH does not use such a record (the step
    /// runs again, and its record is replaced by one that says). `base` rather than the layer's
    /// own fields says what is a base's: a record can name a layer it made with a `source` (the
    /// registry cache it came through) and, from before [`Layer::created`], no time.
    pub fn mtimes_unknown(&self, base: &std::collections::HashSet<BlobDigest>) -> bool {
        self.mtimes.is_none() && self.unwritten.is_none() && !base.contains(&self.digest)
    }

    /// Whether this layer would have to be re-stamped from or to an epoch before 1970, which
    /// [`forge_snapshotter::restamp`] cannot do (times before 1970 are PAX records it does not
    /// make or move): its step runs again instead.
    pub fn restamp_impossible(&self, epoch: i64) -> bool {
        self.restamp_to(epoch)
            .is_some_and(|r| r.to < 0 || r.from.is_some_and(|from| from < 0))
    }

    /// How this layer's tar must change for an image built with SOURCE_DATE_EPOCH `epoch`; `None`
    /// when it is right as it is: written with that epoch, not written by forge (a base image's
    /// layer, never re-stamped), or not written yet (it will be written with `epoch`).
    pub fn restamp_to(&self, epoch: i64) -> Option<forge_snapshotter::restamp::Restamp> {
        let mtimes = self.mtimes.filter(|_| self.unwritten.is_none())?;
        (mtimes.clamped_to != Some(epoch)).then_some(forge_snapshotter::restamp::Restamp {
            from: mtimes.clamped_to,
            to: epoch,
        })
    }
}

/// A layer kept only as its snapshot ([`Layer::unwritten`]). Its blob is written with the
/// SOURCE_DATE_EPOCH of the build that needs it: the snapshot has the files' own times, so that
/// is the layer a step run in that build would write. (Records from before this ignore the epoch
/// they carried here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwritten {}

/// Files taken out of a test step: one uncompressed tar blob in the store, whose entries are named
/// by their path in the step's root filesystem without the leading `/` (`reports/junit.xml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    pub digest: BlobDigest,
    pub size: u64,
    /// The requested paths that existed after the run, as the graph wrote them.
    pub paths: Vec<String>,
}

/// A vertex's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Built {
    /// A filesystem: these layers, base first (none: scratch).
    Fs { layers: Vec<Layer> },
    /// The local directory given under this name (the build context), read in place.
    Local { name: String },
    /// A test step's verdict ([`TestStep`](crate::graph::TestStep)): how its process exited (a
    /// failure is a result here, not an error) and what it left at the artifact paths (`None`
    /// when it left none of them).
    Test {
        exit_code: i32,
        artifacts: Option<Artifacts>,
        /// What the step printed (masked, both streams in arrival order), kept so that a verdict
        /// served from the cache can show its log again; `None` when it printed nothing.
        #[serde(default)]
        log: Option<TestLog>,
    },
}

/// A test step's output as a blob of text lines in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestLog {
    pub digest: BlobDigest,
    pub size: u64,
    pub lines: u64,
}

impl Record for Built {
    fn to_record(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a result serialises")
    }

    fn from_record(bytes: &[u8]) -> Option<Self> {
        let mut built: Built = serde_json::from_slice(bytes).ok()?;
        // A record from before layers carried their time: a layer a step made counts as made
        // now, and the solver stores the record again with that time, so the next rebuild
        // repeats it rather than stamping a new one every time.
        if let Built::Fs { layers } = &mut built
            && layers
                .iter()
                .any(|l| l.source.is_none() && l.created.is_none())
        {
            let now = now_rfc3339();
            for l in layers.iter_mut().filter(|l| l.source.is_none()) {
                l.created.get_or_insert_with(|| now.clone());
            }
        }
        Some(built)
    }
}

/// This instant as a layer's [`Layer::created`].
pub(crate) fn now_rfc3339() -> String {
    crate::export::config::created_time(None).expect("the clock reads a time after 1970")
}

impl Built {
    /// The layers of a filesystem result.
    pub fn layers(&self) -> Option<&[Layer]> {
        match self {
            Built::Fs { layers } => Some(layers),
            Built::Local { .. } | Built::Test { .. } => None,
        }
    }

    /// The blobs in the store this result needs (to keep them from `forge prune`); an unwritten
    /// layer has none (its snapshot is what it needs, see [`unwritten_snapshots`](super::unwritten_snapshots)).
    pub fn blobs(&self) -> Vec<BlobDigest> {
        match self {
            Built::Fs { layers } => layers
                .iter()
                .filter(|l| l.unwritten.is_none())
                .map(|l| l.digest.clone())
                .collect(),
            Built::Local { .. } => Vec::new(),
            Built::Test { artifacts, log, .. } => artifacts
                .iter()
                .map(|a| a.digest.clone())
                .chain(log.iter().map(|l| l.digest.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record from before layers carried their time: the layers steps made are given one (the
    /// solver stores the record again so), a base image's layers are left to their history, and
    /// a record with times reads back as written.
    #[test]
    fn an_old_record_gets_times_for_its_own_layers_only() {
        let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let old = format!(
            r#"{{"kind":"fs","layers":[
              {{"media_type":"m","digest":"{digest}","size":1,"diff_id":"{digest}","source":"r/busybox"}},
              {{"media_type":"m","digest":"{digest}","size":1,"diff_id":"{digest}"}}]}}"#
        );
        let built = Built::from_record(old.as_bytes()).unwrap();
        let layers = built.layers().unwrap();
        assert_eq!(layers[0].created, None);
        let made = layers[1]
            .created
            .clone()
            .expect("a step's layer gets a time");
        assert!(
            crate::export::time::parse_rfc3339(&made).is_some(),
            "{made}"
        );
        let record = built.to_record();
        assert_eq!(Built::from_record(&record).unwrap(), built);
        assert_eq!(Built::from_record(&record).unwrap().to_record(), record);
    }

    /// How a record says a layer's mtimes were written, and what each answer asks of a build with
    /// SOURCE_DATE_EPOCH: a base image's layer is never re-stamped, an older forge's layer is of
    /// unknown epoch (a build with an epoch does not use its record), a marked one is re-stamped
    /// unless it has the build's epoch, an unwritten one (an older record's epoch in it ignored)
    /// is written with the build's.
    #[test]
    fn a_layer_s_mark_says_whether_an_image_with_an_epoch_re_stamps_it() {
        let base_digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let digest = "sha256:486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";
        let layer = |digest: &str, extra: &str| {
            format!(
                r#"{{"media_type":"m","digest":"{digest}","size":1,"diff_id":"{digest}"{extra}}}"#
            )
        };
        let created = r#","created":"2026-01-01T00:00:00Z""#;
        let record = format!(
            r#"{{"kind":"fs","layers":[{}]}}"#,
            [
                layer(base_digest, r#","source":"r/busybox""#),
                layer(digest, created),
                // Through a registry cache, from before layers had times: a source, no time.
                layer(digest, r#","source":"r/app/cache""#),
                layer(
                    digest,
                    &format!(r#"{created},"mtimes":{{"clamped_to":1700000000}}"#)
                ),
                layer(digest, &format!(r#"{created},"mtimes":{{}}"#)),
                layer(
                    digest,
                    &format!(r#"{created},"unwritten":{{"source_date_epoch":1700000000}}"#)
                ),
            ]
            .join(",")
        );
        let built = Built::from_record(record.as_bytes()).unwrap();
        let [base, old, old_imported, e1, unclamped, unwritten] = built.layers().unwrap() else {
            panic!("six layers");
        };
        let bases = std::collections::HashSet::from([base_digest.parse().unwrap()]);
        let unknown: Vec<bool> = built
            .layers()
            .unwrap()
            .iter()
            .map(|l| l.mtimes_unknown(&bases))
            .collect();
        assert_eq!(unknown, [false, true, true, false, false, false]);
        for l in [base, old, old_imported, unwritten] {
            assert_eq!(l.restamp_to(1700000100), None, "{l:?}");
        }
        assert_eq!(e1.restamp_to(1700000000), None);
        let rule = |from| {
            Some(forge_snapshotter::restamp::Restamp {
                from,
                to: 1700000100,
            })
        };
        assert_eq!(e1.restamp_to(1700000100), rule(Some(1700000000)));
        assert_eq!(unclamped.restamp_to(1700000100), rule(None));
        // What a record says is read back as written.
        let again = built.to_record();
        assert!(String::from_utf8_lossy(&again).contains(r#""mtimes":{"clamped_to":1700000000}"#));
        assert!(String::from_utf8_lossy(&again).contains(r#""mtimes":{}"#));
        assert_eq!(Built::from_record(&again).unwrap(), built);
    }
}
