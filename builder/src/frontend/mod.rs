//! Frontends turn a build description into a [`crate::graph::Graph`].

pub mod dockerfile;
pub mod dockerignore;
mod suggest;
