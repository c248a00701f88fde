//! A git server for tests: `git daemon` (git's own, an independent judge: forge fetches with gix)
//! serving the repositories below a folder on a free loopback port, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `git daemon`; `git://127.0.0.1:{port}/NAME` is the repository `NAME` below the
/// folder it serves.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    /// Serves every repository below `repos` and waits until it listens.
    pub fn serve(repos: &Path) -> GitDaemon {
        let port = crate::net::free_port();
        use std::os::unix::process::CommandExt;
        // `git daemon` runs `git-daemon` as its child: both go in a process group of their own,
        // so that stopping the server stops the daemon too (killing `git` alone left it running).
        let child = Command::new("git")
            .process_group(0)
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", repos.display()))
            .arg(repos)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run git daemon");
        crate::net::wait_listening(port, "git daemon", Duration::from_secs(20));
        GitDaemon { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: a plain syscall on the group this server was started in.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}
