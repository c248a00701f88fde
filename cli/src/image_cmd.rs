//! Image commands a daemonless tool needs because there is no `docker images` behind it:
//! `forge tag`, `forge push`, `forge inspect`. They work on the per-user store (or `--root`).

use clap::Args;
use forge_builder::events::Events;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{RegistryClient, RegistryConfig};

use crate::store_cmd::StoreArgs;
use crate::{Failure, failed, usage};

#[derive(Args)]
pub(crate) struct TagArgs {
    /// An image in the store.
    source: String,
    /// The new name for it.
    target: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(crate) struct PushArgs {
    /// An image in the store, pushed to the registry its name says.
    image: String,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// An image in the store.
    image: String,
    #[command(flatten)]
    store: StoreArgs,
}

fn normalise(name: &str) -> Result<String, Failure> {
    Reference::parse(name)
        .map(|r| r.to_string())
        .map_err(|e| usage(format!("error: invalid image name {name:?}: {e}")))
}

fn no_image(name: &str, store: &forge_snapshotter::store::Store) -> Failure {
    failed(format!(
        "error: no image {name} in the store at {} (forge images lists them)",
        store.root().display()
    ))
}

/// `forge tag SOURCE TARGET`: the same image under a second name.
pub(crate) fn tag(args: &TagArgs) -> Result<(), Failure> {
    let source = normalise(&args.source)?;
    let target = normalise(&args.target)?;
    let store = args.store.open()?;
    let mut record = store
        .get_image(&source)
        .map_err(|e| failed(format!("error: {e}")))?
        .ok_or_else(|| no_image(&source, &store))?;
    record.reference = target;
    store
        .put_image(&record)
        .map_err(|e| failed(format!("error: {e}")))
}

/// `forge push IMAGE`: the stored image to its registry, layers the store keeps with zstd
/// re-encoded with gzip first (the image's config, and so its ID, stays).
pub(crate) fn push(args: &PushArgs) -> Result<(), Failure> {
    let name = normalise(&args.image)?;
    let store = args.store.open()?;
    if store
        .get_image(&name)
        .map_err(|e| failed(format!("error: {e}")))?
        .is_none()
    {
        return Err(no_image(&name, &store));
    }
    let client = RegistryClient::new(RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    });
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    let digest = runtime
        .block_on(async {
            let (record, layers) = forge_builder::export::stored_for_push(&store, &name).await?;
            forge_builder::export::push_image(
                &store,
                &client,
                &Events::discard(),
                &record,
                &layers,
                std::slice::from_ref(&name),
            )
            .await
        })
        .map_err(|e| failed(format!("error: push {name}: {e}")))?;
    println!("{name}: digest: {digest}");
    Ok(())
}

/// `forge inspect IMAGE`: what the store records of it, with its manifest and config documents.
pub(crate) fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let name = normalise(&args.image)?;
    let store = args.store.open()?;
    let record = store
        .get_image(&name)
        .map_err(|e| failed(format!("error: {e}")))?
        .ok_or_else(|| no_image(&name, &store))?;
    let read = |d: &forge_snapshotter::store::Digest| -> Result<serde_json::Value, Failure> {
        let bytes = store
            .read_blob(d)
            .map_err(|e| failed(format!("error: {name}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| failed(format!("error: {name}: blob {d}: {e}")))
    };
    let out = serde_json::json!({
        "reference": record.reference,
        "id": record.config.digest.to_string(),
        "digest": record.manifest.digest.to_string(),
        "platform": record.platform,
        "size": record.layers.iter().map(|l| l.size).sum::<u64>(),
        "manifest": read(&record.manifest.digest)?,
        "config": read(&record.config.digest)?,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("JSON values serialise")
    );
    Ok(())
}
