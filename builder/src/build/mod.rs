//! `forge build` end to end: resolves base images, lowers the Dockerfile, solves the graph with an
//! executor that runs on snapshots (file operations in process, RUN through the runner), turns the
//! result into layers and an image, and exports or pushes it. Progress flows out as [`BuildEvent`]s.

pub mod events;
pub mod http;
pub mod image;
