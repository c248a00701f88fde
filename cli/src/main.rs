//! The `forge` binary: argument parsing and error rendering over forge-builder. Thin by design: it
//! reads files, calls the frontend, and prints; meaning lives in the library.
//!
//! Exit codes: 0 success, 1 a build or parse error, 2 a usage error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use forge_builder::api::input::{Cap, DOCKERFILE};
use forge_builder::frontend::dockerfile::ast::Span;
use forge_builder::frontend::dockerfile::lower::{LowerOptions, lower};
use forge_builder::frontend::dockerfile::{dump, parser};
use forge_builder::frontend::dockerignore::{self, Dockerignore};
use forge_builder::graph::Platform;

/// `println!` that a closed standard output does not make panic: a build or run whose reader went
/// away (`| head -1`, `| true`) still did its work, and ends as it would have; a listing command
/// ends quietly at its first write (SIGPIPE, see `main`). Any other failure to write is said.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that a closed standard output does not make panic (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out(format_args!($($arg)*))
    };
}

/// `eprintln!` that a closed standard error does not make panic (`forge build 2>&1 | head`): the
/// build goes on to its end, and its result, where nobody reads its words.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The static (musl) binary's allocator, the one forge's image ships: musl's own is slow where
/// threads allocate at once, and a no-op rebuild of a 10,000-file context (walked on a thread
/// per core) took 44 ms with it and takes 28 ms with mimalloc (peak RSS 22 and 40 MiB).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod build_cmd;
mod build_flags;
mod check_cmd;
mod image_cmd;
mod info_cmd;
mod login_cmd;
mod progress;
mod run_cmd;
mod run_plan;
mod serve_cmd;
mod store_cmd;

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "A daemonless, rootless OCI image builder"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse a Dockerfile and report its syntax errors (file:line:column).
    Parse {
        /// Print BuildKit's AST dump.
        #[arg(long)]
        dump: bool,
        /// The Dockerfile to parse.
        file: PathBuf,
    },
    /// Print the build graph a Dockerfile lowers to.
    Graph(GraphArgs),
    /// Build an image from a Dockerfile: solve, export, push.
    Build(Box<build_cmd::BuildArgs>),
    /// Pull an image from a registry into the local store.
    Pull(store_cmd::PullArgs),
    /// Unpack an image from the local store into a directory (rootless: owners mapped through the
    /// user's subordinate ids).
    Unpack(store_cmd::UnpackArgs),
    /// List the images in the local store.
    Images(store_cmd::StoreArgs),
    /// Name an image of the local store a second way.
    Tag(image_cmd::TagArgs),
    /// Push an image of the local store to its registry.
    Push(image_cmd::PushArgs),
    /// Print what the store records of an image: digests, platform, manifest and config.
    Inspect(image_cmd::InspectArgs),
    /// Log in to a registry: the credentials are tried on it, then kept where `docker login`
    /// keeps them ($DOCKER_CONFIG/config.json or ~/.docker/config.json, or its credential helper).
    Login(login_cmd::LoginArgs),
    /// Remove a registry login `forge login` or `docker login` stored.
    Logout(login_cmd::LogoutArgs),
    /// Print forge's version.
    Version,
    /// Print what forge finds here: isolation (user namespace, subordinate ids), snapshotter, the
    /// store and its free space, cgroups, the network, TLS roots, containerd.
    Info(info_cmd::InfoArgs),
    /// Remove an image from the local store (its blobs go at the next prune).
    Rmi {
        image: String,
        #[command(flatten)]
        store: store_cmd::StoreArgs,
    },
    /// Give disk back: build cache records, then the blobs and snapshots nothing needs any more,
    /// partial unpacks, dead builds' leftovers and (with --cache-mounts or --all) cache mounts and
    /// pipeline jobs' caches.
    Prune(store_cmd::PruneArgs),
    /// Run the pipeline of a forge.yaml: build its images, run its jobs on them, push what passed
    /// (`--check` validates it and prints the plan instead).
    Run(run_cmd::RunArgs),
    /// Show an image's history (the steps that made its layers, as `docker history` does), or
    /// without IMAGE the runs of a pipeline (number, commit, result, duration, jobs
    /// ran/cached/failed).
    History(image_cmd::ImageHistoryArgs),
    /// Print a job's stored log from a run (every job's when JOB is not given).
    Logs(run_cmd::LogsArgs),
    /// Look after the store itself.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Serve builds: started by webhooks (GitHub, GitLab, Gitea, Gitee, registries), an API with a
    /// secret and a page's button; their history, live logs and charts on web pages;
    /// notifications when they fail or are fixed.
    Serve(serve_cmd::ServeArgs),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check the store's consistency: blobs against their digests, what images and cache records
    /// reference, snapshots whose directory is gone (their files are not read: a file changed
    /// inside a snapshot by hand is not found), leftovers. Exit 1 when problems remain.
    Check(store_cmd::CheckArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Dot,
}

#[derive(Args)]
pub(crate) struct GraphArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from standard input (build only).
    #[arg(short = 'f', long = "file")]
    pub(crate) file: Option<PathBuf>,
    /// The stage to build (default: the last one).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// A build argument, KEY=VALUE (or KEY, to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(crate) build_args: Vec<String>,
    /// The target platform, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// How `forge graph` and `--dry-run` print the graph: text, json or dot (Graphviz).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// The build context directory; for build, `-` reads a tar (plain or compressed) or a lone
    /// Dockerfile from standard input, as `docker build -` does.
    #[arg(default_value = ".")]
    pub(crate) context: PathBuf,
}

/// A failure, and the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

pub(crate) fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

pub(crate) fn failed(message: String) -> Failure {
    Failure { code: 1, message }
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    if let Err(e) = unsafe { forge_snapshotter::registry::roots::prepare_process() } {
        errln!("warning: cannot provide the bundled CA certificates: {e}");
    }
    let cli = Cli::parse();
    // Commands that only print (a listing read through `| head`) end quietly when the reader
    // goes away, as other command-line tools do, instead of failing on the closed pipe. Builds and
    // runs keep ignoring SIGPIPE: they must clean up whatever their output's reader does.
    if matches!(
        cli.command,
        Command::Parse { .. }
            | Command::Graph(_)
            | Command::Images(_)
            | Command::Inspect(_)
            | Command::History(_)
            | Command::Logs(_)
            | Command::Version
            | Command::Info(_)
    ) {
        // SAFETY: restores the default disposition before any thread starts; no handler runs.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let result = match cli.command {
        Command::Parse { dump, file } => parse_cmd(dump, &file),
        Command::Graph(args) => graph_cmd(&args),
        Command::Build(args) if args.dry_run => graph_cmd(&args.graph),
        Command::Build(args) if args.check => check_cmd::check(&args),
        Command::Build(args)
            if args
                .call
                .or(args.print)
                .is_some_and(|c| c != build_cmd::Call::Build) =>
        {
            match args.call.or(args.print) {
                Some(build_cmd::Call::Check) => check_cmd::check(&args),
                Some(build_cmd::Call::Outline) => check_cmd::outline(&args),
                _ => check_cmd::targets(&args),
            }
        }
        Command::Build(args) => enter_user_namespace().and_then(|()| build_cmd::build(&args)),
        Command::Pull(args) => store_cmd::pull(&args),
        Command::Unpack(args) => enter_user_namespace().and_then(|()| store_cmd::unpack(&args)),
        Command::Images(args) => store_cmd::images(&args),
        Command::Tag(args) => image_cmd::tag(&args),
        Command::Push(args) => image_cmd::push(&args),
        Command::Inspect(args) => image_cmd::inspect(&args),
        Command::Info(args) => info_cmd::info(&args),
        Command::Login(args) => login_cmd::login(&args),
        Command::Logout(args) => login_cmd::logout(&args),
        Command::Version => {
            outln!("forge {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Rmi { image, store } => store_cmd::rmi(&image, &store),
        Command::Prune(args) => enter_user_namespace().and_then(|()| store_cmd::prune(&args)),
        Command::Run(args) if args.check_only() => run_cmd::run(&args),
        Command::Run(args) => enter_user_namespace().and_then(|()| run_cmd::run(&args)),
        Command::History(args) => image_cmd::history(&args),
        Command::Logs(args) => run_cmd::logs(&args),
        Command::Serve(args) if args.check_only() => serve_cmd::serve(&args),
        Command::Serve(args) => enter_user_namespace().and_then(|()| serve_cmd::serve(&args)),
        Command::Store(StoreCommand::Check(args)) => {
            enter_user_namespace().and_then(|()| store_cmd::check(&args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A failure that printed its own report (`build --check`) has nothing to add.
            if !f.message.is_empty() {
                errln!("{}", f.message);
            }
            if let Some(signal) = build_cmd::cancelled_by() {
                return die_by(signal);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Ends a process whose build or run `signal` cancelled (its clean-up done) by that signal, as a
/// command interrupted is expected to end: a shell loop or `make` running forge stops at Ctrl-C
/// only when it sees forge killed by SIGINT, where an exit status of 1 reads as a failed build
/// and the loop goes on to the next. The handlers are back to the default by now. Where the
/// signal does not end the process (forge as a PID namespace's init, which the kernel keeps
/// from signals it has no handler for), it exits with 128 + the signal's number, as a shell
/// reports such a death.
fn die_by(signal: nix::sys::signal::Signal) -> ExitCode {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: restores the default disposition; no handler of ours runs.
    let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    let mut unblock = nix::sys::signal::SigSet::empty();
    unblock.add(signal);
    let _ = unblock.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    ExitCode::from(128 + signal as u8)
}

/// As an ordinary user, enters a user namespace with /etc/subuid and /etc/subgid mapped (namespace
/// root = the caller), so that files keep the image's owners. Must run before any thread starts.
fn enter_user_namespace() -> Result<(), Failure> {
    use forge_runner::embedded::{UserNamespace, enter_user_namespace};
    match enter_user_namespace() {
        Ok(UserNamespace::SingleId { warning, .. }) => {
            errln!("warning: {warning}");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(failed(format!(
            "error: cannot enter a user namespace: {e}\n(as a non-root user forge needs one for \
             any isolation; as root the chroot isolation needs none)\n{}",
            forge_runner::embedded::isolation::SETTINGS
        ))),
    }
}

/// The text file at `path`, at most `cap` bytes of it (`-f /dev/zero` must fail, not fill the
/// memory); the error names the file and the cap.
pub(crate) fn read(path: &Path, cap: Cap) -> Result<String, Failure> {
    forge_builder::api::input::read_file_capped(path, cap)
        .map_err(|e| failed(format!("error: {e}")))
}

/// The Dockerfile at `path`, at most [`DOCKERFILE`]'s cap of it.
pub(crate) fn read_dockerfile(path: &Path) -> Result<String, Failure> {
    read(path, DOCKERFILE)
}

/// The Dockerfile `-f -` gives on standard input, at most [`DOCKERFILE`]'s cap of it.
pub(crate) fn read_stdin_dockerfile() -> Result<String, Failure> {
    forge_builder::api::input::read_text_capped(
        std::io::stdin().lock(),
        DOCKERFILE,
        "the Dockerfile from standard input",
    )
    .map_err(|e| usage(format!("error: {e}")))
}

pub(crate) fn display_name(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn parse_cmd(dump_ast: bool, file: &Path) -> Result<(), Failure> {
    let src = read_dockerfile(file)?;
    let df =
        parser::parse_file(&display_name(file), &src).map_err(|e| failed(format!("error: {e}")))?;
    if dump_ast {
        out!("{}", dump::dump(&df));
    } else {
        outln!(
            "{}: {} instructions, escape {:?}",
            display_name(file),
            df.children.len(),
            df.escape
        );
    }
    Ok(())
}

/// A located error rendered like the parser's: `file:line:col: message`, the line, a caret, a hint.
pub(crate) fn render(
    file: &str,
    src: &str,
    span: Option<Span>,
    message: &str,
    hint: Option<&str>,
) -> String {
    let mut out = match span {
        Some(s) => format!(
            "error: {file}:{}:{}: {message}",
            s.start.line, s.start.column
        ),
        None => format!("error: {file}: {message}"),
    };
    if let Some(s) = span
        && let Some(line) = src.lines().nth(s.start.line.saturating_sub(1))
    {
        let number = s.start.line.to_string();
        let gutter = " ".repeat(number.len());
        let mut caret: String = line
            .chars()
            .take(s.start.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let width = if s.end.line == s.start.line && s.end.column > s.start.column {
            s.end.column - s.start.column
        } else {
            1
        };
        caret.push_str(&"^".repeat(width));
        out.push_str(&format!("\n {number} | {line}\n {gutter} | {caret}"));
    }
    if let Some(h) = hint {
        out.push_str(&format!("\nhint: {h}"));
    }
    out
}

pub(crate) fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some(("", _)) => {
                return Err(usage(format!(
                    "error: invalid --build-arg {a:?}: empty name"
                )));
            }
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            // Docker's `--build-arg KEY`: the value comes from the environment, if set.
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// The `.dockerignore` patterns in force (the Dockerfile's own ignore file first), checked and
/// normalised as Docker reads them.
fn dockerignore_patterns(context: &Path, dockerfile: &Path) -> Result<Vec<String>, Failure> {
    let Some(path) = dockerignore::find_ignore_file(context, dockerfile) else {
        return Ok(Vec::new());
    };
    let ignore =
        Dockerignore::read(&path).map_err(|e| failed(format!("error: {}: {e}", path.display())))?;
    Ok(ignore.patterns().to_vec())
}

fn graph_cmd(args: &GraphArgs) -> Result<(), Failure> {
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let name = display_name(&file);
    let src = read_dockerfile(&file)?;
    let df = parser::parse_file(&name, &src).map_err(|e| failed(format!("error: {e}")))?;
    let target_platform = match &args.platform {
        None => Platform::host(),
        Some(p) => Platform::parse(p).ok_or_else(|| {
            usage(format!(
                "error: invalid --platform {p:?}: expected os/arch[/variant], a known OS or architecture alone, or local"
            ))
        })?,
    };
    let opts = LowerOptions {
        target: args.target.clone(),
        build_args: parse_build_args(&args.build_args)?,
        target_platform,
        dockerignore: dockerignore_patterns(&args.context, &file)?,
        ..LowerOptions::default()
    };
    let lowered = lower(&df, &opts).map_err(|e| {
        failed(render(
            &name,
            &src,
            e.span,
            &e.kind.to_string(),
            e.hint.as_deref(),
        ))
    })?;
    for w in &lowered.warnings {
        errln!("warning: {w}");
    }
    match args.format {
        Format::Text => out!("{}", lowered.graph.to_text()),
        Format::Dot => out!("{}", lowered.graph.to_dot()),
        Format::Json => {
            let json = serde_json::to_string_pretty(&lowered.graph.to_json())
                .map_err(|e| failed(format!("error: cannot render json: {e}")))?;
            outln!("{json}");
        }
    }
    Ok(())
}

/// Writes `args` to standard output: a reader gone away (a broken pipe) is not an error, and any
/// other failure is said once on standard error.
fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().lock().write_fmt(args)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| errln!("warning: writing to standard output: {e}"));
    }
}
