//! Frontends turn a build description into a [`crate::graph::Graph`].

pub mod dockerfile;
pub mod dockerignore;
pub(crate) mod suggest;
