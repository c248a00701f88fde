//! A registry that misbehaves on purpose, for push tests: a tiny HTTP/1.1 server on 127.0.0.1
//! that speaks the upload protocol (POST session, PATCH chunks, PUT with the digest it checks, a
//! mount, DELETE of a session) the way Distribution answers it, logs what it was sent, and can
//! fail a chunk with 500 or refuse sessions with 401/403; and a small image in a store to push.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forge_snapshotter::reference::Reference;
use forge_snapshotter::registry::{
    AuthResolver, BlobKind, PushBlob, PushEvent, PushImage, RegistryClient, RegistryConfig,
};
use forge_snapshotter::retry::RetryPolicy;
use forge_snapshotter::store::{Descriptor, Digest, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Default)]
pub struct State {
    /// `repo@digest` -> bytes the registry holds.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Upload id -> (repo, bytes so far).
    pub uploads: HashMap<String, (String, Vec<u8>)>,
    /// `repo:tag` -> (content type, body).
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    /// "METHOD path" of every request but `GET /v2/`.
    pub log: Vec<String>,
    /// How many times `/v2/` was asked for (a client's probe for a challenge).
    pub probes: usize,
    /// The bytes each `PATCH` and commit (`PUT`) of an upload carried, in order, with the
    /// digest the commit named (`None` for a `PATCH`).
    pub sent: Vec<(&'static str, usize, Option<String>)>,
    /// The `User-Agent` of every request.
    pub agents: std::collections::BTreeSet<String>,
    /// Requests carrying bytes past a blob's first chunk (a `PATCH`, or a commit with its last
    /// bytes) to answer with 500 (a failure mid-blob) before accepting.
    pub fail_later_chunks: usize,
    /// When set, every upload session is refused with this status.
    pub refuse_uploads: Option<u16>,
    pub next_id: u64,
}

impl State {
    /// How many logged requests start with `prefix` ("METHOD path...").
    pub fn count(&self, prefix: &str) -> usize {
        self.log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub async fn start() -> Fake {
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

    pub fn count(&self, prefix: &str) -> usize {
        self.state.lock().unwrap().count(prefix)
    }
}

/// Serves requests on one connection until the client closes it (reqwest keeps connections alive).
pub async fn serve(
    mut conn: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
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

pub type Response = (u16, Vec<(&'static str, String)>, Vec<u8>);

pub fn route(
    st: &mut State,
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/v2/" {
        st.probes += 1;
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
pub struct Built {
    pub _dir: tempfile::TempDir,
    pub store: Store,
    pub image: PushImage,
    pub layer: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn build_image() -> Built {
    // Not all-zero, so a chunk sent twice or out of order changes the digest.
    build_image_of(
        (0..(5u32 << 20) + 123)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    )
}

/// An image of one layer, `layer`, in a store of its own.
pub fn build_image_of(layer: Vec<u8>) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
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
pub async fn push_one(
    built: &Built,
    tag: &Reference,
    sink: &(dyn Fn(PushEvent) + Send + Sync),
) -> Digest {
    client()
        .push(&built.store, &built.image, std::slice::from_ref(tag), sink)
        .await
        .unwrap()
}

pub fn client() -> RegistryClient {
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
