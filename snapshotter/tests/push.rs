//! Push against a registry that misbehaves on purpose: a tiny HTTP/1.1 server on 127.0.0.1 that
//! speaks the upload protocol (POST session, PATCH chunks, PUT with the digest it checks) and can
//! fail a chunk with 500 or refuse sessions with 401/403. Checks that transient failures are
//! retried with a fresh session, refusals are not, and what lands is byte for byte what was built.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, BlobKind, Landing, PushBlob, PushError, PushEvent, PushImage, RegistryClient,
    RegistryConfig,
};
use forge_snapshotter::retry::RetryPolicy;
use forge_snapshotter::store::{Descriptor, Digest, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Default)]
struct State {
    /// `repo@digest` -> bytes the registry holds.
    blobs: HashMap<String, Vec<u8>>,
    /// Upload id -> (repo, bytes so far).
    uploads: HashMap<String, (String, Vec<u8>)>,
    /// `repo:tag` -> (content type, body).
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// "METHOD path" of every request but `GET /v2/`.
    log: Vec<String>,
    /// The bytes each `PATCH` and commit (`PUT`) of an upload carried, in order, with the
    /// digest the commit named (`None` for a `PATCH`).
    sent: Vec<(&'static str, usize, Option<String>)>,
    /// The `User-Agent` of every request.
    agents: std::collections::BTreeSet<String>,
    /// Requests carrying bytes past a blob's first chunk (a `PATCH`, or a commit with its last
    /// bytes) to answer with 500 (a failure mid-blob) before accepting.
    fail_later_chunks: usize,
    /// When set, every upload session is refused with this status.
    refuse_uploads: Option<u16>,
    next_id: u64,
}

struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, st).await;
                });
            }
        });
        Fake { addr, state }
    }

    fn count(&self, prefix: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// Serves requests on one connection until the client closes it (reqwest keeps connections alive).
async fn serve(mut conn: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_string();
        pending.drain(..end);
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while pending.len() < length {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        }
        let body: Vec<u8> = pending.drain(..length).collect();
        let (status, out_headers, out_body) = {
            let mut st = state.lock().unwrap();
            route(&mut st, &method, &target, &headers, body)
        };
        let mut resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n",
            out_body.len()
        );
        for (k, v) in out_headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        conn.write_all(resp.as_bytes()).await?;
        conn.write_all(&out_body).await?;
    }
}

type Response = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn route(
    st: &mut State,
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/v2/" {
        return (200, vec![], b"{}".to_vec());
    }
    st.log.push(format!("{method} {path}"));
    if let Some(agent) = headers.get("user-agent") {
        st.agents.insert(agent.clone());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (404, vec![], vec![]);
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(|v| v.replace("%3A", ":").replace("%2F", "/"))
    };
    if let Some((repo, id)) = rest.split_once("/blobs/uploads/") {
        let repo = repo.to_string();
        match (method, id) {
            ("POST", "") => {
                if let Some(status) = st.refuse_uploads {
                    let error = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
                    return (status, vec![], error.to_vec());
                }
                // A mount links a blob the source repository holds (201); one it lacks opens
                // an upload instead (202), as Distribution does.
                if let (Some(digest), Some(from)) = (param("mount"), param("from"))
                    && let Some(bytes) = st.blobs.get(&format!("{from}@{digest}")).cloned()
                {
                    st.blobs.insert(format!("{repo}@{digest}"), bytes);
                    let loc = format!("/v2/{repo}/blobs/{digest}");
                    return (201, vec![("Location", loc)], vec![]);
                }
                st.next_id += 1;
                let id = st.next_id.to_string();
                st.uploads.insert(id.clone(), (repo.clone(), Vec::new()));
                let loc = format!("/v2/{repo}/blobs/uploads/{id}");
                (
                    202,
                    vec![("Location", loc), ("Range", "0-0".into())],
                    vec![],
                )
            }
            ("PATCH", id) => {
                let start: usize = headers
                    .get("content-range")
                    .and_then(|r| r.split('-').next()?.parse().ok())
                    .unwrap_or(0);
                if st.fail_later_chunks > 0 && start > 0 {
                    st.fail_later_chunks -= 1;
                    return (500, vec![], b"disk on fire".to_vec());
                }
                match st.uploads.get(id) {
                    None => return (404, vec![], vec![]),
                    Some((_, data)) if start != data.len() => return (416, vec![], vec![]),
                    Some(_) => {}
                }
                st.sent.push(("PATCH", body.len(), None));
                let (_, data) = st.uploads.get_mut(id).expect("checked above");
                data.extend_from_slice(&body);
                let range = format!("0-{}", data.len().saturating_sub(1));
                let loc = format!("/v2/{repo}/blobs/uploads/{id}");
                (202, vec![("Location", loc), ("Range", range)], vec![])
            }
            ("PUT", id) => {
                let held = st.uploads.get(id).map_or(0, |(_, data)| data.len());
                if st.fail_later_chunks > 0 && held > 0 && !body.is_empty() {
                    st.fail_later_chunks -= 1;
                    return (500, vec![], b"disk on fire".to_vec());
                }
                let Some((_, mut data)) = st.uploads.remove(id) else {
                    return (404, vec![], vec![]);
                };
                st.sent.push(("PUT", body.len(), param("digest")));
                data.extend_from_slice(&body);
                let Some(digest) = param("digest") else {
                    return (400, vec![], vec![]);
                };
                if Digest::of(&data).to_string() != digest {
                    return (
                        400,
                        vec![],
                        br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#.to_vec(),
                    );
                }
                st.blobs.insert(format!("{repo}@{digest}"), data);
                let loc = format!("/v2/{repo}/blobs/{digest}");
                (201, vec![("Location", loc)], vec![])
            }
            ("DELETE", id) => match st.uploads.remove(id) {
                Some(_) => (204, vec![], vec![]),
                None => (404, vec![], vec![]),
            },
            _ => (405, vec![], vec![]),
        }
    } else if let Some((repo, digest)) = rest.split_once("/blobs/") {
        match st.blobs.get(&format!("{repo}@{digest}")) {
            Some(b) if method == "HEAD" => (
                200,
                vec![("Docker-Content-Digest", digest.to_string())],
                b.clone(),
            ),
            _ => (404, vec![], vec![]),
        }
    } else if let Some((repo, tag)) = rest.split_once("/manifests/") {
        if method != "PUT" {
            return (404, vec![], vec![]);
        }
        let ct = headers.get("content-type").cloned().unwrap_or_default();
        let digest = Digest::of(&body).to_string();
        st.manifests.insert(format!("{repo}:{tag}"), (ct, body));
        let loc = format!("/v2/{repo}/manifests/{digest}");
        (
            201,
            vec![("Location", loc), ("Docker-Content-Digest", digest)],
            vec![],
        )
    } else {
        (404, vec![], vec![])
    }
}

/// A store holding a small image whose layer spans two upload chunks (oci-client sends 4 MiB).
struct Built {
    _dir: tempfile::TempDir,
    store: Store,
    image: PushImage,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

fn build_image() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Not all-zero, so a chunk sent twice or out of order changes the digest.
    let layer: Vec<u8> = (0..(5u32 << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let put = |bytes: &[u8], media_type: &str| Descriptor {
        media_type: media_type.to_string(),
        digest: store.write_blob(bytes, None).unwrap(),
        size: bytes.len() as u64,
    };
    let config = put(config, OCI_CONFIG);
    let layer_desc = put(&layer, OCI_LAYER_GZ);
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": OCI_LAYER_GZ, "digest": layer_desc.digest.to_string(), "size": layer_desc.size}],
    }))
    .unwrap();
    let manifest_desc = put(&manifest, OCI_MANIFEST);
    let blob = |descriptor, kind| PushBlob {
        descriptor,
        kind,
        mount_from: None,
        sent_to: None,
    };
    let image = PushImage {
        manifest: manifest_desc,
        config: blob(config, BlobKind::Config),
        layers: vec![blob(layer_desc, BlobKind::Layer)],
        held: Default::default(),
    };
    Built {
        _dir: dir,
        store,
        image,
        layer,
        manifest,
    }
}

/// Pushes `built`'s image under `tag` with a fresh client, which must succeed.
async fn push_one(
    built: &Built,
    tag: &Reference,
    sink: &(dyn Fn(PushEvent) + Send + Sync),
) -> Digest {
    client()
        .push(&built.store, &built.image, std::slice::from_ref(tag), sink)
        .await
        .unwrap()
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        retry: RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        ..RegistryConfig::default()
    })
}

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
    let posts = st.log.iter().filter(|l| l.starts_with("POST ")).count();
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
        st.log
            .iter()
            .filter(|l| l.starts_with("PUT /v2/app/blobs/uploads/"))
            .count(),
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
        assert_eq!(
            fake_count(&st, "POST /v2/app/blobs/uploads/"),
            2,
            "{:#?}",
            st.log
        );
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

fn fake_count(st: &State, prefix: &str) -> usize {
    st.log.iter().filter(|l| l.starts_with(prefix)).count()
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
    let commits = st
        .log
        .iter()
        .filter(|l| l.starts_with("PUT /v2/app/blobs/uploads/"))
        .count();
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
