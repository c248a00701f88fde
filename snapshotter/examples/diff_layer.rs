//! Writes the changes of a directory as one OCI layer, for benches/diff.sh and for trying the diff
//! by hand:
//!
//!   diff_layer --upper DIR [--lower DIR | --overlay] [--compression gzip[:N]|zstd[:N]|none]
//!              [--source-date-epoch SECS] [--out FILE]
//!
//! `--overlay` reads DIR as an overlayfs upper dir; otherwise DIR is compared with `--lower` (or
//! taken whole). Prints the layer's descriptor as JSON.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use forge_snapshotter::compress::Compression;
use forge_snapshotter::diff::{Changes, write_layer};
use forge_snapshotter::layer::LayerOptions;

fn usage() -> ! {
    eprintln!(
        "usage: diff_layer --upper DIR [--lower DIR | --overlay] [--compression gzip[:N]|zstd[:N]|none] [--source-date-epoch SECS] [--out FILE]"
    );
    std::process::exit(2)
}

fn compression(arg: &str) -> Compression {
    let (name, level) = arg.split_once(':').unwrap_or((arg, ""));
    match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip {
            level: level.parse().unwrap_or(6),
        },
        "zstd" => Compression::Zstd {
            level: level.parse().unwrap_or(3),
        },
        _ => usage(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut upper = None;
    let mut lower = None;
    let mut overlay = false;
    let mut out = None;
    let mut options = LayerOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--upper" => upper = Some(PathBuf::from(value())),
            "--lower" => lower = Some(PathBuf::from(value())),
            "--overlay" => overlay = true,
            "--out" => out = Some(PathBuf::from(value())),
            "--compression" => options.compression = compression(&value()),
            "--source-date-epoch" => options.source_date_epoch = Some(value().parse()?),
            _ => usage(),
        }
    }
    let upper = upper.unwrap_or_else(|| usage());
    let changes = if overlay {
        Changes::OverlayUpper(&upper)
    } else {
        Changes::Compare {
            lower: lower.as_deref(),
            upper: &upper,
            copied_at: None,
        }
    };
    let sink: Box<dyn Write + Send> = match &out {
        Some(p) => Box::new(std::fs::File::create(p)?),
        None => Box::new(std::io::sink()),
    };
    let (desc, mut sink, stats) = write_layer(changes, BufWriter::new(sink), options)?;
    sink.flush()?;
    println!(
        "{{\"mediaType\":\"{}\",\"digest\":\"{}\",\"size\":{},\"diffID\":\"{}\",\"tarSize\":{},\"entries\":{},\"whiteouts\":{}}}",
        desc.media_type,
        desc.digest,
        desc.size,
        desc.diff_id,
        desc.tar_size,
        stats.entries,
        stats.whiteouts
    );
    Ok(())
}
