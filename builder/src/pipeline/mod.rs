//! Pipelines (forge.yaml): what a run of builds and test jobs needs besides the build itself.

pub mod git;
pub mod history;
pub mod junit;
