//! Snapshots kept in containerd (its Snapshots service, `overlayfs` by default), so that a build run with
//! `--runner containerd` can keep its root filesystems where containerd's tools and GC see them.

use std::collections::HashMap;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Kind, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_client::types::Mount as ProtoMount;
use forge_snapshotter::Mount;

use super::{Connection, ContainerdError};

/// Snapshot lifecycle in containerd, the same as its snapshotter interface:
///
/// 1. [`prepare`](Self::prepare) an *active* snapshot `key` on top of a committed `parent` (empty parent:
///    an empty filesystem) and get the mounts that assemble it;
/// 2. mount them (or hand them to a task as its rootfs) and change the files;
/// 3. [`commit`](Self::commit) the active snapshot under a `name`: it becomes read-only and can be the
///    parent of further snapshots; the active `key` is gone;
/// 4. [`remove`](Self::remove) a snapshot that has no children when it is no longer needed.
///
/// [`view`](Self::view) gives a read-only active snapshot of a parent, to read it without copying.
/// Snapshots created through a [`Connection`] holding a lease belong to that lease: deleting the lease
/// lets containerd collect whatever nothing else references.
#[derive(Clone, Debug)]
pub struct ContainerdSnapshots {
    conn: Connection,
    snapshotter: String,
}

/// What containerd knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// Empty for a snapshot with no parent.
    pub parent: String,
    pub kind: SnapshotKind,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
    Unknown,
}

/// Disk used by a snapshot itself, not counting its parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotUsage {
    pub size: i64,
    pub inodes: i64,
}

impl ContainerdSnapshots {
    pub fn new(conn: Connection, snapshotter: impl Into<String>) -> Self {
        ContainerdSnapshots {
            conn,
            snapshotter: snapshotter.into(),
        }
    }

    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    fn client(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.conn.channel())
    }

    /// Creates the active snapshot `key` on `parent` ("" for none) and returns its mounts.
    pub async fn prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>, ContainerdError> {
        let response = self
            .client()
            .prepare(self.conn.request(PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| {
                ContainerdError::rpc(format!("prepare snapshot {key} on {parent:?}"), s)
            })?;
        Ok(from_proto_mounts(response.into_inner().mounts))
    }

    /// Creates a read-only snapshot `key` of `parent` and returns its mounts.
    pub async fn view(&self, key: &str, parent: &str) -> Result<Vec<Mount>, ContainerdError> {
        let response = self
            .client()
            .view(self.conn.request(ViewSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("view snapshot {key} of {parent:?}"), s))?;
        Ok(from_proto_mounts(response.into_inner().mounts))
    }

    /// The mounts of an existing active or view snapshot.
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, ContainerdError> {
        let response = self
            .client()
            .mounts(self.conn.request(MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("mounts of snapshot {key}"), s))?;
        Ok(from_proto_mounts(response.into_inner().mounts))
    }

    /// Commits the active snapshot `key` as `name`, with `labels` on the committed snapshot.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        self.client()
            .commit(self.conn.request(CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: name.to_string(),
                key: key.to_string(),
                labels,
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("commit snapshot {key} as {name}"), s))?;
        Ok(())
    }

    /// Removes a snapshot; containerd refuses while it has children.
    pub async fn remove(&self, key: &str) -> Result<(), ContainerdError> {
        self.client()
            .remove(self.conn.request(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("remove snapshot {key}"), s))?;
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> Result<SnapshotInfo, ContainerdError> {
        let response = self
            .client()
            .stat(self.conn.request(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("stat snapshot {key}"), s))?;
        let info = response.into_inner().info.unwrap_or_default();
        let kind = match info.kind() {
            Kind::View => SnapshotKind::View,
            Kind::Active => SnapshotKind::Active,
            Kind::Committed => SnapshotKind::Committed,
            Kind::Unknown => SnapshotKind::Unknown,
        };
        Ok(SnapshotInfo {
            name: info.name,
            parent: info.parent,
            kind,
            labels: info.labels,
        })
    }

    pub async fn usage(&self, key: &str) -> Result<SnapshotUsage, ContainerdError> {
        let response = self
            .client()
            .usage(self.conn.request(UsageRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("usage of snapshot {key}"), s))?
            .into_inner();
        Ok(SnapshotUsage {
            size: response.size,
            inodes: response.inodes,
        })
    }
}

pub(crate) fn from_proto_mounts(mounts: Vec<ProtoMount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            kind: m.r#type,
            source: m.source.into(),
            options: m.options,
        })
        .collect()
}

pub(crate) fn to_proto_mounts(mounts: &[Mount]) -> Vec<ProtoMount> {
    mounts
        .iter()
        .map(|m| ProtoMount {
            r#type: m.kind.clone(),
            source: m.source.to_string_lossy().into_owned(),
            target: String::new(),
            options: m.options.clone(),
        })
        .collect()
}
