//! Sparse files in the PAX form GNU tar writes (`tar --sparse --format=pax`): the entry's name is
//! `GNUSparseFile.N/name`, its data only the file's non-hole chunks, and PAX records (`GNU.sparse.*`)
//! give the real name and size and where each chunk goes (format 0.0 and 0.1), or say that the
//! map is at the start of the data (1.0). Read as Go's archive/tar reads them, so that `ADD` of
//! such an archive gives the file BuildKit gives; the tar crate reads only the old GNU form (type
//! `S`), and hands this one over as a regular file holding the map and the chunks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// Most bytes a 1.0 map may take (Go's archive/tar allows as much for its special records).
const MAX_MAP_BYTES: usize = 1 << 20;

/// What an entry's PAX records say of a sparse file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Sparse {
    /// The file's own name, when the records give it (`GNU.sparse.name`).
    pub name: Option<String>,
    /// The file's size, holes included.
    pub size: u64,
    /// Each chunk's (offset, length), when the records hold them; `None` for 1.0, whose map
    /// starts the entry's data.
    map: Option<Vec<(u64, u64)>>,
}

/// The sparse file the PAX `records` of an entry describe, `Ok(None)` when they describe none.
pub(super) fn from_pax(records: &[(String, Vec<u8>)]) -> Result<Option<Sparse>, String> {
    let get = |key: &str| {
        records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let version = (get("GNU.sparse.major"), get("GNU.sparse.minor"));
    // 0.0 repeats `offset` and `numbytes` records, 0.1 lists them in `map`.
    let pairs: Vec<&str> = records
        .iter()
        .filter(|(k, _)| k == "GNU.sparse.offset" || k == "GNU.sparse.numbytes")
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or("x"))
        .collect();
    let listed = get("GNU.sparse.map").or_else(|| (!pairs.is_empty()).then(|| pairs.join(",")));
    let in_data = match (version.0.as_deref(), version.1.as_deref()) {
        (Some("1"), Some("0")) => true,
        (Some("0"), Some("0" | "1")) => false,
        (None, None) if listed.is_some() => false,
        (None, None) => return Ok(None),
        (major, minor) => {
            return Err(format!(
                "a sparse file in GNU's PAX format {}.{}, which no tar reader knows",
                major.unwrap_or("?"),
                minor.unwrap_or("?")
            ));
        }
    };
    let size = get("GNU.sparse.size")
        .or_else(|| get("GNU.sparse.realsize"))
        .ok_or("a sparse file without its size (GNU.sparse.size or GNU.sparse.realsize)")?;
    let size: u64 = size
        .trim()
        .parse()
        .map_err(|_| format!("a sparse file size {size:?} that is not a number"))?;
    let map = if in_data {
        None
    } else {
        let text = listed.ok_or("a sparse file without its map (GNU.sparse.map)")?;
        Some(pairs_of(text.split(',').map(str::to_string).collect())?)
    };
    Ok(Some(Sparse {
        name: get("GNU.sparse.name").filter(|n| !n.is_empty()),
        size,
        map,
    }))
}

/// `numbers` (offset, length, offset, length, ...) as chunks, checked to lie in order and not to
/// overlap.
fn pairs_of(numbers: Vec<String>) -> Result<Vec<(u64, u64)>, String> {
    if !numbers.len().is_multiple_of(2) {
        return Err("a sparse map with an offset but no length".into());
    }
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("a sparse map entry {s:?} that is not a number"))
    };
    let mut out = Vec::with_capacity(numbers.len() / 2);
    let mut end = 0u64;
    for pair in numbers.chunks(2) {
        let (offset, length) = (parse(&pair[0])?, parse(&pair[1])?);
        if offset < end {
            return Err("a sparse map whose chunks overlap or are out of order".into());
        }
        end = offset
            .checked_add(length)
            .ok_or("a sparse map chunk past the largest file size")?;
        out.push((offset, length));
    }
    Ok(out)
}

/// The 1.0 map at the start of `data`: decimal numbers, one per line (the count, then each
/// chunk's offset and length), padded with NULs to a 512-byte block. `data` is left at the first
/// chunk.
fn map_in_data(data: &mut impl Read) -> Result<Vec<(u64, u64)>, String> {
    let mut text = Vec::new();
    let mut lines = 0usize;
    let mut wanted: Option<usize> = None;
    let mut block = [0u8; 512];
    loop {
        if text.len() >= MAX_MAP_BYTES {
            return Err("a sparse map larger than 1 MiB".into());
        }
        data.read_exact(&mut block)
            .map_err(|_| "the archive ends inside a sparse file's map".to_string())?;
        for &b in &block {
            if wanted.is_some_and(|n| lines == 1 + 2 * n) {
                break;
            }
            text.push(b);
            if b == b'\n' {
                lines += 1;
                if lines == 1 {
                    let count = String::from_utf8_lossy(&text[..text.len() - 1]).into_owned();
                    let n: usize = count.trim().parse().map_err(|_| {
                        format!("a sparse map count {count:?} that is not a number")
                    })?;
                    if n > MAX_MAP_BYTES / 4 {
                        return Err(format!("a sparse map of {n} chunks"));
                    }
                    wanted = Some(n);
                }
            }
        }
        if wanted.is_some_and(|n| lines == 1 + 2 * n) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let numbers: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
    pairs_of(numbers)
}

/// Writes the sparse file `sparse` describes to `out` from the entry's `data`: each chunk at its
/// offset (the holes between left as holes), then the file cut to its size.
pub(super) fn write(sparse: &Sparse, data: &mut impl Read, out: &mut File) -> Result<(), String> {
    let map = match &sparse.map {
        Some(map) => map.clone(),
        None => map_in_data(data)?,
    };
    if map.last().is_some_and(|(o, l)| o + l > sparse.size) {
        return Err("a sparse map chunk past the file's size".into());
    }
    for (offset, length) in map {
        out.seek(SeekFrom::Start(offset))
            .map_err(|e| format!("writing the sparse file: {e}"))?;
        let copied = std::io::copy(&mut data.by_ref().take(length), out)
            .map_err(|e| format!("writing the sparse file: {e}"))?;
        if copied != length {
            return Err("the archive ends inside a sparse file's data".into());
        }
    }
    out.set_len(sparse.size)
        .map_err(|e| format!("writing the sparse file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn written(sparse: &Sparse, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = File::create(&path).unwrap();
        write(sparse, &mut &data[..], &mut out).unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn the_three_pax_forms_give_the_same_file() {
        let mut want = vec![0u8; 20];
        want[2..5].copy_from_slice(b"abc");
        want[10..12].copy_from_slice(b"de");
        // 0.0: repeated offset/numbytes records.
        let old = records(&[
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.numblocks", "2"),
            ("GNU.sparse.offset", "2"),
            ("GNU.sparse.numbytes", "3"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "2"),
        ]);
        let s = from_pax(&old).unwrap().unwrap();
        assert_eq!(written(&s, b"abcde"), want);
        // 0.1: one map record, and the real name.
        let one = records(&[
            ("GNU.sparse.major", "0"),
            ("GNU.sparse.minor", "1"),
            ("GNU.sparse.name", "dir/real"),
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.map", "2,3,10,2"),
        ]);
        let s = from_pax(&one).unwrap().unwrap();
        assert_eq!(s.name.as_deref(), Some("dir/real"));
        assert_eq!(written(&s, b"abcde"), want);
        // 1.0: the map in the data, padded to a block.
        let new = records(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "real"),
            ("GNU.sparse.realsize", "20"),
        ]);
        let s = from_pax(&new).unwrap().unwrap();
        let mut data = b"2\n2\n3\n10\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcde");
        assert_eq!(written(&s, &data), want);
    }

    #[test]
    fn a_plain_entry_is_no_sparse_file_and_a_bad_map_is_refused() {
        assert_eq!(from_pax(&records(&[("path", "x")])), Ok(None));
        let bad = |pairs: &[(&str, &str)]| from_pax(&records(pairs)).unwrap_err();
        assert!(bad(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]).contains("2.0"));
        assert!(bad(&[("GNU.sparse.map", "0,1"), ("GNU.sparse.size", "x")]).contains("number"));
        assert!(bad(&[("GNU.sparse.map", "5,1,2,1"), ("GNU.sparse.size", "9")]).contains("order"));
        // Data shorter than its map says.
        let s = from_pax(&records(&[
            ("GNU.sparse.map", "0,9"),
            ("GNU.sparse.size", "9"),
        ]))
        .unwrap()
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut out = File::create(dir.path().join("f")).unwrap();
        assert!(
            write(&s, &mut &b"abc"[..], &mut out)
                .unwrap_err()
                .contains("ends")
        );
    }
}
