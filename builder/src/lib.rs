//! forge-builder: what a build means.
//!
//! Data flows one way through this crate: a frontend (Dockerfile; forge.yaml in [`pipeline`]) parses its
//! input and lowers it to a content-addressed [`graph`]; [`source`]s bring in what the graph reads
//! from outside (base images, the context, downloads); the [`solver`] walks the graph against its
//! cache and hands each vertex to the [`ops`], which run file operations ([`fileop`]) in process and
//! RUN steps through the runner on snapshots; [`export`] turns the result into an image, a tar or
//! files and pushes it. The [`api`] runs that sequence for one [`api::BuildRequest`] and streams
//! [`events`].

pub mod api;
pub mod cache_io;
pub mod events;
pub mod export;
pub mod fileop;
pub mod frontend;
pub mod gc;
pub mod graph;
pub mod mask;
pub mod ops;
pub mod pipeline;
use forge_snapshotter::replace;
pub mod scratch;
pub mod slashpath;
pub mod solver;
pub mod source;

pub use api::{BuildError, BuildFailure, BuildOutcome, BuildRequest, Session, SessionOptions};
pub use events::{BuildEvent, BuildId, EventRecord, Events};
