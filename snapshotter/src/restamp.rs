//! A layer forge wrote with one SOURCE_DATE_EPOCH, made into the layer it would have written with
//! another, without the files it was made from (BuildKit's rewrite-timestamp does this at export):
//! the tar is read back, each header's mtime rewritten and its checksum made again, the contents
//! passed through, and the result hashed and compressed as a [`crate::layer::LayerWriter`]'s is.
//! Only the layout that writer makes is taken (ustar; PAX for long names, ids and xattrs; mtimes in
//! the header's octal field, but a time before 1970 in a PAX record); anything else is refused rather than guessed at.

use std::io::{self, Read, Write};

use crate::compress::Compression;
use crate::layer::{
    BLOCK, LayerDescriptor, LayerError, LayerStream, Piped, USTAR_SIZE_MAX, header_sum, octal,
    set_checksum, written_mtime,
};

/// How a layer's mtimes move from the SOURCE_DATE_EPOCH it was written with to another.
///
/// Both epochs are 1970 or later: a time before is a PAX record (kept as it is, below any such
/// epoch), which re-stamping neither makes nor moves; a build from or to an earlier epoch runs
/// its steps again instead.
///
/// A build with epoch `e` writes `min(t, e)` for a file whose mtime is `t`. From a layer written
/// with `from = e1`, an mtime below `e1` is the file's own, and becomes `min(t, to)`; one at `e1`
/// was clamped (the file's own time is lost, but was at least `e1`) and becomes `to`, taking files
/// a build writes to be newer than the epoch it is given, as SOURCE_DATE_EPOCH builds do (the
/// commit's time, the build after it). From a layer written without an epoch every mtime is the
/// file's own. Whiteouts keep theirs: the writer gives them a fixed one, not a file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restamp {
    /// What the layer was clamped to; `None`: written without SOURCE_DATE_EPOCH.
    pub from: Option<i64>,
    pub to: i64,
}

impl Restamp {
    /// The header mtime for one that was written as `written` (not a whiteout's).
    pub fn mtime(&self, written: u64) -> u64 {
        let written = i64::try_from(written).unwrap_or(i64::MAX);
        let own = match self.from {
            Some(from) if written >= from => i64::MAX,
            _ => written,
        };
        written_mtime(own, Some(self.to))
    }
}

/// Rewrites the layer tar `tar` (uncompressed) by `rule` into `sink`, compressed with
/// `compression`; returns the new layer's descriptor and the sink. The reading and rewriting run
/// on this thread, the hashing and compression on two others, as a diff's do.
pub fn restamp_layer<R: Read, W: Write + Send>(
    tar: R,
    sink: W,
    compression: Compression,
    rule: Restamp,
) -> Result<(LayerDescriptor, W), LayerError> {
    std::thread::scope(|scope| {
        let mut out = Piped::spawn(scope, sink, compression)?;
        match rewrite(tar, &mut out, rule) {
            Ok(()) => out.finish_stream(),
            Err(e) => Err(out.abort().unwrap_or(e)),
        }
    })
}

/// The largest PAX extended header read: forge's hold a path, a link target, ids and xattrs.
const PAX_MAX: u64 = 16 << 20;

/// Copies `tar` into `out` with every header's mtime rewritten by `rule`, up to and including the
/// end-of-archive blocks and whatever follows them.
pub fn rewrite<R: Read, S: LayerStream>(
    tar: R,
    out: &mut S,
    rule: Restamp,
) -> Result<(), LayerError> {
    let mut input = Counted {
        inner: tar,
        offset: 0,
    };
    // A PAX extended header and its records, held until the header they describe is read.
    let mut pax: Option<([u8; BLOCK], Vec<u8>)> = None;
    loop {
        let at = input.offset;
        let mut header = [0u8; BLOCK];
        input.fill(&mut header, "a header")?;
        if header.iter().all(|&b| b == 0) {
            if let Some((p, _)) = pax {
                return Err(refuse(
                    at,
                    format!("a PAX header ({:?}) describes no entry", lossy(&name(&p))),
                ));
            }
            // The writer's second zero block (and anything after it) as it is.
            let mut rest = Vec::new();
            let from = input.offset;
            input
                .read_to_end(&mut rest)
                .map_err(|source| LayerError::Read {
                    offset: from,
                    source,
                })?;
            write_all(out, &header, "the end of the archive")?;
            return write_all(out, &rest, "the end of the archive");
        }
        check_checksum(&header, at)?;
        let size = number(&header[124..136], at, "size")?;
        match header[156] {
            b'x' => {
                if pax.is_some() {
                    return Err(refuse(at, "two PAX headers in a row".into()));
                }
                if size > PAX_MAX {
                    return Err(refuse(at, format!("a PAX header of {size} bytes")));
                }
                let mut records = vec![0u8; padded(size) as usize];
                input.fill(&mut records, "a PAX header's records")?;
                records.truncate(size as usize);
                pax = Some((header, records));
            }
            b'0' | b'\0' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => {
                let mut path = name(&header);
                let mut size = size;
                let mut before_1970 = false;
                if let Some((_, records)) = &pax {
                    for (key, value) in pax_records(records).map_err(|e| refuse(at, e))? {
                        match key {
                            b"path" => path = value.to_vec(),
                            b"size" => {
                                size = std::str::from_utf8(value)
                                    .ok()
                                    .and_then(|v| v.parse().ok())
                                    .ok_or_else(|| {
                                        refuse(at, format!("PAX size {:?}", lossy(value)))
                                    })?
                            }
                            // The writer keeps mtimes to the header, but for one before 1970
                            // (the header's field then 0), which is below any epoch: it stays,
                            // and the header's 0 with it.
                            b"mtime"
                                if value.starts_with(b"-")
                                    && number(&header[136..148], at, "mtime")? == 0 =>
                            {
                                before_1970 = true
                            }
                            b"mtime" => {
                                return Err(refuse(at, "a PAX mtime record".into()));
                            }
                            _ => {}
                        }
                    }
                }
                let keep = base_name(&path).starts_with(b".wh.") || before_1970;
                let entry = lossy(&path);
                if let Some((mut p, records)) = pax.take() {
                    stamp(&mut p, rule, keep, at)?;
                    write_all(out, &p, &entry)?;
                    write_all(out, &records, &entry)?;
                    pad(out, records.len() as u64, &entry)?;
                }
                stamp(&mut header, rule, keep, at)?;
                write_all(out, &header, &entry)?;
                // The contents, and the padding to the next block, as they are.
                let n = padded(size);
                let from = input.offset;
                let taken = out
                    .take_from(&mut input, n)
                    .map_err(|source| LayerError::Write {
                        path: entry.clone(),
                        source,
                    })?;
                if taken != n {
                    return Err(refuse(
                        from + taken,
                        format!("{entry:?}: the tar ends within its {size} bytes"),
                    ));
                }
            }
            other => {
                return Err(refuse(
                    at,
                    format!(
                        "{:?}: entry type {:?}, which forge does not write",
                        lossy(&name(&header)),
                        other as char
                    ),
                ));
            }
        }
    }
}

/// Rewrites the mtime of one header (an entry's or its PAX header's) and its checksum, unless
/// it is to be kept (a whiteout's fixed one, or the 0 of a time before 1970).
fn stamp(header: &mut [u8; BLOCK], rule: Restamp, keep: bool, at: u64) -> Result<(), LayerError> {
    if keep {
        return Ok(());
    }
    let written = number(&header[136..148], at, "mtime")?;
    octal(&mut header[136..148], rule.mtime(written));
    set_checksum(header);
    Ok(())
}

/// Reads the tar and knows where it is in it.
struct Counted<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl<R: Read> Counted<R> {
    /// Fills `buf`, or says which part of the tar it ended in.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), LayerError> {
        let at = self.offset;
        self.read_exact(buf).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => refuse(at, format!("the tar ends within {what}")),
            _ => LayerError::Read { offset: at, source },
        })
    }
}

fn refuse(offset: u64, reason: String) -> LayerError {
    LayerError::Tar { offset, reason }
}

fn write_all<S: Write>(out: &mut S, bytes: &[u8], entry: &str) -> Result<(), LayerError> {
    out.write_all(bytes).map_err(|source| LayerError::Write {
        path: entry.to_string(),
        source,
    })
}

fn pad<S: Write>(out: &mut S, size: u64, entry: &str) -> Result<(), LayerError> {
    let n = (padded(size) - size) as usize;
    write_all(out, &[0u8; BLOCK][..n], entry)
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A header's checksum field against the sum of its bytes (the field counted as spaces).
fn check_checksum(header: &[u8; BLOCK], at: u64) -> Result<(), LayerError> {
    let recorded = number(&header[148..156], at, "checksum")?;
    let sum = header_sum(header);
    if recorded != sum {
        return Err(refuse(
            at,
            format!(
                "{:?}: header checksum {recorded:o}, its bytes sum to {sum:o}",
                lossy(&name(header))
            ),
        ));
    }
    Ok(())
}

/// An octal number field as the writer fills it (digits, then a NUL or space); a field in GNU's
/// base-256 form, which the writer never makes, is refused.
fn number(field: &[u8], at: u64, what: &str) -> Result<u64, LayerError> {
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    let mut value: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) || value > USTAR_SIZE_MAX {
            return Err(refuse(
                at,
                format!("the {what} field {:?} is not an octal number", lossy(field)),
            ));
        }
        value = value * 8 + u64::from(d - b'0');
    }
    Ok(value)
}

/// The entry name a ustar header holds: its prefix, a `/`, and its name.
fn name(header: &[u8; BLOCK]) -> Vec<u8> {
    let field = |range: std::ops::Range<usize>| {
        let f = &header[range];
        f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
    };
    let (prefix, name) = (field(345..500), field(0..100));
    if prefix.is_empty() {
        return name;
    }
    let mut full = prefix;
    full.push(b'/');
    full.extend_from_slice(&name);
    full
}

/// The last component of a path (a directory's trailing `/` ignored).
fn base_name(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    crate::layer::split_parent(trimmed).1
}

/// One record of a PAX extended header: its key and its value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX extended header: `<length> <key>=<value>\n`, the length counting all of it.
fn pax_records(body: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let bad = || format!("a PAX record {:?}", lossy(&rest[..rest.len().min(64)]));
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > space + 1 && l <= rest.len())
            .ok_or_else(bad)?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(bad)?;
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        records.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Ok(records)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{EntryKind, EntryMeta, LayerOptions, LayerWriter};

    const E1: i64 = 1_700_000_000;
    const E2: i64 = 1_700_000_100;
    /// Older than both epochs: a file's own time survives either.
    const OLD: i64 = 1_000_000_000;
    /// Newer than both: clamped by either.
    const NEW: i64 = 1_800_000_000;

    /// One of every entry the writer makes, every PAX form among them, with mtimes from `times`
    /// (cycled), and whiteouts.
    fn write(
        times: &[i64],
        epoch: Option<i64>,
        compression: Compression,
    ) -> (LayerDescriptor, Vec<u8>) {
        let mut w = LayerWriter::new(
            Vec::new(),
            LayerOptions {
                compression,
                source_date_epoch: epoch,
            },
        )
        .unwrap();
        let mut time = times.iter().cycle();
        let mut meta = |mode: u32, size: u64| EntryMeta {
            mode,
            uid: 1000,
            gid: 1000,
            mtime: *time.next().unwrap(),
            size,
            xattrs: Vec::new(),
        };
        let content = vec![b'x'; 1000];
        let long_dir = "d".repeat(120);
        let entries: Vec<(String, EntryKind, EntryMeta)> = vec![
            ("a.txt".into(), EntryKind::File, meta(0o644, 3)),
            ("big.txt".into(), EntryKind::File, meta(0o755, 1000)),
            ("dir".into(), EntryKind::Dir, meta(0o755, 0)),
            (
                "dir/hard".into(),
                EntryKind::Hardlink(b"a.txt".to_vec()),
                meta(0o644, 0),
            ),
            (
                "dir/link".into(),
                EntryKind::Symlink(b"../a.txt".to_vec()),
                meta(0o777, 0),
            ),
            // ustar's prefix field, then a PAX path, a PAX link target.
            (
                format!("{long_dir}/{}", "f".repeat(50)),
                EntryKind::File,
                meta(0o600, 3),
            ),
            ("p".repeat(150), EntryKind::File, meta(0o600, 3)),
            (
                "long-link".into(),
                EntryKind::Symlink("t".repeat(150).into_bytes()),
                meta(0o777, 0),
            ),
            (
                "null".into(),
                EntryKind::CharDevice { major: 1, minor: 3 },
                meta(0o666, 0),
            ),
            ("pipe".into(), EntryKind::Fifo, meta(0o644, 0)),
        ];
        for (path, kind, meta) in &entries {
            let mut data: &[u8] = &content[..meta.size as usize];
            w.append(path.as_bytes(), kind, meta, Some(&mut data))
                .unwrap();
        }
        // PAX ids and xattrs.
        let mut m = meta(0o644, 3);
        m.uid = 1 << 22;
        m.xattrs = vec![(b"user.note".to_vec(), b"kept".to_vec())];
        w.append(b"ids.txt", &EntryKind::File, &m, Some(&mut &b"abc"[..]))
            .unwrap();
        w.append_whiteout(b"dir/gone").unwrap();
        w.append_whiteout("w".repeat(150).as_bytes()).unwrap();
        w.append_opaque(b"dir").unwrap();
        w.finish().unwrap()
    }

    fn restamped(
        tar: &[u8],
        rule: Restamp,
        compression: Compression,
    ) -> (LayerDescriptor, Vec<u8>) {
        restamp_layer(tar, Vec::new(), compression, rule).unwrap()
    }

    /// The property that makes a re-stamped image a clean build's: for a snapshot whose files are
    /// older than the old epoch or newer than the new one, the layer written with `from` and
    /// re-stamped is, byte for byte, the layer written with `to`; in every compression.
    #[test]
    fn a_restamped_layer_is_the_one_written_with_the_new_epoch() {
        let times = [OLD, NEW, -5, 1 << 40, E1 - 1];
        for (from, to) in [
            (Some(E1), E2),
            (Some(E2), E1),
            (None, E1),
            (None, E2),
            (Some(E1), OLD - 1),
            (Some(E2), 0),
        ] {
            let (_, plain) = write(&times, from, Compression::None);
            let rule = Restamp { from, to };
            for compression in [
                Compression::None,
                Compression::Gzip { level: 6 },
                Compression::Zstd { level: 1 },
            ] {
                let (want, want_bytes) = write(&times, Some(to), compression);
                let (got, got_bytes) = restamped(&plain, rule, compression);
                assert_eq!(got, want, "{rule:?} {compression:?}");
                assert!(got_bytes == want_bytes, "{rule:?} {compression:?}");
            }
            // And from a compressed layer's tar, as a stored one is read back.
            let (_, gz) = write(&times, from, Compression::Gzip { level: 6 });
            let tar = crate::compress::decompressor(&gz[..], crate::compress::MEDIA_TYPE_TAR_GZIP)
                .unwrap();
            let (got, _) = restamp_layer(tar, Vec::new(), Compression::None, rule).unwrap();
            assert_eq!(got, write(&times, Some(to), Compression::None).0);
        }
    }

    /// A layer written with epoch 0 has every mtime at 0 and so every one clamped: all move to the
    /// new epoch, but the whiteouts, whose time is the writer's own, stay at 0.
    #[test]
    fn whiteouts_keep_their_time_when_every_other_mtime_moves() {
        let (_, plain) = write(&[NEW], Some(0), Compression::None);
        let (_, got) = restamped(
            &plain,
            Restamp {
                from: Some(0),
                to: E1,
            },
            Compression::None,
        );
        assert!(got == write(&[NEW], Some(E1), Compression::None).1);
        let mut archive = tar::Archive::new(&got[..]);
        let mut whiteouts = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path_bytes().into_owned();
            let mtime = entry.header().mtime().unwrap();
            if base_name(&path).starts_with(b".wh.") {
                whiteouts += 1;
                assert_eq!(mtime, 0, "{}", lossy(&path));
            } else {
                assert_eq!(mtime, E1 as u64, "{}", lossy(&path));
            }
        }
        assert_eq!(whiteouts, 3);
    }

    /// Every header of the result, PAX headers included, has its new mtime and a checksum that
    /// adds up: checked by hand and by the tar crate, which refuses a header whose sum is off.
    #[test]
    fn every_header_gets_its_mtime_and_a_checksum_that_adds_up() {
        let (_, plain) = write(&[NEW], Some(E1), Compression::None);
        let (_, got) = restamped(
            &plain,
            Restamp {
                from: Some(E1),
                to: E2,
            },
            Compression::None,
        );
        let mut archive = tar::Archive::new(&got[..]);
        let (mut headers, mut pax) = (0, 0);
        for entry in archive.entries().unwrap().raw(true) {
            let entry = entry.unwrap();
            let header: &[u8; BLOCK] = entry.header().as_bytes();
            check_checksum(header, 0).unwrap();
            let path = entry.path_bytes().into_owned();
            let mtime = entry.header().mtime().unwrap();
            if entry.header().entry_type().is_pax_local_extensions() {
                pax += 1;
            }
            let whiteout = name(header).windows(4).any(|w| w == b".wh.");
            let want = if whiteout { 0 } else { E2 as u64 };
            assert_eq!(mtime, want, "{}", lossy(&path));
            headers += 1;
        }
        // Three PAX headers (a path, a link target, ids and xattrs) and a whiteout's long path.
        assert_eq!(pax, 4);
        assert_eq!(headers, 14 + pax);
        // The checksum field as the writer fills it: six octal digits, a NUL and a space.
        let sum = &got[148..156];
        assert_eq!((sum[6], sum[7]), (0, b' '), "{sum:?}");
    }

    #[test]
    fn the_rule_reads_clamped_times_as_at_least_the_old_epoch() {
        let clamped = Restamp {
            from: Some(E1),
            to: E2,
        };
        assert_eq!(clamped.mtime(E1 as u64), E2 as u64);
        assert_eq!(clamped.mtime(OLD as u64), OLD as u64);
        // Whatever the file's own time was (E1 + 50 gives E1 too), it is taken to be at least E2:
        // the assumption that a build's files are newer than the epoch it is given.
        let earlier = Restamp {
            from: Some(E2),
            to: E1,
        };
        assert_eq!(earlier.mtime(E2 as u64), E1 as u64);
        assert_eq!(earlier.mtime((E1 + 50) as u64), E1 as u64);
        assert_eq!(earlier.mtime(OLD as u64), OLD as u64);
        let unclamped = Restamp { from: None, to: E1 };
        assert_eq!(unclamped.mtime(NEW as u64), E1 as u64);
        assert_eq!(unclamped.mtime(0), 0);
        let before_1970 = Restamp {
            from: Some(E1),
            to: -7,
        };
        assert_eq!(before_1970.mtime(OLD as u64), 0);
        let far = Restamp {
            from: None,
            to: i64::MAX,
        };
        assert_eq!(far.mtime(USTAR_SIZE_MAX), USTAR_SIZE_MAX);
    }

    /// What forge does not write is refused with where it is, not passed on with its old time.
    #[test]
    fn a_tar_forge_did_not_write_is_refused_with_where() {
        let (_, plain) = write(&[NEW], Some(E1), Compression::None);
        let rule = Restamp {
            from: Some(E1),
            to: E2,
        };
        let refused = |tar: &[u8]| match restamp_layer(tar, Vec::new(), Compression::None, rule) {
            Err(LayerError::Tar { offset, reason }) => (offset, reason),
            other => panic!("{:?}", other.map(|(d, _)| d)),
        };

        let mut torn = plain.clone();
        torn[0] ^= 1;
        let (offset, reason) = refused(&torn);
        assert_eq!(offset, 0);
        assert!(reason.contains("header checksum"), "{reason}");

        let mut global = plain.clone();
        global[156] = b'g';
        set_checksum((&mut global[..BLOCK]).try_into().unwrap());
        let (offset, reason) = refused(&global);
        assert_eq!(offset, 0);
        assert!(reason.contains("entry type 'g'"), "{reason}");

        let (offset, reason) = refused(&plain[..BLOCK + 100]);
        assert_eq!(offset, BLOCK as u64 + 100);
        assert!(reason.contains("ends within"), "{reason}");

        // A PAX mtime record would override the header's time.
        let body = b"15 mtime=12345\n";
        let mut pax = [0u8; BLOCK];
        pax[..5].copy_from_slice(b"PaxHd");
        octal(&mut pax[100..108], 0o644);
        octal(&mut pax[124..136], body.len() as u64);
        octal(&mut pax[136..148], E1 as u64);
        pax[156] = b'x';
        pax[257..263].copy_from_slice(b"ustar\0");
        set_checksum(&mut pax);
        let mut tar = pax.to_vec();
        tar.extend_from_slice(body);
        tar.resize(2 * BLOCK, 0);
        tar.extend_from_slice(&plain);
        let (offset, reason) = refused(&tar);
        assert_eq!(offset, 2 * BLOCK as u64);
        assert!(reason.contains("PAX mtime"), "{reason}");
    }

    #[test]
    fn pax_records_read_as_the_writer_lays_them_out() {
        assert_eq!(
            pax_records(b"13 path=abcd\n12 uid=4194\n").unwrap(),
            vec![(&b"path"[..], &b"abcd"[..]), (&b"uid"[..], &b"4194"[..])]
        );
        assert!(pax_records(b"99 path=abcd\n").is_err());
        assert!(pax_records(b"12 path=abcd").is_err());
    }
}
