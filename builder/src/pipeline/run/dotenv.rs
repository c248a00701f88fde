//! GitLab's `artifacts: reports: dotenv:`: a job writes `KEY=VALUE` lines to a file, and the
//! jobs that receive its artifacts get those variables, over their own (GitLab's precedence).
//! The file travels in the job's artifacts layer, so a later job's key follows its content.

use std::io::Read;

use forge_snapshotter::store::Store;

use super::{Runner, artifacts};
use crate::ops::Artifacts;
use crate::pipeline::JobPlan;

/// Variables, in order.
type Vars = Vec<(String, String)>;

/// Most variables one job passes on, as GitLab's default limit for a self-managed instance.
const MAX_VARIABLES: usize = 150;
/// Largest dotenv file read.
const MAX_BYTES: u64 = 64 << 10;

/// The variables of the dotenv files `paths` (absolute in the job's filesystem; `written`, as the
/// file names them) in what the job left (`taken`), in order, and what was wrong with their
/// lines (each said in the job's log).
pub fn read(
    store: &Store,
    taken: &Artifacts,
    paths: &[String],
    written: &[String],
) -> Result<(Vars, Vec<String>), String> {
    let blob = store
        .open_blob(&taken.digest)
        .map_err(|e| format!("artifacts blob {}: {e}", taken.digest))?;
    let mut texts: Vec<Option<String>> = vec![None; paths.len()];
    let mut archive = tar::Archive::new(std::io::BufReader::new(blob));
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = format!("/{}", String::from_utf8_lossy(&entry.path_bytes()));
        let Some(i) = paths.iter().position(|p| *p == name) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(MAX_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("dotenv {name}: {e}"))?;
        texts[i] = Some(text);
    }
    let mut vars = Vec::new();
    let mut said = Vec::new();
    for (path, text) in written.iter().zip(texts) {
        let Some(text) = text else {
            said.push(format!(
                "forge: warning: reports: dotenv: {path}: no such file"
            ));
            continue;
        };
        let (v, bad) = parse(&text);
        said.extend(
            bad.into_iter()
                .map(|b| format!("forge: warning: reports: dotenv: {path}: {b}")),
        );
        for (k, value) in v {
            vars.retain(|(o, _): &(String, String)| *o != k);
            vars.push((k, value));
        }
    }
    if vars.len() > MAX_VARIABLES {
        said.push(format!(
            "forge: warning: reports: dotenv: {} variables; the first {MAX_VARIABLES} are passed on",
            vars.len()
        ));
        vars.truncate(MAX_VARIABLES);
    }
    Ok((vars, said))
}

impl Runner {
    /// The variables of `plan`'s dotenv files (`written`, relative to `workdir`) in what its run
    /// left; what was wrong with them is said in its log, and a file that cannot be read passes
    /// nothing on.
    pub(super) async fn read_dotenv(
        &self,
        plan: &JobPlan,
        workdir: &str,
        written: &[String],
        taken: &Artifacts,
    ) -> Vars {
        let paths = artifacts::absolute_all(workdir, written);
        let (store, taken, written) = (
            self.session.store().clone(),
            taken.clone(),
            written.to_vec(),
        );
        let (vars, said) =
            tokio::task::spawn_blocking(move || read(&store, &taken, &paths, &written))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
                .unwrap_or_else(|e| {
                    (
                        Vec::new(),
                        vec![format!("forge: warning: reports: dotenv: {e}")],
                    )
                });
        self.say_masked(plan, said);
        vars
    }
}

/// `KEY=VALUE` lines (the value as written, quotes and all, as GitLab keeps it); blank lines and
/// `#` comments are passed over, and a line that is no assignment is said.
fn parse(text: &str) -> (Vars, Vec<String>) {
    let mut vars = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if is_name(k) => vars.push((k.to_string(), v.to_string())),
            _ => bad.push(format!("line {} is not KEY=VALUE, left out", n + 1)),
        }
    }
    (vars, bad)
}

fn is_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_assignments_and_the_rest_is_said() {
        let (vars, bad) = parse(
            "VERSION=1.2.3\n\n# built by ci\nURL=https://x.example/a=b\nQUOTED=\"a b\"\nnot a line\n1BAD=x\n",
        );
        assert_eq!(
            vars,
            [
                ("VERSION".to_string(), "1.2.3".to_string()),
                ("URL".to_string(), "https://x.example/a=b".to_string()),
                ("QUOTED".to_string(), "\"a b\"".to_string()),
            ]
        );
        assert_eq!(
            bad,
            [
                "line 6 is not KEY=VALUE, left out",
                "line 7 is not KEY=VALUE, left out"
            ]
        );
    }
}
