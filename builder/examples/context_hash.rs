//! Snapshots a build context the way a build does and prints its digest and cost; used by
//! `benches/context.sh`.
//!
//! Usage: `context_hash <context dir> [state dir]` (the `.dockerignore` of the context is honoured;
//! without a state dir no memo is used).

use std::path::Path;
use std::process::ExitCode;

use forge_builder::frontend::dockerignore::{Dockerignore, find_ignore_file};
use forge_builder::source::context::{ContextSnapshot, SnapshotOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first().map(Path::new) else {
        eprintln!("usage: context_hash <context dir> [state dir]");
        return ExitCode::from(2);
    };
    let ignore = match find_ignore_file(root, &root.join("Dockerfile")) {
        Some(p) => match Dockerignore::read(&p) {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let options = SnapshotOptions {
        ignore: ignore.as_ref(),
        state_dir: args.get(1).map(Path::new),
        threads: 0,
    };
    match ContextSnapshot::take(root, &options) {
        Ok(s) => {
            let st = s.stats();
            println!(
                "{} entries={} files_read={} bytes_read={} memo_hits={}{}",
                s.digest(),
                s.entries().len(),
                st.files_read,
                st.bytes_read,
                st.memo_hits,
                st.memo_warning
                    .as_ref()
                    .map(|w| format!(" warning={w:?}"))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
