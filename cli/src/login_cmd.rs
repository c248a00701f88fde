//! `forge login` and `forge logout`: a registry login, tried on the registry first, kept where
//! `docker login` keeps it (Docker's config.json, or the credential helper that file names), so
//! that docker, podman (which reads Docker's file last) and forge's own pulls and pushes find it.

use std::io::{BufRead, IsTerminal, Read, Write};

use clap::Args;
use forge_snapshotter::registry::{
    AuthResolver, Credential, DockerConfig, LoginStore, RegistryClient, RegistryConfig,
};

use crate::{Failure, failed, usage};

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// The registry: `host[:port]` or a URL naming it (`https://host/`); default Docker Hub.
    server: Option<String>,
    /// The user name (asked for on a terminal when not given).
    #[arg(short, long)]
    username: Option<String>,
    /// The password or token. Other users of this machine can see it in the process list:
    /// prefer --password-stdin.
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password or token from standard input (one line; needs --username).
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    /// A registry (`host[:port]`) that may be reached over plain http; loopback always may.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
}

#[derive(Args)]
pub(crate) struct LogoutArgs {
    /// The registry: `host[:port]` or a URL naming it; default Docker Hub.
    server: Option<String>,
}

/// The registry a SERVER argument names, as references name it (`docker.io` for Docker Hub's
/// several names); a repository path is refused, as `docker login` refuses it.
fn registry_of(server: Option<&str>) -> Result<String, Failure> {
    let Some(server) = server else {
        return Ok(forge_snapshotter::reference::DOCKER_HUB.to_string());
    };
    let registry = forge_snapshotter::registry::server_registry(server);
    if registry.is_empty() || registry.contains('/') {
        return Err(usage(format!(
            "error: {server:?} is not a registry: give host[:port] (or a URL naming only the host)"
        )));
    }
    Ok(registry)
}

fn docker_config() -> Result<DockerConfig, Failure> {
    DockerConfig::from_env().ok_or_else(|| {
        failed(
            "error: neither DOCKER_CONFIG nor HOME is set: there is no Docker config file to keep the login in"
                .into(),
        )
    })
}

/// `forge login [SERVER]`: the credentials are tried on the registry, then stored.
pub(crate) fn login(args: &LoginArgs) -> Result<(), Failure> {
    let registry = registry_of(args.server.as_deref())?;
    let config = docker_config()?;
    let (username, password) = credentials(args)?;
    let client = RegistryClient::new(RegistryConfig {
        insecure: args.insecure.clone(),
        ..RegistryConfig::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("error: cannot start the async runtime: {e}")))?;
    runtime
        .block_on(client.check_login(&registry, &username, &password))
        .map_err(|e| failed(format!("error: login: {e}")))?;
    let stored = config.store(&registry, &username, &password).map_err(|e| {
        failed(format!(
            "error: login to {registry} accepted, but not stored: {e}"
        ))
    })?;
    if let LoginStore::File(path) = &stored {
        errln!(
            "warning: the password is stored unencrypted in {} (a credential helper, \"credsStore\" in that file, keeps it elsewhere)",
            path.display()
        );
    }
    warn_if_shadowed(&registry, config.path(), &username, &password);
    outln!("Login Succeeded");
    Ok(())
}

/// podman's files are read before Docker's: a login kept there for the same registry wins, and the
/// one just stored would go unused. Say so.
fn warn_if_shadowed(registry: &str, docker_file: &std::path::Path, user: &str, password: &str) {
    let stored = Credential::Basic {
        username: user.to_string(),
        password: password.to_string(),
    };
    for file in AuthResolver::from_env().files() {
        if file == docker_file {
            break;
        }
        let found = AuthResolver::with_files([file.clone()]).credential(registry, "");
        if let Ok(Some(other)) = found
            && other != stored
        {
            errln!(
                "warning: {} holds another login for {registry}, and forge and podman read it first; remove it there (podman logout) for this one to be used",
                file.display()
            );
        }
    }
}

/// The user name and password: flags, standard input, or a prompt on the terminal.
fn credentials(args: &LoginArgs) -> Result<(String, String), Failure> {
    let terminal = std::io::stdin().is_terminal();
    if args.password_stdin {
        let Some(user) = args.username.clone() else {
            return Err(usage(
                "error: --password-stdin needs --username (standard input holds the password)"
                    .into(),
            ));
        };
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            failed(format!(
                "error: reading the password from standard input: {e}"
            ))
        })?;
        let password = text
            .strip_suffix('\n')
            .unwrap_or(&text)
            .trim_end_matches('\r');
        return non_empty(user, password.to_string());
    }
    if args.password.is_some() {
        errln!(
            "warning: a password given with -p can be seen in the process list; prefer --password-stdin"
        );
    }
    let user = match &args.username {
        Some(u) => u.clone(),
        None if terminal => prompt("Username: ", true)?,
        None => {
            return Err(usage(
                "error: no --username, and standard input is not a terminal to ask on".into(),
            ));
        }
    };
    let password = match &args.password {
        Some(p) => p.clone(),
        None if terminal => prompt("Password: ", false)?,
        None => {
            return Err(usage(
                "error: no password: give --password-stdin (standard input is not a terminal to ask on)"
                    .into(),
            ));
        }
    };
    non_empty(user, password)
}

fn non_empty(user: String, password: String) -> Result<(String, String), Failure> {
    if user.is_empty() {
        return Err(usage("error: the username is empty".into()));
    }
    if password.is_empty() {
        return Err(usage("error: the password is empty".into()));
    }
    Ok((user, password))
}

/// Asks on the terminal (stderr), reading one line; `echo` false hides what is typed.
fn prompt(question: &str, echo: bool) -> Result<String, Failure> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let saved = if echo {
        None
    } else {
        tcgetattr(&stdin).ok().inspect(|t| {
            let mut quiet = t.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        })
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
        errln!();
    }
    read.map_err(|e| failed(format!("error: reading from the terminal: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `forge logout [SERVER]`: the stored login goes (from Docker's file, or its credential helper).
pub(crate) fn logout(args: &LogoutArgs) -> Result<(), Failure> {
    let registry = registry_of(args.server.as_deref())?;
    let config = docker_config()?;
    let key = DockerConfig::key(&registry);
    match config
        .erase(&registry)
        .map_err(|e| failed(format!("error: logout from {registry}: {e}")))?
    {
        Some(from) => outln!("Removing login credentials for {key} (from {from})"),
        None => outln!("Not logged in to {key}"),
    }
    Ok(())
}
