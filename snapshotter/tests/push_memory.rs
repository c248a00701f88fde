//! Push streams layers from the store file: a 128 MiB layer goes to the loopback registry while the
//! process's peak resident memory grows by far less than the layer. Its own test binary, so no
//! other test's allocations count.

use std::io::Read;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, BlobKind, PushBlob, PushEvent, PushImage, RegistryClient, RegistryConfig,
};
use forge_snapshotter::store::{Descriptor, Digest, Store};
use sha2::Digest as _;

const LAYER_BYTES: u64 = 128 << 20;

/// Deterministic bytes that do not compress (xorshift), so every run pushes the same blob and the
/// registry keeps one copy however often the test runs.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn noise() -> Noise {
    Noise {
        state: 0x9e37_79b9_7f4a_7c15,
        left: LAYER_BYTES,
    }
}

/// Peak resident set size of this process, from /proc (kB).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test]
async fn a_large_layer_is_pushed_without_holding_it_in_memory() {
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let mut hasher = sha2::Sha256::new();
    let (mut source, mut buf) = (noise(), vec![0u8; 1 << 20]);
    loop {
        let n = source.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let layer = Digest::from_hasher(hasher);
    store
        .write_blob_from(&mut noise(), &layer, Some(LAYER_BYTES))
        .unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config = Descriptor {
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        digest: store.write_blob(config, None).unwrap(),
        size: config.len() as u64,
    };
    let layer = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: layer,
        size: LAYER_BYTES,
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest.to_string(), "size": layer.size}],
    }))
    .unwrap();
    let manifest = Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: store.write_blob(&manifest, None).unwrap(),
        size: manifest.len() as u64,
    };
    let blob = |descriptor, kind| PushBlob {
        descriptor,
        kind,
        mount_from: None,
        sent_to: None,
    };
    let image = PushImage {
        manifest,
        config: blob(config, BlobKind::Config),
        layers: vec![blob(layer.clone(), BlobKind::Layer)],
        held: Default::default(),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = Reference::parse(&format!(
        "{registry}/forge-test/push-memory-{}-{nanos}:big",
        std::process::id()
    ))
    .unwrap();
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        ..RegistryConfig::default()
    });

    let before = peak_rss_kib();
    let uploaded = std::sync::Mutex::new(0u64);
    let sink = |e: PushEvent| {
        if let PushEvent::Uploaded { digest, bytes, .. } = e
            && digest == layer.digest
        {
            *uploaded.lock().unwrap() = bytes;
        }
    };
    let started = std::time::Instant::now();
    client.push(&store, &image, &[tag], &sink).await.unwrap();
    let elapsed = started.elapsed();
    let after = peak_rss_kib();

    assert_eq!(*uploaded.lock().unwrap(), LAYER_BYTES);
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "pushed {} MiB in {elapsed:?}; peak RSS {} -> {} MiB (+{growth_mib} MiB)",
        LAYER_BYTES >> 20,
        before / 1024,
        after / 1024
    );
    assert!(
        growth_mib < 48,
        "peak RSS grew by {growth_mib} MiB pushing a {} MiB layer",
        LAYER_BYTES >> 20
    );
}
