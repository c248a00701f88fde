//! Pulls an image into a store and optionally unpacks it into a directory: the benchmark driver for
//! benches/pull.sh and a manual check.
//! `cargo run -p forge-snapshotter --example pull -- REF [--root DIR] [--unpack DIR]`.

use std::time::Instant;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{PullEvent, RegistryClient, RegistryConfig};
use forge_snapshotter::store::Store;
use forge_snapshotter::unpack::{UnpackOptions, unpack_layer_verified};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut image = None;
    let mut root = None;
    let mut unpack = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next(),
            "--unpack" => unpack = args.next(),
            _ => image = Some(a),
        }
    }
    let image = image.ok_or("usage: pull REF [--root DIR] [--unpack DIR]")?;
    let reference = Reference::parse(&image)?;
    let store = match root {
        Some(r) => Store::open(r)?,
        None => Store::open_default()?,
    };
    let client = RegistryClient::new(RegistryConfig::default());
    let start = Instant::now();
    let record = client
        .pull(&store, &reference, &|e| match e {
            PullEvent::Done { digest, bytes } => eprintln!("done   {digest} {bytes} bytes"),
            PullEvent::Cached { digest, .. } => eprintln!("cached {digest}"),
            PullEvent::Retrying { what, error, .. } => eprintln!("retry  {what}: {error}"),
            _ => {}
        })
        .await?;
    println!(
        "{} {} ({} layers) pulled in {:.2?}",
        record.reference,
        record.manifest.digest,
        record.layers.len(),
        start.elapsed()
    );
    if let Some(dir) = unpack {
        let start = Instant::now();
        let config: serde_json::Value =
            serde_json::from_slice(&store.read_blob(&record.config.digest)?)?;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .ok_or("config has no rootfs.diff_ids")?;
        std::fs::create_dir_all(&dir)?;
        for (layer, diff_id) in record.layers.iter().zip(diff_ids) {
            let diff_id = diff_id.as_str().ok_or("diff_id is not a string")?.parse()?;
            let blob = store.open_blob(&layer.digest)?;
            unpack_layer_verified(
                blob,
                &layer.media_type,
                dir.as_ref(),
                &UnpackOptions::default(),
                &diff_id,
            )?;
        }
        println!("unpacked into {dir} in {:.2?}", start.elapsed());
    }
    Ok(())
}
