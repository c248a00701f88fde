//! Layer blobs in containerd's content store, and their application onto snapshots through its Diff
//! service: how a base image gets into containerd when a build keeps its root filesystems there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::{
    ApplyRequest, InfoRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::snapshots::to_proto_mounts;
use super::{Connection, ContainerdError, ContainerdSnapshots};

/// Chunk size of a content write; containerd's own client writes in 1 MiB pieces as well.
const WRITE_CHUNK: usize = 1 << 20;

/// A layer blob as the content store and Diff service name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// `application/vnd.oci.image.layer.v1.tar` or `...tar+gzip`; containerd 1.6's differ has no zstd.
    pub media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed, if it is).
    pub digest: String,
    pub size: u64,
}

impl LayerDescriptor {
    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size as i64,
            annotations: HashMap::new(),
        }
    }
}

/// containerd's content store and differ, through one [`Connection`] (whose lease, if any, keeps the
/// written blobs alive).
#[derive(Clone, Debug)]
pub struct ContainerdContent {
    conn: Connection,
}

impl ContainerdContent {
    pub fn new(conn: Connection) -> Self {
        ContainerdContent { conn }
    }

    /// The stored size of `digest`, or `None` when the store does not have it.
    pub async fn size(&self, digest: &str) -> Result<Option<u64>, ContainerdError> {
        let mut client = ContentClient::new(self.conn.channel());
        match client
            .info(self.conn.request(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(Some(
                r.into_inner()
                    .info
                    .map(|i| i.size as u64)
                    .unwrap_or_default(),
            )),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::rpc(format!("content info {digest}"), s)),
        }
    }

    /// Streams `blob` into the content store as `expected` (`sha256:<hex>`, `size` bytes). containerd
    /// verifies the digest and size when it commits the write; a blob it already has is not sent again.
    pub async fn write_blob<R>(
        &self,
        blob: R,
        expected: &str,
        size: u64,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        if let Some(have) = self.size(expected).await? {
            return check_size(expected, size, have);
        }
        // The ingest ref names the upload so that a retry after a crash can find (and reset) it.
        let reference = format!("forge-ingest-{expected}");
        let read_error = Arc::new(Mutex::new(None));
        let requests = write_requests(
            blob,
            reference,
            expected.to_string(),
            size,
            labels,
            read_error.clone(),
        );
        let mut client = ContentClient::new(self.conn.channel());
        let what = || format!("write content {expected}");
        let mut responses = match client.write(self.conn.request(requests)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(ContainerdError::rpc(what(), s)),
        };
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                Err(s) => return Err(ContainerdError::rpc(what(), s)),
            }
        }
        if let Some(source) = read_error.lock().ok().and_then(|mut e| e.take()) {
            return Err(ContainerdError::io(
                "cannot read the blob for",
                expected.to_string(),
                source,
            ));
        }
        match self.size(expected).await? {
            Some(have) => check_size(expected, size, have),
            None => Err(ContainerdError::rpc(
                what(),
                tonic::Status::not_found("the blob is missing after its write was committed"),
            )),
        }
    }

    /// Applies a layer blob already in the content store onto the mounts of an active snapshot and
    /// returns the digest of the uncompressed tar (the layer's diff id).
    pub async fn apply(
        &self,
        layer: &LayerDescriptor,
        mounts: &[forge_snapshotter::Mount],
    ) -> Result<String, ContainerdError> {
        let mut client = DiffClient::new(self.conn.channel());
        let response = client
            .apply(self.conn.request(ApplyRequest {
                diff: Some(layer.to_proto()),
                mounts: to_proto_mounts(mounts),
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("apply layer {}", layer.digest), s))?;
        Ok(response
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default())
    }

    /// Unpacks `layer` on top of the committed snapshot `parent` ("" for none) and commits the result as
    /// `name`; returns the layer's diff id. The temporary active snapshot is removed on failure.
    pub async fn unpack_layer(
        &self,
        snapshots: &ContainerdSnapshots,
        layer: &LayerDescriptor,
        parent: &str,
        name: &str,
    ) -> Result<String, ContainerdError> {
        let key = format!("{name}-extract-{}", std::process::id());
        let mounts = snapshots.prepare(&key, parent).await?;
        let applied = match self.apply(layer, &mounts).await {
            Ok(diff_id) => snapshots
                .commit(name, &key, HashMap::new())
                .await
                .map(|()| diff_id),
            Err(e) => Err(e),
        };
        if applied.is_err() {
            let _ = snapshots.remove(&key).await;
        }
        applied
    }
}

fn check_size(digest: &str, expected: u64, actual: u64) -> Result<(), ContainerdError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ContainerdError::SizeMismatch {
            digest: digest.to_string(),
            expected,
            actual,
        })
    }
}

/// The Write call's request stream: WRITE messages carrying the blob in order, then one COMMIT that
/// names the total and the digest containerd must verify.
fn write_requests<R>(
    blob: R,
    reference: String,
    expected: String,
    total: u64,
    labels: HashMap<String, String>,
    read_error: Arc<Mutex<Option<std::io::Error>>>,
) -> impl futures::Stream<Item = WriteContentRequest> + Send + 'static
where
    R: AsyncRead + Send + Unpin + 'static,
{
    struct State<R> {
        blob: R,
        offset: u64,
        done: bool,
    }
    let state = State {
        blob,
        offset: 0,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| {
        let reference = reference.clone();
        let expected = expected.clone();
        let labels = labels.clone();
        let read_error = read_error.clone();
        async move {
            if st.done {
                return None;
            }
            let mut data = vec![0u8; WRITE_CHUNK];
            let mut filled = 0;
            // A short read is not the end of the blob; fill the chunk unless EOF comes first. A read
            // error ends the stream without a commit, so containerd keeps nothing under the digest.
            while filled < data.len() {
                match st.blob.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        if let Ok(mut slot) = read_error.lock() {
                            *slot = Some(e);
                        }
                        return None;
                    }
                }
            }
            data.truncate(filled);
            let request = if filled == 0 {
                st.done = true;
                WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref: reference,
                    total: total as i64,
                    expected,
                    offset: st.offset as i64,
                    data: Vec::new(),
                    labels,
                }
            } else {
                let offset = st.offset;
                st.offset += filled as u64;
                WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference,
                    total: total as i64,
                    expected,
                    offset: offset as i64,
                    data,
                    labels: HashMap::new(),
                }
            };
            Some((request, st))
        }
    })
    .boxed()
}
