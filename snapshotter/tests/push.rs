//! Push against a registry that misbehaves on purpose (`common/fake_registry.rs`). Checks that transient failures are
//! retried with a fresh session, refusals are not, and what lands is byte for byte what was built.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::fake_registry::*;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{BlobKind, Landing, PushError, PushEvent};
use forge_snapshotter::store::Digest;

#[tokio::test]
async fn a_chunk_failing_mid_blob_with_500_once_is_retried_with_a_fresh_session() {
    let fake = Fake::start().await;
    fake.state.lock().unwrap().fail_later_chunks = 1;
    let built = build_image();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);

    let digest = push_one(&built, &tag, &sink).await;

    assert_eq!(digest, built.image.manifest.digest);
    let layer_digest = &built.image.layers[0].descriptor.digest;
    let st = fake.state.lock().unwrap();
    assert_eq!(
        st.blobs.get(&format!("app@{layer_digest}")),
        Some(&built.layer),
        "the layer the registry holds is not the one built"
    );
    let (ct, body) = st.manifests.get("app:1").expect("manifest under tag 1");
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(
        body, &built.manifest,
        "manifest bytes were not sent verbatim"
    );
    // Config and layer each open a session; the failed chunk costs the layer one more.
    let posts = st.count("POST ");
    assert_eq!(posts, 3, "log: {:#?}", st.log);
    // The failed session was given up, not left open; the manifest goes last, after every
    // blob is committed.
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
    let last = st.log.last().unwrap();
    assert_eq!(last, "PUT /v2/app/manifests/1");
    drop(st);
    let events = events.into_inner().unwrap();
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PushEvent::Retrying { what, error, .. } => Some((what.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(
        retries[0].0.contains(&layer_digest.to_string()),
        "{retries:?}"
    );
    assert!(retries[0].1.contains("500"), "{retries:?}");
    let uploaded = events
        .iter()
        .filter(|e| matches!(e, PushEvent::Uploaded { .. }))
        .count();
    assert_eq!(uploaded, 2);
    let max_progress = events
        .iter()
        .filter_map(|e| match e {
            PushEvent::Uploading { digest, bytes, .. } if digest == layer_digest => Some(*bytes),
            _ => None,
        })
        .max();
    assert_eq!(max_progress, Some(built.layer.len() as u64));
    assert!(events.contains(&PushEvent::ManifestPushed {
        tag: tag.to_string(),
        digest,
    }));
}

async fn refused_upload(status: u16) {
    let fake = Fake::start().await;
    fake.state.lock().unwrap().refuse_uploads = Some(status);
    let built = build_image();
    let tag = Reference::parse(&format!("{}/team/app:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);

    let err = client()
        .push(&built.store, &built.image, &[tag], &sink)
        .await
        .unwrap_err();

    match &err {
        PushError::Denied {
            registry,
            repository,
            status: got,
            what,
            ..
        } => {
            assert_eq!(registry, &fake.addr.to_string());
            assert_eq!(repository, "team/app");
            assert_eq!(*got, status);
            assert!(what.starts_with("upload of "), "{what}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("status {status}")), "{text}");
    // Anonymous here: a 401 asks for a login, a 403 says an anonymous user may not push.
    let says = if status == 401 {
        "wants a login"
    } else {
        "may not push"
    };
    assert!(text.contains(says), "{text}");
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PushEvent::Retrying { .. })),
        "a refusal was retried"
    );
    // One session attempt per blob at most (both may have started at once), none repeated.
    let posts = fake.count("POST ");
    assert!((1..=2).contains(&posts), "{posts} upload sessions");
    assert_eq!(fake.count("PUT /v2/team/app/manifests/"), 0);
}

#[tokio::test]
async fn an_upload_refused_with_401_fails_at_once_with_the_status() {
    refused_upload(401).await;
}

#[tokio::test]
async fn an_upload_refused_with_403_fails_at_once_with_the_status() {
    refused_upload(403).await;
}

#[tokio::test]
async fn blobs_the_registry_has_are_not_sent_and_tags_share_the_manifest() {
    let fake = Fake::start().await;
    let built = build_image();
    {
        let mut st = fake.state.lock().unwrap();
        let d = &built.image.layers[0].descriptor.digest;
        st.blobs.insert(format!("app@{d}"), built.layer.clone());
    }
    let tags =
        ["1", "latest"].map(|t| Reference::parse(&format!("{}/app:{t}", fake.addr)).unwrap());
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);

    client()
        .push(&built.store, &built.image, &tags, &sink)
        .await
        .unwrap();

    let st = fake.state.lock().unwrap();
    assert_eq!(
        st.count("PUT /v2/app/blobs/uploads/"),
        1,
        "only the config should be sent: {:#?}",
        st.log
    );
    for t in ["1", "latest"] {
        assert_eq!(st.manifests[&format!("app:{t}")].1, built.manifest);
    }
    drop(st);
    let events = events.into_inner().unwrap();
    assert!(events.iter().any(|e| matches!(
        e,
        PushEvent::Exists { kind: BlobKind::Layer, digest, .. } if *digest == built.image.layers[0].descriptor.digest
    )));
}

/// Tags in two repositories of one registry: the first gets the blobs uploaded, the second mounts
/// each from it (it was sent every blob again, as the README said it would not be).
#[tokio::test]
async fn a_second_repository_of_the_registry_mounts_what_the_first_got() {
    let fake = Fake::start().await;
    let built = build_image();
    let tags = ["one/app:1", "two/app:1"]
        .map(|t| Reference::parse(&format!("{}/{t}", fake.addr)).unwrap());
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    client()
        .push(&built.store, &built.image, &tags, &sink)
        .await
        .unwrap();
    let st = fake.state.lock().unwrap();
    let sent_to = |repo: &str| st.count(&format!("PUT /v2/{repo}/blobs/uploads/"));
    assert_eq!(sent_to("one/app"), 2, "config and layer: {:#?}", st.log);
    assert_eq!(sent_to("two/app"), 0, "{:#?}", st.log);
    for repo in ["one/app", "two/app"] {
        assert_eq!(st.manifests[&format!("{repo}:1")].1, built.manifest);
    }
    drop(st);
    let mounted = events
        .into_inner()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PushEvent::Mounted { .. }))
        .count();
    assert_eq!(mounted, 2);
}

/// A blob's last bytes go with the request that commits it: the config (one chunk) is sent in
/// its commit alone, the two-chunk layer in one `PATCH` and its commit; pushed again, the config's
/// session, opened while the registry was asked for the config, is given up, not left open.
#[tokio::test]
async fn a_blobs_last_bytes_go_with_its_commit_and_an_unused_session_is_given_up() {
    let fake = Fake::start().await;
    let built = build_image();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let sink = |_: PushEvent| {};
    push_one(&built, &tag, &sink).await;
    {
        let st = fake.state.lock().unwrap();
        let config = &built.image.config.descriptor;
        let layer = &built.image.layers[0].descriptor;
        let mut sent = st.sent.clone();
        sent.sort();
        let mut want = vec![
            ("PATCH", 4 << 20, None),
            ("PUT", config.size as usize, Some(config.digest.to_string())),
            (
                "PUT",
                layer.size as usize - (4 << 20),
                Some(layer.digest.to_string()),
            ),
        ];
        want.sort();
        assert_eq!(sent, want, "{:#?}", st.log);
        assert_eq!(st.blobs[&format!("app@{}", layer.digest)], built.layer);
        assert!(st.uploads.is_empty(), "{:#?}", st.log);
        // Every request was forge's own: a push to a registry that wants no token makes no
        // oci-client client.
        assert_eq!(
            st.agents
                .iter()
                .map(|a| a.split('/').next().unwrap())
                .collect::<Vec<_>>(),
            ["forge"],
            "{:?}",
            st.agents
        );
    }

    push_one(&built, &tag, &sink).await;
    let st = fake.state.lock().unwrap();
    assert_eq!(st.sent.len(), 3, "bytes were sent again: {:#?}", st.log);
    assert!(
        st.log
            .iter()
            .any(|l| l.starts_with("DELETE /v2/app/blobs/uploads/")),
        "{:#?}",
        st.log
    );
    assert!(
        st.uploads.is_empty(),
        "a session was left open: {:#?}",
        st.log
    );
}

/// A layer sent while it is written commits with its last bytes: a file of two upload pieces
/// goes in one `PATCH` and a commit carrying the rest, a file of one piece in its commit alone,
/// each under the digest of what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_sent_while_written_commits_with_its_last_bytes() {
    use std::io::Write;
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = std::sync::Arc::new(client());
    let target = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let mut want = Vec::new();
    for (name, len) in [("two", (4usize << 20) + 4321), ("one", 94)] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))
            .unwrap();
        let reader = file.try_clone().unwrap();
        let (mut writer, upload) = client.upload_while_written(&target, reader, file);
        let upload = tokio::spawn(upload);
        let written = content.clone();
        tokio::task::spawn_blocking(move || {
            for piece in written.chunks(1 << 20) {
                writer.write_all(piece).unwrap();
            }
            writer.complete().unwrap();
        })
        .await
        .unwrap();
        let sent = match upload.await.unwrap() {
            forge_snapshotter::registry::FollowEnd::Sent(sent) => sent,
            other => panic!("{name}: the upload did not commit: {other:?}"),
        };
        assert_eq!(sent.digest, Digest::of(&content), "{name}");
        let digest = Some(sent.digest.to_string());
        if len > 4 << 20 {
            want.push(("PATCH", 4 << 20, None));
        }
        want.push(("PUT", len % (4 << 20), digest));
        let st = fake.state.lock().unwrap();
        assert_eq!(st.blobs[&format!("app@{}", sent.digest)], content, "{name}");
    }
    assert_eq!(fake.state.lock().unwrap().sent, want);
}

/// A blob marked as mountable from a repository that lacks it: the registry opens an upload in
/// answer to the mount, and that session carries the blob (no second session is opened, none is
/// left behind). Mounted from one that has it, nothing is sent.
#[tokio::test]
async fn a_mount_answered_with_an_upload_session_carries_the_blob() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let source = format!("{}/base", fake.addr);
    built.image.layers[0].mount_from = Some(source.clone());
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    push_one(&built, &tag, &sink).await;
    let layer = built.image.layers[0].descriptor.digest.clone();
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(st.blobs[&format!("app@{layer}")], built.layer);
        // The config's session and the layer's, which the mount opened.
        assert_eq!(st.count("POST /v2/app/blobs/uploads/"), 2, "{:#?}", st.log);
        assert!(st.uploads.is_empty(), "{:#?}", st.log);
    }
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PushEvent::Uploaded { digest, .. } if *digest == layer))
    );

    // Into a sibling, from `app`, which now holds the layer: linked, not sent.
    built.image.layers[0].mount_from = Some(format!("{}/app", fake.addr));
    let sibling = Reference::parse(&format!("{}/sibling:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    let before = fake.state.lock().unwrap().sent.len();
    push_one(&built, &sibling, &sink).await;
    let st = fake.state.lock().unwrap();
    assert_eq!(st.blobs[&format!("sibling@{layer}")], built.layer);
    // Only the config's bytes went.
    assert_eq!(st.sent.len(), before + 1, "{:#?}", st.log);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PushEvent::Mounted { digest, .. } if *digest == layer))
    );
}

/// A base image's small layer (pulled from another registry: nothing to mount it from) is asked
/// for before any session is opened for it: where the registry has it, as on every push of an
/// image on that base after the first, no session is opened and given up for it; where it has
/// not, it is uploaded.
#[tokio::test]
async fn a_base_layer_the_registry_has_costs_a_check_and_no_session() {
    let fake = Fake::start().await;
    let mut built = build_image_of(b"a base image's small layer".to_vec());
    built.image.layers[0].mount_from = Some("127.0.0.1:1/library/base".into());
    let layer = built.image.layers[0].descriptor.digest.clone();
    fake.state
        .lock()
        .unwrap()
        .blobs
        .insert(format!("app@{layer}"), built.layer.clone());
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let sink = |_: PushEvent| {};
    push_one(&built, &tag, &sink).await;
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(
            st.count(&format!("HEAD /v2/app/blobs/{layer}")),
            1,
            "{:#?}",
            st.log
        );
        // The config's session alone; none opened for the layer, so none given up.
        assert_eq!(st.count("POST /v2/app/blobs/uploads/"), 1, "{:#?}", st.log);
        assert_eq!(st.count("DELETE "), 0, "{:#?}", st.log);
        assert!(st.uploads.is_empty(), "{:#?}", st.log);
    }
    // A repository without it: checked, then uploaded.
    let other = Reference::parse(&format!("{}/other:1", fake.addr)).unwrap();
    push_one(&built, &other, &sink).await;
    let st = fake.state.lock().unwrap();
    assert_eq!(st.blobs[&format!("other@{layer}")], built.layer);
    assert_eq!(
        st.count("POST /v2/other/blobs/uploads/"),
        2,
        "{:#?}",
        st.log
    );
    assert_eq!(st.count("DELETE "), 0, "{:#?}", st.log);
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
}

/// An image just made is pushed while its config and manifest are still being written into the
/// store: given as held bytes, they go from memory, and what lands is those bytes.
#[tokio::test]
async fn held_config_and_manifest_go_from_memory_when_the_store_lacks_them() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let (config, manifest) = (
        built.image.config.descriptor.clone(),
        built.image.manifest.clone(),
    );
    for d in [&config, &manifest] {
        let bytes = built.store.read_blob(&d.digest).unwrap();
        built.image.held.insert(d.digest.clone(), bytes.into());
        std::fs::remove_file(built.store.blob_path(&d.digest)).unwrap();
        assert!(!built.store.has_blob(&d.digest));
    }
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let sink = |_: PushEvent| {};
    let digest = push_one(&built, &tag, &sink).await;
    assert_eq!(digest, manifest.digest);
    let st = fake.state.lock().unwrap();
    assert_eq!(
        &st.blobs[&format!("app@{}", config.digest)],
        built.image.held[&config.digest].as_ref() as &[u8]
    );
    assert_eq!(st.manifests["app:1"].1, built.manifest);
}

/// Pushes `built`'s image with its layer marked as on its way to `app` (sent while its step
/// wrote it); the landing, after 150 ms, logs `LANDED` and says whether the layer arrived.
/// Returns the registry's log and the push's events.
async fn push_while_the_layer_lands(
    fake: &Fake,
    built: &mut Built,
    arrived: bool,
) -> (Vec<String>, Vec<PushEvent>) {
    let repository = format!("{}/app", fake.addr);
    built.image.layers[0].sent_to = Some(repository);
    let layer = built.image.layers[0].descriptor.digest.clone();
    let state = fake.state.clone();
    let landing: Landing<'_> = Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut st = state.lock().unwrap();
        st.log.push("LANDED".into());
        let mut landed = std::collections::HashSet::new();
        if arrived {
            st.blobs.insert(format!("app@{layer}"), Vec::new());
            landed.insert(layer);
        }
        landed
    });
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    client()
        .push_while_landing(
            &built.store,
            &built.image,
            std::slice::from_ref(&tag),
            &sink,
            Some(landing),
        )
        .await
        .unwrap();
    let log = fake.state.lock().unwrap().log.clone();
    (log, events.into_inner().unwrap())
}

/// Issue 16: a push starts while the layers sent during the build may still be on their way:
/// the config goes meanwhile, and the manifest only once they landed.
#[tokio::test]
async fn the_config_goes_while_a_layer_lands_and_the_manifest_after_it() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let (log, events) = push_while_the_layer_lands(&fake, &mut built, true).await;
    let at = |what: &str| log.iter().position(|l| l.starts_with(what));
    let landed = at("LANDED").expect("the landing was waited for");
    let config_sent = at("PUT /v2/app/blobs/uploads/").expect("the config was sent");
    let manifest = at("PUT /v2/app/manifests/1").expect("the manifest was sent");
    assert!(
        config_sent < landed,
        "the config waited for the layer: {log:#?}"
    );
    assert!(landed < manifest, "the manifest went first: {log:#?}");
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("PUT /v2/app/blobs/"))
            .count(),
        1,
        "only the config is uploaded: {log:#?}"
    );
    let layer = &built.image.layers[0].descriptor.digest;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PushEvent::Uploaded { digest, .. } if digest == layer)),
        "{events:#?}"
    );
}

/// A layer whose upload during the build did not arrive is sent from the store by the push,
/// before the manifest, and lands byte for byte.
#[tokio::test]
async fn a_layer_that_did_not_land_is_sent_again_before_the_manifest() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let (log, events) = push_while_the_layer_lands(&fake, &mut built, false).await;
    let landed = log.iter().position(|l| l == "LANDED").unwrap();
    let manifest = log
        .iter()
        .position(|l| l.starts_with("PUT /v2/app/manifests/1"))
        .unwrap();
    let layer = &built.image.layers[0].descriptor.digest;
    let uploads_after: Vec<&String> = log[landed..manifest]
        .iter()
        .filter(|l| l.starts_with("PUT /v2/app/blobs/uploads/"))
        .collect();
    assert_eq!(uploads_after.len(), 1, "the layer was sent again: {log:#?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PushEvent::Uploaded { digest, .. } if digest == layer)),
        "{events:#?}"
    );
    let st = fake.state.lock().unwrap();
    assert_eq!(st.blobs[&format!("app@{layer}")], built.layer);
}

#[tokio::test]
async fn a_tag_pinning_another_digest_is_refused_before_anything_is_sent() {
    let fake = Fake::start().await;
    let built = build_image();
    let other = Digest::of(b"other");
    let tag = Reference::parse(&format!("{}/app:1@{other}", fake.addr)).unwrap();
    let err = client()
        .push(&built.store, &built.image, &[tag], &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::TagDigest { .. }), "{err:?}");
    assert!(fake.state.lock().unwrap().log.is_empty());
}

#[tokio::test]
async fn bytes_not_matching_the_digest_are_refused_by_the_registry_and_not_retried() {
    let fake = Fake::start().await;
    let built = build_image();
    // Damage the stored layer behind the store's back: same length, other bytes.
    let layer = &built.image.layers[0].descriptor.digest;
    let mut bad = built.layer.clone();
    bad[7] ^= 0xff;
    std::fs::write(built.store.blob_path(layer), &bad).unwrap();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let events = Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);

    let err = client()
        .push(&built.store, &built.image, &[tag], &sink)
        .await
        .unwrap_err();

    match &err {
        PushError::Registry {
            registry,
            repository,
            what,
            status,
            ..
        } => {
            assert_eq!(registry, &fake.addr.to_string());
            assert_eq!(repository, "app");
            assert!(what.contains(&layer.to_string()), "{what}");
            assert_eq!(*status, Some(400));
        }
        other => panic!("expected the registry's refusal, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&layer.to_string()) && text.contains("status 400"),
        "{text}"
    );
    let st = fake.state.lock().unwrap();
    assert!(!st.blobs.contains_key(&format!("app@{layer}")));
    assert!(
        st.manifests.is_empty(),
        "a manifest was pushed over a failed blob"
    );
    let commits = st.count("PUT /v2/app/blobs/uploads/");
    // The layer's one refused commit, and the config's if it got that far before the failure.
    assert!((1..=2).contains(&commits), "{:#?}", st.log);
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PushEvent::Retrying { .. })),
        "a digest refusal was retried"
    );
}
