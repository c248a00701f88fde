//! forge-builder: what a build means.
//!
//! Data flows one way through this crate: a frontend (Dockerfile today, forge.yaml later) parses its
//! input and lowers it to a content-addressed [`graph`]; the solver walks that graph against a cache and
//! hands steps to the runner; exporters turn the result into an image.

pub mod context;
pub mod driver;
pub mod export;
pub mod fileop;
pub mod frontend;
pub mod graph;
pub mod solver;
