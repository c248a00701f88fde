//! Upload sessions opened ahead of their blobs (`registry/spare.rs`), against the fake registry
//! of `common/fake_registry.rs`: the next upload to the repository takes a spare instead of
//! opening its own, a config the build made goes through one without being checked for first,
//! a spare of another repository is left alone, and what no blob took is given up, so that no
//! session stays open in the registry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_registry::*;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{PushError, PushEvent, RegistryClient};
use forge_snapshotter::store::{Descriptor, Digest};

/// Waits until the fake registry has been asked for `n` sessions (spares open in the background).
async fn sessions_asked(fake: &Fake, n: usize) {
    for _ in 0..500 {
        if fake.count("POST ") >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{n} sessions were never asked for: {:#?}",
        fake.state.lock().unwrap().log
    );
}

/// A client with one spare session open (answered) in `tag`'s repository.
async fn client_with_a_spare(fake: &Fake, tag: &Reference) -> Arc<RegistryClient> {
    let client = Arc::new(client());
    client.open_spare(tag);
    sessions_asked(fake, 1).await;
    client
}

/// `built`'s config held in memory, as a build's push holds the config it made; its descriptor.
fn hold_config(built: &mut Built) -> Descriptor {
    let config = built.image.config.descriptor.clone();
    let bytes = built.store.read_blob(&config.digest).unwrap();
    built
        .image
        .held
        .insert(config.digest.clone(), bytes::Bytes::from(bytes));
    config
}

/// Pushes `built`'s image as `tag` through `client`.
async fn push(
    client: &RegistryClient,
    built: &Built,
    tag: &Reference,
) -> Result<Digest, PushError> {
    let sink = |_: PushEvent| {};
    client
        .push(&built.store, &built.image, std::slice::from_ref(tag), &sink)
        .await
}

/// The upload ids each commit (`PUT`) went to, from the log.
fn committed_ids(fake: &Fake) -> Vec<String> {
    let st = fake.state.lock().unwrap();
    st.log
        .iter()
        .filter_map(|l| l.strip_prefix("PUT "))
        .filter_map(|path| path.split_once("/blobs/uploads/"))
        .map(|(_, id)| id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_upload_takes_the_spare_session_instead_of_opening_one() {
    let fake = Fake::start().await;
    let built = build_image();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let client = client_with_a_spare(&fake, &tag).await;
    // Session 1 is the spare's.
    push(&client, &built, &tag).await.unwrap();
    client.give_up_spares(&tag).await;

    let st = fake.state.lock().unwrap();
    // The config (one chunk) took the spare; the layer (two chunks) opened its own: two sessions
    // in all, as many as without a spare, and none given up.
    assert_eq!(st.count("POST "), 2, "{:#?}", st.log);
    assert!(
        !st.log.iter().any(|l| l.starts_with("DELETE ")),
        "{:#?}",
        st.log
    );
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
    let config = &built.image.config.descriptor;
    assert!(
        st.blobs.contains_key(&format!("app@{}", config.digest)),
        "{:#?}",
        st.log
    );
    drop(st);
    assert!(
        committed_ids(&fake).contains(&"1".to_string()),
        "the spare session was not committed: {:?}",
        committed_ids(&fake)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_opened_together_ask_the_registry_once_and_serve_the_uploads() {
    let fake = Fake::start().await;
    let mut built = build_image();
    hold_config(&mut built);
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    // None: the registry is asked whether it wants a token, and nothing is opened.
    Arc::new(client()).open_spares(&tag, 0);
    for _ in 0..500 {
        if fake.state.lock().unwrap().probes > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.state.lock().unwrap().probes, 1);
    assert_eq!(fake.count("POST "), 0);
    // Three at once on a new client: one question for the three.
    let client = Arc::new(client());
    client.open_spares(&tag, 3);
    sessions_asked(&fake, 3).await;
    assert_eq!(fake.state.lock().unwrap().probes, 2);
    // The layer (two chunks) and the config take two of them and open none of their own; the
    // third is given up.
    push(&client, &built, &tag).await.unwrap();
    client.give_up_spares(&tag).await;
    let st = fake.state.lock().unwrap();
    assert_eq!(st.count("POST /v2/app/blobs/uploads/"), 3, "{:#?}", st.log);
    assert_eq!(
        st.count("DELETE /v2/app/blobs/uploads/"),
        1,
        "{:#?}",
        st.log
    );
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
    // The uploads used the answer the spares got.
    assert_eq!(st.probes, 2);
    let layers = built.image.layers.iter().map(|l| &l.descriptor.digest);
    for digest in layers.chain([&built.image.config.descriptor.digest]) {
        assert!(
            st.blobs.contains_key(&format!("app@{digest}")),
            "{digest}: {:#?}",
            st.log
        );
    }
    drop(st);
    let mut committed = committed_ids(&fake);
    committed.sort();
    committed.dedup();
    assert!(
        committed
            .iter()
            .all(|id| ["1", "2", "3"].contains(&id.as_str())),
        "a blob went through a session of its own: {committed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_no_blob_took_are_given_up() {
    let fake = Fake::start().await;
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let client = Arc::new(client());
    client.open_spare(&tag);
    client.open_spare(&tag);
    // Given up at once, before the registry answered: they are waited for, then deleted.
    client.give_up_spares(&tag).await;
    let st = fake.state.lock().unwrap();
    assert_eq!(st.count("POST /v2/app/blobs/uploads/"), 2, "{:#?}", st.log);
    assert_eq!(
        st.count("DELETE /v2/app/blobs/uploads/"),
        2,
        "{:#?}",
        st.log
    );
    assert!(
        st.uploads.is_empty(),
        "a session was left open: {:#?}",
        st.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_of_another_repository_is_left_to_it() {
    let fake = Fake::start().await;
    let built = build_image();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let other = Reference::parse(&format!("{}/other:1", fake.addr)).unwrap();
    let client = client_with_a_spare(&fake, &other).await;
    push(&client, &built, &tag).await.unwrap();
    {
        let st = fake.state.lock().unwrap();
        assert_eq!(st.count("POST /v2/app/blobs/uploads/"), 2, "{:#?}", st.log);
        assert_eq!(st.uploads.len(), 1, "{:#?}", st.log);
        assert_eq!(
            st.uploads.values().next().unwrap().0,
            "other",
            "{:#?}",
            st.log
        );
    }
    // Giving up app's spares leaves other's; giving up other's closes it.
    client.give_up_spares(&tag).await;
    assert_eq!(fake.state.lock().unwrap().uploads.len(), 1);
    client.give_up_spares(&other).await;
    let st = fake.state.lock().unwrap();
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
    assert_eq!(
        st.count("DELETE /v2/other/blobs/uploads/"),
        1,
        "{:#?}",
        st.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_the_registry_refused_leaves_the_upload_its_own_refusal() {
    let fake = Fake::start().await;
    fake.state.lock().unwrap().refuse_uploads = Some(403);
    let built = build_image();
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let client = client_with_a_spare(&fake, &tag).await;
    let err = push(&client, &built, &tag).await.unwrap_err();
    assert!(
        matches!(err, PushError::Denied { status: 403, .. }),
        "{err:?}"
    );
    client.give_up_spares(&tag).await;
    let st = fake.state.lock().unwrap();
    assert!(
        !st.log.iter().any(|l| l.starts_with("DELETE ")),
        "nothing was open to give up: {:#?}",
        st.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_build_made_goes_through_its_spare_without_a_check() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let config = hold_config(&mut built);
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let client = client_with_a_spare(&fake, &tag).await;
    push(&client, &built, &tag).await.unwrap();
    let st = fake.state.lock().unwrap();
    let config_path = format!("/v2/app/blobs/{}", config.digest);
    assert!(
        !st.log.iter().any(|l| *l == format!("HEAD {config_path}")),
        "the config was checked for: {:#?}",
        st.log
    );
    // The layer was checked for as ever.
    let layer = &built.image.layers[0].descriptor;
    assert!(
        st.log
            .iter()
            .any(|l| *l == format!("HEAD /v2/app/blobs/{}", layer.digest)),
        "{:#?}",
        st.log
    );
    assert!(
        st.blobs.contains_key(&format!("app@{}", config.digest)),
        "{:#?}",
        st.log
    );
    assert!(st.uploads.is_empty(), "{:#?}", st.log);
    drop(st);
    assert!(
        committed_ids(&fake).contains(&"1".to_string()),
        "{:?}",
        committed_ids(&fake)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_the_registry_dropped_is_replaced_by_a_fresh_session() {
    let fake = Fake::start().await;
    let mut built = build_image();
    let config = hold_config(&mut built);
    let tag = Reference::parse(&format!("{}/app:1", fake.addr)).unwrap();
    let client = client_with_a_spare(&fake, &tag).await;
    // The registry forgets the session (as one that expires sessions no bytes came for).
    fake.state.lock().unwrap().uploads.clear();
    let events = std::sync::Mutex::new(Vec::new());
    let sink = |e: PushEvent| events.lock().unwrap().push(e);
    client
        .push(
            &built.store,
            &built.image,
            std::slice::from_ref(&tag),
            &sink,
        )
        .await
        .unwrap();
    let st = fake.state.lock().unwrap();
    assert_eq!(
        st.blobs
            .get(&format!("app@{}", config.digest))
            .map(Vec::len),
        Some(config.size as usize),
        "{:#?}",
        st.log
    );
    // The spare's commit was answered 404, and the config went through a session of its own.
    assert!(
        st.log.iter().any(|l| l == "PUT /v2/app/blobs/uploads/1"),
        "{:#?}",
        st.log
    );
    assert_eq!(st.count("POST "), 3, "{:#?}", st.log);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PushEvent::Retrying { .. })),
        "no retry was reported"
    );
}
