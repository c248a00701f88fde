//! Push against the real registry the CI rig runs (Debian's docker-registry on 127.0.0.1:5000):
//! busybox pulled into an empty store goes to a fresh repository under two tags (skopeo is the
//! independent judge of the digest both tags name), a second push sends nothing, and a push to a
//! sibling repository mounts every blob instead of uploading it. A blob uploaded while it is
//! still being written arrives whole; one whose writer stops halfway is not committed.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, BlobKind, FollowEnd, PullEvent, PushEvent, PushImage, RegistryClient,
    RegistryConfig,
};
use forge_snapshotter::store::{Descriptor, Digest, Store};

use common::noise;

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

fn sha256(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    forge_snapshotter::compress::sha256_digest(sha2::Sha256::digest(bytes).as_slice())
        .to_string()
        .parse()
        .unwrap()
}

/// A file opened for writing and, through a second descriptor, for reading.
fn growing_file(path: &std::path::Path) -> (std::fs::File, std::fs::File) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    (file.try_clone().unwrap(), file)
}

/// Issue 16: a layer leaves while its step writes it. A writer fills a file in pieces with
/// pauses (so the upload, which reads 4 MiB at a time, catches up with the file and must wait
/// for more rather than end); the upload commits the whole under the digest of what was
/// written, and the registry serves those exact bytes back. A writer that stops halfway ends its
/// upload as abandoned, and the part that was sent is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_uploaded_while_it_is_written_arrives_whole_and_an_abandoned_one_not_at_all() {
    let Some(registry) = forge_testsupport::registry() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let client = Arc::new(RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        ..RegistryConfig::default()
    }));
    let target = Reference::parse(&format!("{registry}/{}:latest", unique("growing"))).unwrap();

    let content = noise(9 * 1024 * 1024 + 512 * 1024, 0x5eed);
    let (reader, file) = growing_file(&dir.path().join("whole"));
    let (mut writer, upload) = client.upload_while_written(&target, reader, file);
    let upload = tokio::spawn(upload);
    let written = content.clone();
    tokio::task::spawn_blocking(move || {
        // First exactly one of the upload's pieces, then a pause long enough for it to be sent:
        // the upload has then read all there is of an unfinished file.
        let (first, rest) = written.split_at(4 * 1024 * 1024);
        writer.write_all(first).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        for piece in rest.chunks(1_500_000) {
            writer.write_all(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
        writer.complete().unwrap();
    })
    .await
    .unwrap();
    let sent = match upload.await.unwrap() {
        FollowEnd::Sent(sent) => sent,
        other => panic!("the upload did not commit: {other:?}"),
    };
    let digest = sha256(&content);
    assert_eq!(sent.digest, digest);
    assert_eq!(sent.size, content.len() as u64);
    assert_eq!(sent.repository, target.name());
    // Read back through the registry into a fresh store (which checks the digest too).
    let store = Store::open(dir.path().join("store")).unwrap();
    let desc = Descriptor {
        media_type: "application/octet-stream".into(),
        digest: digest.clone(),
        size: content.len() as u64,
    };
    client
        .fetch_blob(&store, &target, &desc, BlobKind::Layer, &|_| {})
        .await
        .unwrap();
    assert!(store.read_blob(&digest).unwrap() == content);

    // Stopped after 5 MiB: the first 4 MiB went out, and nothing may be committed.
    let part = noise(5 * 1024 * 1024, 0xabad);
    let (reader, file) = growing_file(&dir.path().join("part"));
    let (mut writer, upload) = client.upload_while_written(&target, reader, file);
    let upload = tokio::spawn(upload);
    let written = part.clone();
    tokio::task::spawn_blocking(move || {
        writer.write_all(&written).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(writer);
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(60), upload)
        .await
        .expect("an abandoned upload ends")
        .unwrap();
    assert!(matches!(end, FollowEnd::Abandoned), "{end:?}");
    for prefix in [&part[..4 * 1024 * 1024], &part[..]] {
        assert!(
            !client.blob_exists(&target, &sha256(prefix)).await.unwrap(),
            "a blob of {} bytes was committed",
            prefix.len()
        );
    }
}
