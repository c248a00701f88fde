//! gzip deflated on several cores (`--compression gzip-parallel`): GNU gzip, the independent
//! judge, and flate2's single-member decoder both read back exactly what was written, at every
//! size around the block boundary; the bytes do not depend on the number of threads or on how
//! the input was cut into writes; each block is primed with the input before it; and a layer
//! written this way has the same diff_id as the plain gzip one and another digest.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use forge_snapshotter::blockgzip::{BLOCK, BlockGzip};
use forge_snapshotter::compress::Compression;
use forge_snapshotter::diff::{Changes, write_layer};
use forge_snapshotter::layer::LayerOptions;

use common::noise;

/// Text that compresses, with lines that differ.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of a file, {}\n", i * 7919 % 1000).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// `data` through a [`BlockGzip`] with `threads` workers, written `piece` bytes at a time.
fn compress(data: &[u8], level: u32, threads: usize, piece: usize) -> Vec<u8> {
    let mut w = BlockGzip::new(Vec::new(), level, threads).unwrap();
    for p in data.chunks(piece.max(1)) {
        w.write_all(p).unwrap();
    }
    w.finish().unwrap()
}

/// What GNU gzip decompresses `gz` to.
fn gunzip(gzip: &std::path::Path, gz: &[u8]) -> Vec<u8> {
    let mut child = Command::new(gzip)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = gz.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "gzip -dc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn gzip_reads_back_every_size_around_the_block_boundary() {
    let Some(gzip) = forge_testsupport::tool("gzip") else {
        return;
    };
    let sizes = [
        0,
        1,
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        2 * BLOCK,
        3 * BLOCK + 17,
        2_000_003,
    ];
    for size in sizes {
        for (kind, data) in [("noise", noise(size, size as u64)), ("text", text(size))] {
            for level in [1, 6, 9] {
                let gz = compress(&data, level, 3, 65_536);
                assert!(
                    gunzip(&gzip, &gz) == data,
                    "{kind}, {size} bytes, level {level}: gzip read back other bytes"
                );
                // One member: the single-member decoder reads it all.
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(gz.as_slice())
                    .read_to_end(&mut back)
                    .unwrap();
                assert!(back == data, "{kind}, {size} bytes, level {level}");
            }
        }
    }
}

#[test]
fn the_bytes_depend_on_the_input_alone() {
    let data = [text(700_000), noise(500_000, 3), text(123_457)].concat();
    let reference = compress(&data, 6, 1, data.len());
    for threads in [2, 5] {
        for piece in [1, 4096, 7777, BLOCK, 1_000_000] {
            if piece == 1 && threads == 5 {
                continue;
            }
            assert!(
                compress(&data, 6, threads, piece) == reference,
                "{threads} threads, writes of {piece} bytes"
            );
        }
    }
    // And not those of one deflate stream (what `gzip` layers are).
    let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    single.write_all(&data).unwrap();
    assert!(single.finish().unwrap() != reference);
}

/// 16 KiB of noise 32 times over (four blocks): within deflate's 32 KiB window every repeat is a
/// back reference, so only the first 16 KiB are literals when each block is primed with the end
/// of the one before. Without the dictionary every block would start with 16 KiB of literals.
#[test]
fn each_block_reaches_back_into_the_one_before() {
    let piece = noise(16 * 1024, 11);
    let data = piece.repeat(32);
    assert_eq!(data.len(), 4 * BLOCK);
    let gz = compress(&data, 6, 2, data.len());
    assert!(
        gz.len() < 24 * 1024,
        "{} bytes: the blocks did not use the ones before them as dictionaries",
        gz.len()
    );
}

#[test]
fn a_layer_keeps_its_diff_id_and_gets_another_digest() {
    let Some(gzip) = forge_testsupport::tool("gzip") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    std::fs::create_dir_all(upper.join("d")).unwrap();
    std::fs::write(upper.join("d/noise"), noise(900_000, 5)).unwrap();
    std::fs::write(upper.join("text"), text(400_000)).unwrap();
    let layer = |compression| {
        write_layer(
            Changes::OverlayUpper(&upper),
            Vec::new(),
            LayerOptions {
                compression,
                source_date_epoch: Some(1_700_000_000),
            },
        )
        .unwrap()
    };
    let (plain, plain_blob, _) = layer(Compression::Gzip { level: 6 });
    let (parallel, parallel_blob, _) = layer(Compression::GzipParallel { level: 6 });
    assert_eq!(parallel.diff_id, plain.diff_id);
    assert_eq!(parallel.media_type, plain.media_type);
    assert_ne!(parallel.digest, plain.digest);
    assert_eq!(parallel.size, parallel_blob.len() as u64);
    // The blob is what the descriptor says, and gzip reads the same tar out of both.
    let sha = |b: &[u8]| {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
    };
    assert_eq!(sha(&parallel_blob), parallel.digest.to_string());
    let tar = gunzip(&gzip, &parallel_blob);
    assert_eq!(sha(&tar), plain.diff_id.to_string());
    assert!(tar == gunzip(&gzip, &plain_blob));
}
