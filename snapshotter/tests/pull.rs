//! Pull against a registry that misbehaves on purpose: a tiny HTTP/1.1 server on 127.0.0.1 serving
//! manifests and blobs from memory, able to send wrong bytes, fail with 5xx before answering, cut a
//! body short, refuse with 404, or demand a bearer token. Checks that bad bytes never reach the
//! store, that transient failures are retried and others are not, that indexes resolve to the host
//! platform, and that a second pull downloads nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_snapshotter::platform::Platform;
use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, BlobKind, FollowedBlob, LayerFollower, PullError, PullEvent, RegistryClient,
    RegistryConfig,
};
use forge_snapshotter::retry::RetryPolicy;
use forge_snapshotter::store::{Digest, ImageRecord, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How the fake answers for one blob.
#[derive(Clone)]
enum Plan {
    Serve(Vec<u8>),
    /// Answers `status` this many times, then serves the bytes.
    FailFirst(usize, u16, Vec<u8>),
    /// Announces the full length, sends half, and hangs up; this many times, then serves.
    CutShort(usize, Vec<u8>),
    Status(u16),
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Plan>,
    log: Vec<String>,
    /// When set, every /v2/ request needs `Bearer <token>`, got from /token with these creds.
    basic: Option<(String, String)>,
    /// Paths answered with a temporary redirect to the URL given.
    moved: HashMap<String, String>,
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
                    let _ = serve(conn, st, addr).await;
                });
            }
        });
        Fake { addr, state }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn blob(&self, bytes: &[u8], plan: Plan) -> Digest {
        let d = Digest::of(bytes);
        self.state.lock().unwrap().blobs.insert(d.to_string(), plan);
        d
    }

    /// Puts a manifest under `repo` by tag and by digest; returns its digest.
    fn manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) -> Digest {
        let d = Digest::of(body);
        let mut st = self.state.lock().unwrap();
        for r in [tag.to_string(), d.to_string()] {
            st.manifests
                .insert(format!("{repo}/{r}"), (media_type.into(), body.to_vec()));
        }
        d
    }

    fn blob_gets(&self, d: &Digest) -> usize {
        let needle = format!("GET /blobs/{d}");
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| **l == needle)
            .count()
    }
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let authz = lines
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();

    let (status, headers, body, cut) = {
        let mut st = state.lock().unwrap();
        route(&mut st, &method, &path, &authz, addr)
    };
    let mut resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    conn.write_all(resp.as_bytes()).await?;
    if method != "HEAD" {
        let send = if cut {
            &body[..body.len() / 2]
        } else {
            &body[..]
        };
        conn.write_all(send).await?;
    }
    conn.flush().await?;
    conn.shutdown().await?;
    Ok(())
}

type Response = (u16, Vec<(String, String)>, Vec<u8>, bool);

fn route(st: &mut State, method: &str, path: &str, authz: &str, addr: SocketAddr) -> Response {
    let json = |status: u16, body: &str| {
        (
            status,
            vec![("Content-Type".into(), "application/json".into())],
            body.as_bytes().to_vec(),
            false,
        )
    };
    if path == "/token" {
        st.log.push(format!("{method} /token"));
        let want = st.basic.as_ref().map(|(u, p)| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        return if want.as_deref() == Some(authz) {
            json(200, r#"{"token":"fake-token"}"#)
        } else {
            json(
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}"#,
            )
        };
    }
    if st.basic.is_some() && authz != "Bearer fake-token" {
        st.log.push(format!("{method} {path} 401"));
        let mut r = json(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#,
        );
        r.1.push((
            "WWW-Authenticate".into(),
            format!(r#"Bearer realm="http://{addr}/token",service="fake""#),
        ));
        return r;
    }
    if let Some(to) = st.moved.get(path) {
        st.log.push(format!("{method} {path} moved"));
        return (
            307,
            vec![("Location".into(), to.clone())],
            Vec::new(),
            false,
        );
    }
    if path == "/v2/" {
        st.log.push(format!("{method} /v2/"));
        return json(200, "{}");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return json(404, "{}");
    };
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        st.log.push(format!("{method} /manifests/{reference}"));
        return match st.manifests.get(&format!("{repo}/{reference}")) {
            Some((ty, body)) => (
                200,
                vec![
                    ("Content-Type".into(), ty.clone()),
                    ("Docker-Content-Digest".into(), Digest::of(body).to_string()),
                ],
                body.clone(),
                false,
            ),
            None => json(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such manifest"}]}"#,
            ),
        };
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        st.log.push(format!("{method} /blobs/{digest}"));
        let octets = |body: Vec<u8>, cut| {
            (
                200,
                vec![("Content-Type".into(), "application/octet-stream".into())],
                body,
                cut,
            )
        };
        let Some(plan) = st.blobs.get_mut(digest) else {
            return json(
                404,
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no such blob"}]}"#,
            );
        };
        return match plan {
            Plan::Serve(b) => octets(b.clone(), false),
            Plan::FailFirst(n, status, b) => {
                if *n > 0 {
                    *n -= 1;
                    let status = *status;
                    json(status, "upstream trouble")
                } else {
                    octets(b.clone(), false)
                }
            }
            Plan::CutShort(n, b) => {
                let cut = *n > 0;
                *n = n.saturating_sub(1);
                octets(b.clone(), cut)
            }
            // The envelope Distribution sends with each status.
            Plan::Status(s) => match *s {
                404 => json(
                    404,
                    r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
                ),
                s => json(
                    s,
                    r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
                ),
            },
        };
    }
    json(404, "{}")
}

/// An image with a config and `layers` layers; the layers' bytes are arbitrary (pull does not
/// decompress). Returns (manifest bytes, config digest, layer digests).
fn image_manifest(
    fake: &Fake,
    layers: &[(&[u8], Plan)],
    manifest_type: &str,
    config_type: &str,
    layer_type: &str,
) -> (Vec<u8>, Digest, Vec<Digest>) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(b, _)| Digest::of(b).to_string())
        .collect();
    let config = serde_json::json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    })
    .to_string()
    .into_bytes();
    let config_digest = fake.blob(&config, Plan::Serve(config.clone()));
    let mut layer_descs = Vec::new();
    let mut layer_digests = Vec::new();
    for (bytes, plan) in layers {
        let d = fake.blob(bytes, plan.clone());
        layer_descs.push(serde_json::json!({
            "mediaType": layer_type, "digest": d.to_string(), "size": bytes.len(),
        }));
        layer_digests.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layer_descs,
    })
    .to_string()
    .into_bytes();
    (manifest, config_digest, layer_digests)
}

/// `repo:latest`, an OCI image of one gzip layer `layer` whose bytes the fake serves as `served`;
/// returns the layer digests.
fn one_layer_image(fake: &Fake, repo: &str, layer: &[u8], served: &[u8]) -> Vec<Digest> {
    let (manifest, _, layers) = image_manifest(
        fake,
        &[(layer, Plan::Serve(served.to_vec()))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    fake.manifest(repo, "latest", OCI_MANIFEST, &manifest);
    layers
}

/// `repo:tag`, an OCI image of two gzip layers served as they are; returns the manifest's digest,
/// the config's and the layers'.
fn two_layer_image(
    fake: &Fake,
    repo: &str,
    tag: &str,
    l1: &[u8],
    l2: &[u8],
) -> (Digest, Digest, Vec<Digest>) {
    let (manifest, config, layers) = image_manifest(
        fake,
        &[
            (l1, Plan::Serve(l1.to_vec())),
            (l2, Plan::Serve(l2.to_vec())),
        ],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    (
        fake.manifest(repo, tag, OCI_MANIFEST, &manifest),
        config,
        layers,
    )
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        retry: RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        read_timeout: Duration::from_secs(10),
        ..RegistryConfig::default()
    })
}

/// Collects events for assertions.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<PullEvent>>>);

impl Events {
    fn sink(&self) -> impl Fn(PullEvent) + Send + Sync + '_ {
        move |e| self.0.lock().unwrap().push(e)
    }
    fn take(&self) -> Vec<PullEvent> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn tmp_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect()
}

#[tokio::test]
async fn pulls_records_and_skips_what_it_has() {
    let fake = Fake::start().await;
    let l1 = vec![1u8; 300_000];
    let l2 = vec![2u8; 70_000];
    let (manifest_digest, config, layers) = two_layer_image(&fake, "forge/app", "v1", &l1, &l2);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/app:v1", fake.host())).unwrap();
    let events = Events::default();
    let client = client();

    let record = client
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    assert_eq!(record.reference, reference.to_string());
    assert_eq!(record.manifest.digest, manifest_digest);
    assert_eq!(record.manifest.media_type, OCI_MANIFEST);
    assert_eq!(record.config.digest, config);
    assert_eq!(
        record
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect::<Vec<_>>(),
        layers
    );
    assert!(record.layers.iter().all(|l| l.media_type == OCI_LAYER_GZ));
    assert_eq!(record.index, None);
    assert_eq!(
        store.get_image(&reference.to_string()).unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.read_blob(&layers[0]).unwrap(), l1);
    assert_eq!(
        Digest::of(&store.read_blob(&manifest_digest).unwrap()),
        manifest_digest
    );
    assert!(store.check().unwrap().is_clean());

    let first = events.take();
    let done: Vec<&Digest> = first
        .iter()
        .filter_map(|e| match e {
            PullEvent::Done { digest, .. } => Some(digest),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 3, "config and two layers downloaded: {first:?}");
    assert!(first.iter().any(|e| matches!(e, PullEvent::Progress { digest, bytes: 300_000, total: 300_000 } if *digest == layers[0])));
    assert!(first.iter().any(|e| matches!(
        e,
        PullEvent::Started {
            kind: BlobKind::Config,
            ..
        }
    )));

    // Again: the manifest is fetched (the tag may have moved) but no blob is.
    let again = client
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    assert_eq!(again.manifest, record.manifest);
    let second = events.take();
    let cached = second
        .iter()
        .filter(|e| matches!(e, PullEvent::Cached { .. }))
        .count();
    assert_eq!(cached, 3, "{second:?}");
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, PullEvent::Started { .. } | PullEvent::Done { .. })),
        "{second:?}"
    );
    for d in layers.iter().chain([&config]) {
        assert_eq!(fake.blob_gets(d), 1, "{d} fetched once in two pulls");
    }
}

/// A new process (a new client) whose store holds the image a tag named makes no blob client
/// up front; when the tag has moved to an image with a new layer, the blobs it lacks still come.
#[tokio::test]
async fn an_open_registry_is_asked_with_the_pulls_first_request() {
    let fake = Fake::start().await;
    let layer = vec![4u8; 5000];
    let layers = one_layer_image(&fake, "forge/open", &layer, &layer);
    one_layer_image(&fake, "forge/other", &[5u8; 300], &[5u8; 300]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = client();
    let reference = Reference::parse(&format!("{}/forge/open", fake.host())).unwrap();
    client.pull(&store, &reference, &|_| {}).await.unwrap();
    assert!(store.has_blob(&layers[0]));
    let log = std::mem::take(&mut fake.state.lock().unwrap().log);
    // The manifest's request was the asking: no `/v2/` before it, and it went out once.
    assert_eq!(
        log.first().map(String::as_str),
        Some("GET /manifests/latest"),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l == "GET /v2/"), "{log:?}");
    assert_eq!(
        log.iter().filter(|l| l.contains("/manifests/")).count(),
        1,
        "{log:?}"
    );
    // The answer is known now: another repository's pull asks nothing before its manifest.
    let other = Reference::parse(&format!("{}/forge/other", fake.host())).unwrap();
    client.pull(&store, &other, &|_| {}).await.unwrap();
    let log = std::mem::take(&mut fake.state.lock().unwrap().log);
    assert_eq!(
        log.first().map(String::as_str),
        Some("GET /manifests/latest"),
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.contains("/manifests/")).count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn a_tag_moved_since_the_stored_pull_brings_the_new_blobs_in() {
    let fake = Fake::start().await;
    let (l1, l2) = (vec![1u8; 50_000], vec![2u8; 60_000]);
    let first_layers = one_layer_image(&fake, "forge/moving", &l1, &l1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/moving", fake.host())).unwrap();
    let events = Events::default();
    client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    events.take();

    let (moved, config, layers) = two_layer_image(&fake, "forge/moving", "latest", &l1, &l2);
    let record = client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    assert_eq!(record.manifest.digest, moved);
    assert_eq!(record.config.digest, config);
    assert_eq!(store.read_blob(&layers[1]).unwrap(), l2);
    assert_eq!(layers[0], first_layers[0]);
    assert_eq!(
        fake.blob_gets(&layers[0]),
        1,
        "the stored layer is not fetched again"
    );
    assert_eq!(fake.blob_gets(&layers[1]), 1);
    let done = events
        .take()
        .into_iter()
        .filter(|e| matches!(e, PullEvent::Done { .. }))
        .count();
    assert_eq!(done, 2, "the new config and the new layer");
    assert!(store.check().unwrap().is_clean());
}

#[tokio::test]
async fn a_manifest_redirected_by_a_plain_http_registry_is_followed() {
    let fake = Fake::start().await;
    let (l1, l2) = (vec![3u8; 40_000], vec![4u8; 20_000]);
    let (manifest, _, layers) = two_layer_image(&fake, "forge/real", "v2", &l1, &l2);
    fake.state.lock().unwrap().moved.insert(
        "/v2/forge/alias/manifests/v1".into(),
        format!("http://{}/v2/forge/real/manifests/v2", fake.host()),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/alias:v1", fake.host())).unwrap();
    let record = client().pull(&store, &reference, &|_| {}).await.unwrap();
    assert_eq!(record.manifest.digest, manifest);
    assert_eq!(store.read_blob(&layers[1]).unwrap(), l2);
    let log = fake.state.lock().unwrap().log.clone();
    let moved = log
        .iter()
        .position(|l| l == "GET /v2/forge/alias/manifests/v1 moved")
        .expect("the manifest was asked for where the reference names it");
    assert!(
        log[moved..].iter().any(|l| l == "GET /manifests/v2"),
        "the redirect was followed: {log:?}"
    );
}

/// Registries often answer a blob request with a redirect to the storage that holds it; a pull
/// from a registry that wants no token (whose blobs forge fetches with its own client) follows it.
#[tokio::test]
async fn a_blob_redirected_by_a_plain_http_registry_is_followed() {
    let fake = Fake::start().await;
    let (l1, l2) = (vec![5u8; 30_000], vec![6u8; 10_000]);
    let (_, _, layers) = two_layer_image(&fake, "forge/stored", "v1", &l1, &l2);
    let asked = format!("/v2/forge/stored/blobs/{}", layers[0]);
    fake.state.lock().unwrap().moved.insert(
        asked.clone(),
        format!("http://{}/v2/storage/blobs/{}", fake.host(), layers[0]),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/stored:v1", fake.host())).unwrap();
    client().pull(&store, &reference, &|_| {}).await.unwrap();
    assert_eq!(store.read_blob(&layers[0]).unwrap(), l1);
    assert_eq!(store.read_blob(&layers[1]).unwrap(), l2);
    let log = fake.state.lock().unwrap().log.clone();
    let moved = log
        .iter()
        .position(|l| *l == format!("GET {asked} moved"))
        .expect("the blob was asked for in the image's repository");
    assert!(
        log[moved..]
            .iter()
            .any(|l| *l == format!("GET /blobs/{}", layers[0])),
        "the redirect was followed: {log:?}"
    );
    assert!(store.check().unwrap().is_clean());
}

#[tokio::test]
async fn wrong_bytes_fail_naming_both_digests_and_never_land() {
    let fake = Fake::start().await;
    let good = vec![7u8; 200_000];
    let evil = vec![8u8; 200_000];
    let layers = one_layer_image(&fake, "forge/evil", &good, &evil);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/evil", fake.host())).unwrap();
    let events = Events::default();

    let err = client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap_err();
    let msg = err.to_string();
    match &err {
        PullError::DigestMismatch {
            registry,
            expected,
            actual,
            ..
        } => {
            assert_eq!(registry, &fake.host());
            assert_eq!(expected, &layers[0].to_string());
            assert_eq!(actual, &Digest::of(&evil).to_string());
        }
        other => panic!("want a digest mismatch, got {other}"),
    }
    for needle in [
        fake.host(),
        reference.to_string(),
        layers[0].to_string(),
        Digest::of(&evil).to_string(),
    ] {
        assert!(msg.contains(&needle), "{msg:?} should name {needle}");
    }
    assert!(!store.has_blob(&layers[0]));
    assert!(!store.has_blob(&Digest::of(&evil)));
    assert!(tmp_files(dir.path()).is_empty());
    assert_eq!(store.get_image(&reference.to_string()).unwrap(), None);
    // A mismatch is not a transient error: asked once.
    assert_eq!(fake.blob_gets(&layers[0]), 1);
}

/// A follower gets a layer's end once its bytes matched the digest (the store then checks, syncs
/// and names the blob beside it): a layer that does not match ends its reader with an error, and
/// one that does is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_to_the_end_only_bytes_that_match() {
    type Reads = Mutex<Vec<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>>;
    struct Reader(Reads);
    impl LayerFollower for Reader {
        fn diff_ids(&self, _: &[oci_spec::image::Digest]) {}
        fn follow(&self, _: usize, _: &forge_snapshotter::store::Descriptor, blob: FollowedBlob) {
            let mut blob = blob;
            self.0.lock().unwrap().push(std::thread::spawn(move || {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut blob, &mut out).map(|_| out)
            }));
        }
        fn pull_done(&self) {}
    }
    let fake = Fake::start().await;
    let good = vec![7u8; 300_000];
    let evil = vec![8u8; 300_000];
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (repo, served) in [("forge/evil", &evil), ("forge/good", &good)] {
        let layers = one_layer_image(&fake, repo, &good, served);
        let reference = Reference::parse(&format!("{}/{repo}", fake.host())).unwrap();
        let events = Events::default();
        let reader = Reader(Mutex::new(Vec::new()));
        let pulled = client()
            .pull_unrecorded(&store, &reference, &events.sink(), Some(&reader))
            .await;
        let readers = std::mem::take(&mut *reader.0.lock().unwrap());
        assert_eq!(readers.len(), 1, "{repo}: its one layer was followed");
        let read = readers.into_iter().next().unwrap().join().unwrap();
        if served == &evil {
            let err = pulled.unwrap_err();
            assert!(
                matches!(err, PullError::DigestMismatch { .. }),
                "want a digest mismatch, got {err}"
            );
            assert!(read.is_err(), "wrong bytes never reach a follower's end");
            assert!(!store.has_blob(&Digest::of(&evil)));
        } else {
            pulled.expect("the right bytes pull");
            assert!(read.unwrap() == good, "the follower read the layer whole");
            assert!(store.has_blob(&layers[0]));
        }
        assert!(tmp_files(dir.path()).is_empty());
    }
}

/// A follower learns the diff_ids as soon as the config's bytes matched its digest, before the
/// store has synced and named the blob (an unpack that waits for them waited for that sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_learns_the_diff_ids_before_the_config_is_stored() {
    struct Told {
        store: Store,
        config: Digest,
        seen: Mutex<Vec<(Vec<String>, bool)>>,
    }
    impl LayerFollower for Told {
        fn diff_ids(&self, ids: &[oci_spec::image::Digest]) {
            let ids = ids.iter().map(ToString::to_string).collect();
            let stored = self.store.has_blob(&self.config);
            self.seen.lock().unwrap().push((ids, stored));
        }
        fn follow(&self, _: usize, _: &forge_snapshotter::store::Descriptor, _: FollowedBlob) {}
        fn pull_done(&self) {}
    }
    let fake = Fake::start().await;
    let (l1, l2) = (vec![1u8; 50_000], vec![2u8; 20_000]);
    let (_, config, _) = two_layer_image(&fake, "forge/told", "v1", &l1, &l2);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/told:v1", fake.host())).unwrap();
    let told = Told {
        store: store.clone(),
        config: config.clone(),
        seen: Mutex::new(Vec::new()),
    };
    client()
        .pull_unrecorded(&store, &reference, &|_| {}, Some(&told))
        .await
        .unwrap();
    let raw: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&config).unwrap()).unwrap();
    let want: Vec<String> = raw["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(want.len(), 2);
    let seen = told.seen.into_inner().unwrap();
    assert_eq!(
        seen,
        [(want, false)],
        "told once, before the config was stored"
    );
}

/// The config and the layers are fetched together; a config whose diff_ids do not match the
/// manifest's layers still fails the pull, naming the reference, and nothing is recorded.
#[tokio::test]
async fn a_config_that_miscounts_the_layers_fails_the_pull() {
    let fake = Fake::start().await;
    let (l1, l2) = (vec![3u8; 90_000], vec![4u8; 60_000]);
    let config = serde_json::json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1).to_string()]},
        "config": {},
    })
    .to_string()
    .into_bytes();
    let config_digest = fake.blob(&config, Plan::Serve(config.clone()));
    let layers: Vec<Digest> = [&l1, &l2]
        .iter()
        .map(|b| fake.blob(b, Plan::Serve(b.to_vec())))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [
            {"mediaType": OCI_LAYER_GZ, "digest": layers[0].to_string(), "size": l1.len()},
            {"mediaType": OCI_LAYER_GZ, "digest": layers[1].to_string(), "size": l2.len()},
        ],
    })
    .to_string()
    .into_bytes();
    fake.manifest("forge/miscount", "v1", OCI_MANIFEST, &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/miscount:v1", fake.host())).unwrap();
    let events = Events::default();
    let err = client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap_err();
    match &err {
        PullError::Malformed { what, message, .. } => {
            assert_eq!(what, "config");
            assert_eq!(message, "1 diff_ids for 2 layers");
        }
        other => panic!("want a malformed config, got {other}"),
    }
    assert!(err.to_string().contains(&reference.to_string()), "{err}");
    assert_eq!(store.get_image(&reference.to_string()).unwrap(), None);
    assert!(tmp_files(dir.path()).is_empty());
    assert_eq!(fake.blob_gets(&config_digest), 1);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let fake = Fake::start().await;
    let layer = vec![3u8; 100_000];
    let (manifest, _, layers) = image_manifest(
        &fake,
        &[(&layer, Plan::FailFirst(2, 500, layer.clone()))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    fake.manifest("forge/flaky", "latest", OCI_MANIFEST, &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/flaky", fake.host())).unwrap();
    let events = Events::default();
    client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    assert_eq!(fake.blob_gets(&layers[0]), 3, "500, 500, then 200");
    let retries: Vec<(u32, Duration)> = events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            PullEvent::Retrying {
                attempt,
                delay,
                error,
                ..
            } => {
                assert!(error.contains("500"), "{error}");
                Some((attempt, delay))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![
            (1, Duration::from_millis(10)),
            (2, Duration::from_millis(20))
        ]
    );
    assert!(store.has_blob(&layers[0]));
}

#[tokio::test]
async fn a_body_cut_short_is_retried() {
    let fake = Fake::start().await;
    let layer = vec![4u8; 400_000];
    let (manifest, _, layers) = image_manifest(
        &fake,
        &[(&layer, Plan::CutShort(1, layer.clone()))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    fake.manifest("forge/cut", "latest", OCI_MANIFEST, &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/cut", fake.host())).unwrap();
    let events = Events::default();
    client()
        .pull(&store, &reference, &events.sink())
        .await
        .unwrap();
    assert_eq!(fake.blob_gets(&layers[0]), 2);
    assert_eq!(store.read_blob(&layers[0]).unwrap(), layer);
    assert!(tmp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = Fake::start().await;
    let layer = vec![5u8; 1000];
    let (manifest, _, layers) = image_manifest(
        &fake,
        &[(&layer, Plan::Status(404))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    fake.manifest("forge/gone", "latest", OCI_MANIFEST, &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/gone", fake.host())).unwrap();
    let err = client()
        .pull(&store, &reference, &|_| {})
        .await
        .unwrap_err();
    // A 404 for a blob the manifest names: the registry lost it.
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&fake.host()), "{err}");
    assert!(text.contains("status 404"), "{err}");
    assert!(text.contains(&layers[0].to_string()), "{err}");
    assert_eq!(fake.blob_gets(&layers[0]), 1);

    // A missing tag is a 404 on the manifest: one request, an error naming the reference and
    // the status.
    let missing = Reference::parse(&format!("{}/forge/gone:nope", fake.host())).unwrap();
    let err = client().pull(&store, &missing, &|_| {}).await.unwrap_err();
    assert!(matches!(err, PullError::NotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("forge/gone:nope"), "{err}");
    assert!(
        text.contains("has no manifest for") && text.contains("status 404"),
        "{err}"
    );
}

/// (media type, digest, size, os, architecture, variant) of each entry.
type IndexEntry<'a> = (
    &'a str,
    &'a Digest,
    usize,
    &'a str,
    &'a str,
    Option<&'a str>,
);

fn index_body(media_type: &str, entries: &[IndexEntry<'_>]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(ty, d, size, os, arch, variant)| {
            let mut platform = serde_json::json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                platform["variant"] = serde_json::json!(v);
            }
            serde_json::json!({"mediaType": ty, "digest": d.to_string(), "size": size, "platform": platform})
        })
        .collect();
    serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn index_resolves_to_the_host_platform() {
    let fake = Fake::start().await;
    let host = Platform::host();
    // One image for the host, one "foreign" image whose blobs the fake does not even have.
    let layer = vec![6u8; 5000];
    let (ours, _, layers) = image_manifest(
        &fake,
        &[(&layer, Plan::Serve(layer.clone()))],
        DOCKER_MANIFEST,
        DOCKER_CONFIG,
        DOCKER_LAYER,
    );
    let ours_digest = fake.manifest("forge/multi", "ours", DOCKER_MANIFEST, &ours);
    let foreign = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
    let foreign_digest = fake.manifest("forge/multi", "foreign", DOCKER_MANIFEST, foreign);
    let index = index_body(
        DOCKER_LIST,
        &[
            (
                DOCKER_MANIFEST,
                &foreign_digest,
                foreign.len(),
                "linux",
                "s390x",
                None,
            ),
            (
                DOCKER_MANIFEST,
                &ours_digest,
                ours.len(),
                "linux",
                &host.architecture,
                Some(host.variant.as_str()).filter(|v| !v.is_empty()),
            ),
            (
                DOCKER_MANIFEST,
                &foreign_digest,
                foreign.len(),
                "unknown",
                "unknown",
                None,
            ),
        ],
    );
    let index_digest = fake.manifest("forge/multi", "latest", DOCKER_LIST, &index);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/forge/multi", fake.host())).unwrap();
    let record = client().pull(&store, &reference, &|_| {}).await.unwrap();
    assert_eq!(record.manifest.digest, ours_digest);
    assert_eq!(record.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(
        record.index.as_ref().map(|i| &i.digest),
        Some(&index_digest)
    );
    assert_eq!(
        record.index.as_ref().map(|i| i.media_type.as_str()),
        Some(DOCKER_LIST)
    );
    assert_eq!(record.layers[0].digest, layers[0]);
    assert_eq!(record.layers[0].media_type, DOCKER_LAYER);
    assert!(
        record
            .platform
            .starts_with(&format!("linux/{}", host.architecture))
    );
    assert!(store.has_blob(&index_digest));

    // Pulling by digest goes straight to the pinned manifest.
    let pinned = Reference::parse(&format!("{}/forge/multi@{ours_digest}", fake.host())).unwrap();
    let record = client().pull(&store, &pinned, &|_| {}).await.unwrap();
    assert_eq!(record.manifest.digest, ours_digest);
    assert_eq!(record.index, None);
}

/// An index whose entry for the platform is itself an index (which forge does not follow) is
/// said as such: it was "no image for linux/amd64; the index offers: linux/amd64".
#[tokio::test]
async fn an_index_within_the_index_is_named_not_called_a_missing_platform() {
    let fake = Fake::start().await;
    let any = Digest::of(b"whatever");
    let index = index_body(OCI_INDEX, &[(OCI_INDEX, &any, 10, "linux", "amd64", None)]);
    fake.manifest("forge/nested", "latest", OCI_INDEX, &index);
    let err = pull_for(&fake, "forge/nested", "linux/amd64")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::MediaType { .. }), "{msg}");
    assert!(
        msg.contains("the index's entry for linux/amd64") && msg.contains(OCI_INDEX),
        "{msg}"
    );
}

/// Pulls `repo`'s `latest` from the fake into a fresh store, as a client that wants `platform`.
async fn pull_for(fake: &Fake, repo: &str, platform: &str) -> Result<ImageRecord, PullError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{}/{repo}", fake.host())).unwrap();
    let config = RegistryConfig {
        auth: AuthResolver::anonymous(),
        platform: Platform::parse(platform).unwrap(),
        ..RegistryConfig::default()
    };
    RegistryClient::new(config)
        .pull(&store, &reference, &|_| {})
        .await
}

#[tokio::test]
async fn index_without_the_host_platform_lists_what_it_has() {
    let fake = Fake::start().await;
    let any = Digest::of(b"whatever");
    let index = index_body(
        OCI_INDEX,
        &[
            (OCI_MANIFEST, &any, 10, "linux", "s390x", None),
            (OCI_MANIFEST, &any, 10, "linux", "riscv64", None),
            (OCI_MANIFEST, &any, 10, "windows", "amd64", None),
        ],
    );
    fake.manifest("forge/elsewhere", "latest", OCI_INDEX, &index);
    let err = pull_for(&fake, "forge/elsewhere", "linux/amd64")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{msg}");
    for needle in [
        "linux/amd64",
        "linux/s390x",
        "linux/riscv64",
        "windows/amd64",
        "forge/elsewhere",
    ] {
        assert!(msg.contains(needle), "{msg:?} should mention {needle}");
    }
}

/// The registry's platform named an arm64 machine `arm64/v8` and the builder's `arm64`; an arm64
/// build (normal form `arm64`) must still pick an index's `arm64/v8` entry, and not `arm64/v9`.
#[tokio::test]
async fn an_arm64_build_picks_the_arm64_v8_entry() {
    let fake = Fake::start().await;
    let layer = vec![8u8; 3000];
    let (ours, _, _) = image_manifest(
        &fake,
        &[(&layer, Plan::Serve(layer.clone()))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    let ours_digest = fake.manifest("forge/arm", "v8", OCI_MANIFEST, &ours);
    let other = Digest::of(b"not served");
    let index = index_body(
        OCI_INDEX,
        &[
            (OCI_MANIFEST, &other, 10, "linux", "arm64", Some("v9")),
            (OCI_MANIFEST, &other, 10, "linux", "amd64", None),
            (
                OCI_MANIFEST,
                &ours_digest,
                ours.len(),
                "linux",
                "arm64",
                Some("v8"),
            ),
        ],
    );
    fake.manifest("forge/arm", "latest", OCI_INDEX, &index);
    let record = pull_for(&fake, "forge/arm", "linux/arm64").await.unwrap();
    assert_eq!(record.manifest.digest, ours_digest);
    assert_eq!(record.platform, "linux/arm64/v8", "as the index names it");
}

#[tokio::test]
async fn bearer_token_flow_with_credentials_from_an_auth_file() {
    let fake = Fake::start().await;
    fake.state.lock().unwrap().basic = Some(("forge".into(), "s3cret".into()));
    let layer = vec![9u8; 2000];
    let (manifest, _, layers) = image_manifest(
        &fake,
        &[(&layer, Plan::Serve(layer.clone()))],
        OCI_MANIFEST,
        OCI_CONFIG,
        OCI_LAYER_GZ,
    );
    fake.manifest("forge/private", "latest", OCI_MANIFEST, &manifest);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let reference = Reference::parse(&format!("{}/forge/private", fake.host())).unwrap();

    // Anonymous: the token endpoint refuses, and so does the pull.
    let err = client()
        .pull(&store, &reference, &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&fake.host()), "{err}");
    assert!(!store.has_blob(&layers[0]));

    // With the login in a Docker config file, the token dance succeeds.
    use base64::Engine as _;
    let auth_file = dir.path().join("config.json");
    std::fs::write(
        &auth_file,
        serde_json::json!({"auths": {
            format!("http://{}", fake.host()): {
                "auth": base64::engine::general_purpose::STANDARD.encode("forge:s3cret")
            }
        }})
        .to_string(),
    )
    .unwrap();
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::with_files([auth_file]),
        ..RegistryConfig::default()
    });
    client.pull(&store, &reference, &|_| {}).await.unwrap();
    assert!(store.has_blob(&layers[0]));
    assert!(
        fake.state
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l == "GET /token")
    );
}

/// A "registry" on loopback that takes every connection and holds it, saying nothing; its
/// `host:port`.
async fn mute_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    host
}

/// A client that tries five times, `read` at most each, within a 3 s answer deadline.
fn impatient_client(read: Duration) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        retry: RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        read_timeout: read,
        answer_deadline: Duration::from_secs(3),
        ..RegistryConfig::default()
    })
}

/// A registry that took the connection and never answered held a pull for every try's read
/// timeout, twice over (the challenge, then the manifest): eleven minutes with the defaults, and
/// the error said only "error sending request". The pull now fails at its answer deadline, naming
/// the registry, the reference and the timeout.
#[tokio::test]
async fn a_registry_that_never_answers_fails_the_pull_at_its_deadline() {
    let host = mute_registry().await;
    // Without the deadline: 2 s for the challenge, then 2 s for each of five tries.
    let client = impatient_client(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{host}/never/answers:1")).unwrap();
    let started = std::time::Instant::now();
    let err = client
        .pull(&store, &reference, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("registry {host}"))
            && err.contains(&format!("{host}/never/answers:1"))
            && err.contains("timed out: no answer within 3s"),
        "{err}"
    );
    // Generous: a guard against waiting on every try again, not a measure of the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

/// C17: a registry that refused the connection was reported as "error sending request for url
/// (...)", reqwest's own words, without why: a down registry looked like a DNS or TLS problem.
/// The cause is said now.
#[tokio::test]
async fn a_refused_connection_says_so() {
    // A port nothing listens on: bound, then closed.
    let host = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        retry: RetryPolicy {
            attempts: 1,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        },
        ..RegistryConfig::default()
    });
    let reference = Reference::parse(&format!("{host}/x:1")).unwrap();
    let err = client
        .fetch_manifest(&reference, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Connection refused"), "{err}");
}

/// C8: `--cache-from` a registry that took the connection and never answered held the build
/// for every try's read timeout: the cache import reads the manifest with `fetch_manifest`,
/// which had no deadline. It now has the pull's.
#[tokio::test]
async fn a_manifest_fetch_from_a_registry_that_never_answers_ends_at_the_deadline() {
    let host = mute_registry().await;
    let client = impatient_client(Duration::from_secs(10));
    let reference = Reference::parse(&format!("{host}/app/cache:main")).unwrap();
    let started = std::time::Instant::now();
    let err = client
        .fetch_manifest(&reference, &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{host}/app/cache:main")) && err.contains("no answer within 3s"),
        "{err}"
    );
    // Generous: without the deadline, 10 s for the challenge and for each of five tries.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// A retry's line said `retrying manifest (attempt 1)` at the time it was shown, which for a pull
/// is counted from that very line: `0.000` two minutes in. The event now carries how long the
/// failed try took.
#[tokio::test]
async fn a_retry_event_says_how_long_the_failed_try_took() {
    let host = mute_registry().await;
    let client = RegistryClient::new(RegistryConfig {
        auth: AuthResolver::anonymous(),
        retry: RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        },
        read_timeout: Duration::from_millis(500),
        answer_deadline: Duration::from_secs(60),
        ..RegistryConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reference = Reference::parse(&format!("{host}/never/answers:1")).unwrap();
    let heard = Mutex::new(Vec::new());
    let _ = client
        .pull(&store, &reference, &|e| {
            if let PullEvent::Retrying { attempt, took, .. } = e {
                heard.lock().unwrap().push((attempt, took));
            }
        })
        .await;
    let heard = heard.into_inner().unwrap();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!(heard[0].0, 1);
    assert!(heard[0].1 >= Duration::from_millis(500), "{heard:?}");
}
