//! The persisted memo of file content hashes that lets a rebuild skip reading unchanged files.
//! One file per context directory under the state directory, replaced atomically; anything that
//! does not verify (short, wrong magic, bad checksum, paths out of order) is thrown away and
//! rebuilt, never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

/// v2: a file's hash folds in its extended attributes. A v1 memo's hashes do not, so it is
/// dropped quietly (every file read once again) rather than trusted.
const MAGIC: &[u8; 24] = b"forge-context-memo\0v2\0\0\n";
const MAGIC_V1: &[u8; 24] = b"forge-context-memo\0v1\0\0\n";
/// How close to the memo's own time a file may have been modified and still be trusted: one
/// second covers the coarsest timestamp granularity of the filesystems we meet (ext3, HFS+).
const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// What identifies one version of a file without reading it: if any of these move, the content
/// may have changed. mtime alone is not enough (tools restore it), hence ctime, inode and device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub dev: u64,
}

/// The memo as loaded: its verified records, kept as the bytes they were read as (no map, no
/// string per path: a no-op rebuild of a large context pays for neither), and when the snapshot
/// that wrote it began. Records are in ascending path order, the order the walk sorts its entries
/// in, so they are matched in one pass ([`Memo::lookups`]).
#[derive(Debug, Default)]
pub(crate) struct Memo {
    taken_at_ns: i64,
    /// The records, each a path length (u32), the path, the key (five u64) and the hash.
    records: Vec<u8>,
    /// Where `records` start in the file's bytes.
    start: usize,
    count: u64,
}

/// What a record says of its path: the file's key when hashed, and the hash.
type Remembered = (FileKey, [u8; 32]);

/// Where the memo of the context at `root` lives under `state_dir`.
pub(crate) fn memo_file(state_dir: &Path, root: &Path) -> PathBuf {
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let id = blake3::hash(canonical.as_os_str().as_encoded_bytes());
    state_dir
        .join("context-memo")
        .join(&id.to_hex().as_str()[..32])
}

impl Memo {
    /// Loads the memo at `path`. A missing file is an empty memo; an unreadable or corrupt one is an
    /// empty memo plus the reason it was discarded.
    pub fn load(path: &Path) -> (Memo, Option<String>) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Memo::default(), None),
            Err(e) => {
                return (
                    Memo::default(),
                    Some(format!("memo {} discarded: {e}", path.display())),
                );
            }
        };
        let len = bytes.len();
        if bytes.starts_with(MAGIC_V1) {
            return (Memo::default(), None);
        }
        match Self::decode(bytes) {
            Some(m) => (m, None),
            None => (
                Memo::default(),
                Some(format!(
                    "memo {} discarded: corrupt or truncated ({len} bytes)",
                    path.display()
                )),
            ),
        }
    }

    /// Checks `bytes` whole (checksum, header, every record's shape, paths in ascending order)
    /// without copying any of it.
    fn decode(mut bytes: Vec<u8>) -> Option<Memo> {
        let body_len = bytes.len().checked_sub(32)?;
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut r = Reader(body.strip_prefix(MAGIC.as_slice())?);
        let taken_at_ns = r.i64()?;
        let count = r.u64()?;
        let start = body_len - r.0.len();
        let mut previous: Option<&[u8]> = None;
        for _ in 0..count {
            let (path, _) = r.record()?;
            if previous.is_some_and(|p| p >= path) {
                return None;
            }
            previous = Some(path);
        }
        if !r.0.is_empty() {
            return None;
        }
        bytes.truncate(body_len);
        Some(Memo {
            taken_at_ns,
            records: bytes,
            start,
            count,
        })
    }

    /// How many files the memo remembers.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Lookups of paths in ascending order (the walk's sorted entries), each [`Lookups::get`]
    /// moving past the records before it: one pass over the memo for the whole context.
    pub fn lookups(&self, now_ns: i64) -> Lookups<'_> {
        Lookups {
            taken_at_ns: self.taken_at_ns,
            rest: Reader(self.records.get(self.start..).unwrap_or_default()),
            now_ns,
        }
    }

    /// Writes a memo atomically: a temporary file in the same directory renamed over the old one.
    /// `entries` come in ascending path order (a memo that is not is discarded when loaded).
    /// Entries the next run could not trust are left out. Nothing is synced: the memo is a cache
    /// whose checksum the next load verifies, so a crash can leave the old memo, the new one, or
    /// one that is thrown away and rebuilt by reading the files again; never a wrong hash. A sync
    /// would make every build whose context changed wait for the disk.
    pub fn save<'a>(
        path: &Path,
        taken_at_ns: i64,
        entries: impl Iterator<Item = (&'a [u8], FileKey, blake3::Hash)>,
    ) -> std::io::Result<()> {
        let mut body = Vec::with_capacity(1 << 16);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&taken_at_ns.to_le_bytes());
        let count_at = body.len();
        body.extend_from_slice(&0u64.to_le_bytes());
        let mut count: u64 = 0;
        for (p, key, hash) in entries {
            if !trustworthy(key.mtime_ns, taken_at_ns) {
                continue;
            }
            let len = u32::try_from(p.len()).map_err(std::io::Error::other)?;
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(p);
            for v in [
                key.size,
                key.mtime_ns as u64,
                key.ino,
                key.ctime_ns as u64,
                key.dev,
            ] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(hash.as_bytes());
            count += 1;
        }
        body[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());

        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        // Unique per process and call, so concurrent forge processes never share a temporary file;
        // the last rename wins, and each candidate is a complete memo.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{seq}",
            path.file_name()
                .map_or("memo".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            drop(f);
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// See [`Memo::lookups`].
pub(crate) struct Lookups<'a> {
    taken_at_ns: i64,
    rest: Reader<'a>,
    now_ns: i64,
}

impl Lookups<'_> {
    /// The remembered hash of `path`, if its key is unchanged and the memo can vouch for it.
    /// `path` must sort after every path asked for before (a smaller one is not found).
    ///
    /// A file modified within [`RACY_MARGIN_NS`] of the moment the memo's snapshot began is not
    /// trusted ("racy git"): a write in the same timestamp tick as the hashing would leave the key
    /// unchanged while the content moved on. The same goes for files modified within the last second.
    pub fn get(&mut self, path: &[u8], key: &FileKey) -> Option<blake3::Hash> {
        loop {
            let mut ahead = Reader(self.rest.0);
            let (p, (k, hash)) = ahead.record()?;
            match p.cmp(path) {
                std::cmp::Ordering::Less => self.rest = ahead,
                std::cmp::Ordering::Greater => return None,
                std::cmp::Ordering::Equal => {
                    self.rest = ahead;
                    if k != *key
                        || !trustworthy(key.mtime_ns, self.taken_at_ns)
                        || !trustworthy(key.mtime_ns, self.now_ns)
                    {
                        return None;
                    }
                    return Some(blake3::Hash::from_bytes(hash));
                }
            }
        }
    }
}

fn trustworthy(mtime_ns: i64, reference_ns: i64) -> bool {
    mtime_ns < reference_ns.saturating_sub(RACY_MARGIN_NS)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    /// One record: its path's bytes, key and hash.
    fn record(&mut self) -> Option<(&'a [u8], Remembered)> {
        let len = self.u32()? as usize;
        let path = self.take(len)?;
        let key = FileKey {
            size: self.u64()?,
            mtime_ns: self.i64()?,
            ino: self.u64()?,
            ctime_ns: self.i64()?,
            dev: self.u64()?,
        };
        let hash: [u8; 32] = self.take(32)?.try_into().ok()?;
        Some((path, (key, hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mtime_ns: i64) -> FileKey {
        FileKey {
            size: 3,
            mtime_ns,
            ino: 7,
            ctime_ns: mtime_ns,
            dev: 1,
        }
    }

    #[test]
    fn round_trip_and_racy_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let t = 100 * RACY_MARGIN_NS;
        let h = blake3::hash(b"abc");
        let old = key(t - 5 * RACY_MARGIN_NS);
        let racy = key(t - RACY_MARGIN_NS / 2);
        Memo::save(
            &path,
            t,
            [(&b"old"[..], old, h), (b"racy", racy, h)].into_iter(),
        )
        .unwrap();
        let (m, warn) = Memo::load(&path);
        assert!(warn.is_none());
        assert_eq!(m.len(), 1, "the racy entry is not saved");
        let now = t + 10 * RACY_MARGIN_NS;
        let mut l = m.lookups(now);
        assert_eq!(l.get(b"old", &old), Some(h));
        assert_eq!(
            l.get(b"racy", &racy),
            None,
            "racy entry must not be trusted"
        );
        let mut moved = old;
        moved.ctime_ns += 1;
        assert_eq!(m.lookups(now).get(b"old", &moved), None);
        // A clock that says the file was modified just now wins over an old memo.
        assert_eq!(m.lookups(old.mtime_ns + 1).get(b"old", &old), None);
    }

    #[test]
    fn lookups_pass_over_paths_the_walk_no_longer_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let t = 100 * RACY_MARGIN_NS;
        let k = key(t - 5 * RACY_MARGIN_NS);
        let names = ["a", "a/b", "a/c", "b", "c/d", "e"];
        let hashes: Vec<_> = names.iter().map(|n| blake3::hash(n.as_bytes())).collect();
        Memo::save(
            &path,
            t,
            names
                .iter()
                .zip(&hashes)
                .map(|(n, h)| (n.as_bytes(), k, *h)),
        )
        .unwrap();
        let (m, warn) = Memo::load(&path);
        assert!(warn.is_none());
        assert_eq!(m.len(), names.len());
        let mut l = m.lookups(t + 10 * RACY_MARGIN_NS);
        // Walked now: "a/b" and "c/d" are gone, "a/bb" and "d" are new.
        assert_eq!(l.get(b"a", &k), Some(hashes[0]));
        assert_eq!(l.get(b"a/bb", &k), None);
        assert_eq!(l.get(b"a/c", &k), Some(hashes[2]));
        assert_eq!(l.get(b"b", &k), Some(hashes[3]));
        assert_eq!(l.get(b"d", &k), None);
        assert_eq!(l.get(b"e", &k), Some(hashes[5]));
        assert_eq!(l.get(b"f", &k), None, "past the last record");
    }

    /// The memo refused (as corrupt) any path that was not UTF-8; Linux names are bytes.
    #[test]
    fn a_path_that_is_not_utf8_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let t = 100 * RACY_MARGIN_NS;
        let (k, h) = (key(t - 5 * RACY_MARGIN_NS), blake3::hash(b"x"));
        let names: [&[u8]; 3] = [b"a", b"a\xff\xfe", b"b"];
        Memo::save(&path, t, names.iter().map(|n| (*n, k, h))).unwrap();
        let (m, warn) = Memo::load(&path);
        assert!(warn.is_none(), "{warn:?}");
        assert_eq!(m.len(), 3);
        let mut l = m.lookups(t + 10 * RACY_MARGIN_NS);
        assert_eq!(l.get(b"a\xff\xfe", &k), Some(h));
        assert_eq!(l.get(b"b", &k), Some(h));
    }

    #[test]
    fn a_memo_out_of_order_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let t = 100 * RACY_MARGIN_NS;
        let (k, h) = (key(t - 5 * RACY_MARGIN_NS), blake3::hash(b"x"));
        for names in [["b", "a"], ["a", "a"]] {
            Memo::save(&path, t, names.iter().map(|n| (n.as_bytes(), k, h))).unwrap();
            let (m, warn) = Memo::load(&path);
            assert_eq!(m.len(), 0, "{names:?}");
            assert!(warn.is_some_and(|w| w.contains("corrupt")), "{names:?}");
        }
    }

    #[test]
    fn any_damage_discards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let h = blake3::hash(b"abc");
        Memo::save(&path, i64::MAX / 2, [(&b"a"[..], key(1), h)].into_iter()).unwrap();
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 10, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let (m, warn) = Memo::load(&path);
            assert!(m.len() == 0 && warn.is_some(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(Memo::load(&path).1.is_some());
    }
}
