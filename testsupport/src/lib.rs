//! forge's test harness, one copy for every crate's tests: the skip-or-require checks for what a test
//! needs from the machine (root, a static busybox, the registry, containerd, the rootless user, tools,
//! the shared conformance data), the base images CI pushes, scratch directories, busybox contexts and
//! root filesystems, and the redaction filters of the CLI's snapshot tests.
//!
//! A check returns the thing (or `true`) when the machine has it. When it does not, the test prints
//! `SKIP: <reason>` and returns early, so that a plain `cargo test` on a bare machine passes and says
//! what it did not run; under `FORGE_E2E=require` (set by `.ci/run`) the check panics instead, so that
//! CI cannot pass by skipping.
//!
//! ```no_run
//! # fn test() {
//! if !forge_testsupport::root_and_busybox("RUN steps with the embedded runner") {
//!     return;
//! }
//! let Some(registry) = forge_testsupport::registry() else { return };
//! # let _ = registry;
//! # }
//! ```
//!
//! Dev-only: the other crates list it under `[dev-dependencies]`, and it depends on none of them.

mod check;
mod fixture;
mod git;
mod net;
mod private_registry;
pub mod snapshot;

pub use check::{
    BUSYBOX, Docker, IdRange, TestUser, busybox, busybox_image, conformance, containerd,
    debian_image, docker, image_from_env, is_root, missing, on_path, prerequisite, registry,
    registry_answers, required, root, root_and_busybox, run, skip, test_user, tool, user_ids,
    workspace_root,
};
pub use fixture::{
    BUSYBOX_BASE, Context, copy_exe, install_busybox, install_exe, scratch, scratch_in, set_xattr,
    shared_scratch, unique, walk,
};
pub use git::GitDaemon;
pub use net::{free_port, wait_listening};
pub use private_registry::{
    AUTH_PASSWORD, AUTH_USER, AuthRegistry, PrivateRegistry, Served, auth_registry,
    private_registry,
};
