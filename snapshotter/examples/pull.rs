//! Pulls an image into a store and prints what happened: the benchmark driver for benches/pull.sh
//! and a manual check. `cargo run -p forge-snapshotter --example pull -- REF [--root DIR]`.

use std::time::Instant;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{PullEvent, RegistryClient, RegistryConfig};
use forge_snapshotter::store::Store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut image = None;
    let mut root = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next(),
            _ => image = Some(a),
        }
    }
    let image = image.ok_or("usage: pull REF [--root DIR]")?;
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
        "{} {} ({} layers) in {:.2?}",
        record.reference,
        record.manifest.digest,
        record.layers.len(),
        start.elapsed()
    );
    Ok(())
}
