//! Sources: what a build reads from outside its graph before or while it solves. Base images are
//! pulled into the store (`image`), the build context is walked and hashed (`context`), and
//! `ADD <url>` files are downloaded (`http`). Operations (`crate::ops`) read them by name.

pub mod context;
pub mod http;
pub mod image;
mod unpack_ahead;
pub(crate) use unpack_ahead::SnapshotsWhenOpen;

pub use context::{ContextSnapshot, SnapshotOptions};
pub use http::HttpSource;
pub use image::{
    BaseFetch, BaseImage, BaseImages, PullPolicy, lower_with_images, names_no_registry, pull_base,
    stored_env_names,
};
