//! Push against the real registry the CI rig runs (Debian's docker-registry on 127.0.0.1:5000):
//! busybox pulled into an empty store goes to a fresh repository under two tags (skopeo is the
//! independent judge of the digest both tags name), a second push sends nothing, and a push to a
//! sibling repository mounts every blob instead of uploading it.

use std::sync::Mutex;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, PullEvent, PushEvent, PushImage, RegistryClient, RegistryConfig,
};
use forge_snapshotter::store::{Digest, Store};

/// Registry and busybox image from the environment, or `None` after a SKIP line (a failure under
/// FORGE_E2E=require).
fn prerequisites() -> Option<(String, String)> {
    let registry = forge_testsupport::registry()?;
    let busybox = forge_testsupport::busybox_image()?;
    forge_testsupport::tool("skopeo")?;
    Some((registry, busybox))
}

/// The manifest digest skopeo reports for `image`.
fn skopeo_digest(image: &str) -> Digest {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().expect("Digest field").parse().unwrap()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("forge-test/{prefix}-{}-{nanos}", std::process::id())
}

async fn push(
    client: &RegistryClient,
    store: &Store,
    image: &PushImage,
    tags: &[Reference],
) -> (Digest, Vec<PushEvent>) {
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    let digest = client.push(store, image, tags, &sink).await.unwrap();
    (digest, events.into_inner().unwrap())
}

fn count(events: &[PushEvent], f: impl Fn(&PushEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[tokio::test]
async fn busybox_pushed_under_two_tags_then_skipped_then_mounted() {
    let Some((registry, busybox)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        ..RegistryConfig::default()
    });
    let record = client
        .pull(
            &store,
            &Reference::parse(&busybox).unwrap(),
            &|_: PullEvent| {},
        )
        .await
        .unwrap();
    let blobs = 1 + record.layers.len();

    // Without the hint every blob must travel, which is what this first push checks.
    let mut image = PushImage::from_record(&record);
    image.config.mount_from = None;
    for l in &mut image.layers {
        l.mount_from = None;
    }
    let repo = unique("push");
    let tags: Vec<Reference> = ["one", "two"]
        .iter()
        .map(|t| Reference::parse(&format!("{registry}/{repo}:{t}")).unwrap())
        .collect();
    let (digest, events) = push(&client, &store, &image, &tags).await;
    assert_eq!(digest, record.manifest.digest);
    assert_eq!(
        count(&events, |e| matches!(e, PushEvent::Uploaded { .. })),
        blobs,
        "{events:#?}"
    );
    assert_eq!(
        count(&events, |e| matches!(e, PushEvent::ManifestPushed { .. })),
        2
    );
    for tag in &tags {
        assert_eq!(skopeo_digest(&tag.to_string()), digest, "{tag}");
    }

    // The same push again: the registry has everything.
    let (again, events) = push(&client, &store, &image, &tags).await;
    assert_eq!(again, digest);
    assert_eq!(
        count(&events, |e| matches!(e, PushEvent::Exists { .. })),
        blobs,
        "{events:#?}"
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            PushEvent::Uploading { .. } | PushEvent::Uploaded { .. } | PushEvent::Mounted { .. }
        )),
        0,
        "{events:#?}"
    );

    // A sibling repository: blobs are linked from the first one, not sent.
    let source = format!("{registry}/{repo}");
    for b in std::iter::once(&mut image.config).chain(&mut image.layers) {
        b.mount_from = Some(source.clone());
    }
    let sibling = Reference::parse(&format!("{registry}/{}:x", unique("mount"))).unwrap();
    let (mounted, events) = push(&client, &store, &image, std::slice::from_ref(&sibling)).await;
    assert_eq!(mounted, digest);
    assert_eq!(
        count(
            &events,
            |e| matches!(e, PushEvent::Mounted { from, .. } if *from == source)
        ),
        blobs,
        "{events:#?}"
    );
    assert_eq!(
        count(&events, |e| matches!(
            e,
            PushEvent::Uploading { .. } | PushEvent::Uploaded { .. }
        )),
        0,
        "{events:#?}"
    );
    assert_eq!(skopeo_digest(&sibling.to_string()), digest);

    // A pulled record's own hint mounts from where it was pulled.
    let from_record = PushImage::from_record(&record);
    let third = Reference::parse(&format!("{registry}/{}:y", unique("record"))).unwrap();
    let (_, events) = push(&client, &store, &from_record, std::slice::from_ref(&third)).await;
    assert_eq!(
        count(&events, |e| matches!(e, PushEvent::Mounted { .. })),
        blobs,
        "{events:#?}"
    );
}
