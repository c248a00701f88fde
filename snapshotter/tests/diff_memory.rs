//! Memory stays flat however large the layer: the compressed output reaches the sink while the
//! input is still being read (a counting sink compares the bytes read so far with the bytes it
//! got), and the peak RSS does not grow with a large sparse file. One test in its own binary so
//! that no other test's reads or allocations blur the process-wide figures.

use std::io::{self, Write};
use std::path::Path;

use forge_snapshotter::compress::Compression;
use forge_snapshotter::diff::{Changes, write_layer};
use forge_snapshotter::layer::LayerOptions;

const MIB: u64 = 1024 * 1024;

fn proc_field(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bytes this process has read through read(2) and friends.
fn rchar() -> u64 {
    proc_field("/proc/self/io", "rchar:")
}

/// Peak resident set size in bytes.
fn vm_hwm() -> u64 {
    proc_field("/proc/self/status", "VmHWM:") * 1024
}

struct CountingSink {
    total: u64,
    rchar_start: u64,
    next_probe: u64,
    max_lag: u64,
    probes: u64,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total >= self.next_probe {
            // Input read so far minus output received so far: what sits in buffers.
            let read = rchar() - self.rchar_start;
            self.max_lag = self.max_lag.max(read.saturating_sub(self.total));
            self.probes += 1;
            self.next_probe = self.total + MIB;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_random(path: &Path, size: u64) {
    let mut f = io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 64 * 1024];
    for _ in 0..size / block.len() as u64 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn diff_memory_stays_flat() {
    let tmp = tempfile::tempdir().unwrap();

    // 1. 64 MiB of incompressible data: output must follow input closely.
    let upper = tmp.path().join("random");
    std::fs::create_dir(&upper).unwrap();
    write_random(&upper.join("blob"), 64 * MIB);
    let sink = CountingSink {
        total: 0,
        rchar_start: rchar(),
        next_probe: MIB,
        max_lag: 0,
        probes: 0,
    };
    let options = LayerOptions {
        compression: Compression::Gzip { level: 1 },
        source_date_epoch: None,
    };
    let (desc, sink, _) = write_layer(Changes::OverlayUpper(&upper), sink, options).unwrap();
    assert!(
        desc.size >= 64 * MIB,
        "random data does not compress: {}",
        desc.size
    );
    assert!(
        sink.probes >= 60,
        "the sink was written progressively ({} probes)",
        sink.probes
    );
    assert!(
        sink.max_lag < 8 * MIB,
        "{} MiB read but not yet handed to the sink at worst",
        sink.max_lag / MIB
    );

    // 2. A 512 MiB file, mostly holes with random islands: peak RSS must not follow its size.
    let sparse_dir = tmp.path().join("sparse");
    std::fs::create_dir(&sparse_dir).unwrap();
    let island = tmp.path().join("island");
    write_random(&island, 4 * MIB);
    let island = std::fs::read(&island).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(sparse_dir.join("big")).unwrap();
        f.set_len(512 * MIB).unwrap();
        for i in 0..8u64 {
            f.write_all_at(&island, i * 64 * MIB).unwrap();
        }
    }
    drop(island);
    let before = vm_hwm();
    let (desc, _, stats) =
        write_layer(Changes::OverlayUpper(&sparse_dir), io::sink(), options).unwrap();
    let grown = vm_hwm().saturating_sub(before);
    assert_eq!(stats.content_bytes, 512 * MIB);
    assert!(desc.tar_size > 512 * MIB);
    assert!(
        grown < 32 * MIB,
        "peak RSS grew by {} MiB for a 512 MiB layer",
        grown / MIB
    );
}
