//! SSH agent forwarding (`RUN --mount=type=ssh`): a socket in the step directory, owned and moded as
//! the step asked, that forwards each connection to the real agent. Binding the agent's own socket
//! instead would have to chmod the user's socket, as BuildKit's proxy avoids too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::task::JoinHandle;

use super::{MountError, io_err};

/// Listens on `path` and forwards to `agent` until the returned task is aborted.
pub(super) fn proxy(
    path: &Path,
    agent: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<JoinHandle<()>, MountError> {
    let listener =
        tokio::net::UnixListener::bind(path).map_err(io_err("bind ssh proxy socket", path))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))?;
    let agent = agent.to_path_buf();
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&agent).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}
