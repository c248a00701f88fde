//! forge-snapshotter: filesystem state. The content store, image pull, safe layer unpack, snapshots
//! (overlay, fuse-overlayfs, copy) and the diff of a step's changes into an OCI layer.

pub mod blockgzip;
pub mod compress;
pub mod diff;
pub mod error_text;
pub mod layer;
pub mod lock;
pub mod millis;
pub mod mount;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod replace;
pub mod restamp;
pub mod retry;
pub mod snapshot;
pub mod store;
pub mod unpack;
pub mod userns;
pub mod writeback;

pub use mount::Mount;
