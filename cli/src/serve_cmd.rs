//! `forge serve`: the CLI reads flags, loads serve.yaml, opens the session the builds share, and
//! hands them to the server library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::build_cmd::{IsolationArg, RunnerArg, open_session};
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
    /// What runs the steps and jobs.
    #[arg(long, value_enum, default_value = "embedded")]
    runner: RunnerArg,
    /// How the embedded runner isolates steps and jobs (auto: the best that works here).
    #[arg(long, value_enum, env = "FORGE_ISOLATION", default_value = "auto")]
    isolation: IsolationArg,
    /// containerd's socket for --runner containerd (default $CONTAINERD_ADDRESS).
    #[arg(long, value_name = "SOCKET")]
    containerd_address: Option<PathBuf>,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// The store directory (default as for forge build); the server's records are in its
    /// `serve/` folder.
    #[arg(long, env = "FORGE_ROOT")]
    root: Option<PathBuf>,
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
        println!(
            "{}: listening on {}, {} builds at once",
            args.config.display(),
            config.listen,
            config.max_builds
        );
        for p in &config.projects {
            let triggers: Vec<&str> = p
                .triggers
                .iter()
                .map(|t| match t {
                    forge_server::config::TriggerName::Push => "push",
                    forge_server::config::TriggerName::Tag => "tag",
                    forge_server::config::TriggerName::Keyword => "keyword",
                    forge_server::config::TriggerName::Api => "api",
                    forge_server::config::TriggerName::Registry => "registry",
                })
                .collect();
            println!("project {}: {} ({})", p.name, p.repo, triggers.join(", "));
        }
        return Ok(());
    }
    let root = match &args.root {
        Some(r) => r.clone(),
        None => {
            forge_snapshotter::store::default_root().map_err(|e| failed(format!("error: {e}")))?
        }
    };
    let session = open_session(
        Some(&root),
        &args.insecure,
        args.runner,
        args.isolation,
        args.containerd_address.as_ref(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    runtime
        .block_on(forge_server::serve(config, session, &root))
        .map_err(failed)
}
