//! The connection to containerd: a tonic channel over the unix socket plus the two headers every call
//! carries, the namespace and (when the build holds one) the lease that protects its resources from
//! containerd's garbage collector.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::ContainerdError;

/// containerd deletes an expired lease on its next GC pass, so a forge that crashed mid-build does not
/// pin its snapshots forever.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// A channel to containerd bound to a namespace and, optionally, a lease. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Connection {
    /// Connects to the gRPC socket at `address`; the first call fails if containerd does not answer.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let channel = containerd_client::connect(address)
            .await
            .map_err(|source| ContainerdError::Connect {
                address: address.to_path_buf(),
                source,
            })?;
        Ok(Connection {
            channel,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn lease(&self) -> Option<&str> {
        self.lease.as_deref()
    }

    /// The same channel whose calls attach what they create to `lease`.
    pub fn with_lease(&self, lease: &Lease) -> Self {
        Connection {
            lease: Some(lease.id.clone()),
            ..self.clone()
        }
    }

    /// Wraps a message with the namespace and lease headers containerd reads.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            metadata.insert("containerd-namespace", ns);
        }
        if let Some(lease) = self
            .lease
            .as_deref()
            .and_then(|l| MetadataValue::try_from(l).ok())
        {
            metadata.insert("containerd-lease", lease);
        }
        request
    }

    /// Creates a lease that expires after `ttl` unless deleted earlier.
    pub async fn create_lease(&self, id: &str, ttl: Duration) -> Result<Lease, ContainerdError> {
        let expire = rfc3339(SystemTime::now() + ttl);
        let labels = HashMap::from([(LEASE_EXPIRE_LABEL.to_string(), expire)]);
        let mut leases = LeasesClient::new(self.channel());
        let response = leases
            .create(self.request(CreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(|s| ContainerdError::rpc(format!("create lease {id}"), s))?;
        let id = response
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_else(|| id.to_string());
        Ok(Lease { id })
    }

    /// Deletes a lease; what only it referenced becomes garbage. `sync` waits for the collection.
    pub async fn delete_lease(&self, lease: Lease, sync: bool) -> Result<(), ContainerdError> {
        let mut leases = LeasesClient::new(self.channel());
        match leases
            .delete(self.request(DeleteRequest {
                id: lease.id.clone(),
                sync,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc(
                format!("delete lease {}", lease.id),
                s,
            )),
        }
    }
}

/// A containerd lease held by forge: snapshots, content and ingests created with it stay until it is
/// deleted (or expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
}

/// `time` as RFC 3339 UTC with second precision, the form containerd's lease labels parse.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29 is the leap day a naive century rule gets wrong.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)),
            "2000-02-29T01:01:01Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }
}
