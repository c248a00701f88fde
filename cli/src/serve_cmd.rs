//! `forge serve`: the CLI reads flags, loads serve.yaml, opens the session the builds share, and
//! hands them to the server library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::build_cmd::SessionArgs;
use crate::{Failure, failed};

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The server's configuration: projects, triggers, secrets, notifications.
    #[arg(long, value_name = "FILE", default_value = "serve.yaml")]
    config: PathBuf,
    /// Where to listen (default: the file's `listen:`, else 127.0.0.1:8420). Anything but
    /// loopback is reachable from other machines.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Most builds at once over every project (default: the file's `max_builds:`, else 2); the
    /// rest wait in order, one build per project at a time.
    #[arg(long, value_name = "N")]
    max_builds: Option<usize>,
    /// Validate the configuration and print what it serves, without serving.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    session: SessionArgs,
}

impl ServeArgs {
    pub(crate) fn check_only(&self) -> bool {
        self.check
    }
}

pub(crate) fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let mut config = forge_server::config::load(&args.config).map_err(failed)?;
    if let Some(l) = args.listen {
        if config.base_url == format!("http://{}", config.listen) {
            config.base_url = format!("http://{l}");
        }
        config.listen = l;
    }
    if let Some(n) = args.max_builds {
        if n == 0 {
            return Err(crate::usage(
                "error: --max-builds must be at least 1".into(),
            ));
        }
        config.max_builds = n;
    }
    if args.check {
        outln!(
            "{}: listening on {}, {} builds at once",
            args.config.display(),
            config.listen,
            config.max_builds
        );
        for p in &config.projects {
            let triggers: Vec<&str> = p.triggers.iter().map(|t| t.as_str()).collect();
            outln!(
                "project {}: {} ({})",
                p.name,
                p.shown_repo(),
                triggers.join(", ")
            );
        }
        for line in forge_server::describe(&config) {
            outln!("{line}");
        }
        return Ok(());
    }
    let root = crate::run_cmd::store_root(&args.session.root)?;
    let session = args.session.open(&root)?;
    // A server says at its start how its steps are isolated (and fails there if nothing works),
    // not after whichever build first runs a step.
    session
        .isolation()
        .get()
        .map_err(|e| failed(format!("error: {e}")))?;
    crate::build_cmd::note_isolation(&session);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    runtime
        .block_on(forge_server::serve(config, session, &root))
        .map_err(failed)
}
