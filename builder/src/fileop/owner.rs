//! `--chown` and stage users: `user[:group]` as ids or names, names looked up in the destination
//! filesystem's `/etc/passwd` and `/etc/group` (resolved inside its root) as BuildKit does.

use std::path::Path;

use super::FileOpError;
use super::root::resolve;

/// A numeric owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Resolves `owner` against the filesystem at `root`: a numeric user without a group gets the same
/// number as group, a named user without a group gets its primary group.
pub(crate) fn resolve_owner(root: &Path, owner: Option<&str>) -> Result<Option<Ids>, FileOpError> {
    let Some(owner) = owner.filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let err = |reason: String| FileOpError::Owner {
        owner: owner.to_string(),
        reason,
    };
    let (user, group) = match owner.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (owner, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let entry = lookup(root, "/etc/passwd", user).map_err(err)?;
            let field = |i: usize| entry.get(i).and_then(|f| f.parse::<u32>().ok());
            match (field(2), field(3)) {
                (Some(u), Some(g)) => (u, g),
                _ => return Err(err(format!("malformed passwd entry for {user}"))),
            }
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let entry = lookup(root, "/etc/group", g).map_err(err)?;
                entry
                    .get(2)
                    .and_then(|f| f.parse::<u32>().ok())
                    .ok_or_else(|| err(format!("malformed group entry for {g}")))?
            }
        },
    };
    Ok(Some(Ids { uid, gid }))
}

/// The `:`-separated fields of the line of `file` (inside `root`) whose first field is `name`.
fn lookup(root: &Path, file: &str, name: &str) -> Result<Vec<String>, String> {
    let p = resolve(root, file, true).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&p).map_err(|e| format!("reading {file}: {e}"))?;
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(name))
        .ok_or_else(|| format!("no entry named {name} in {file}"))
}
