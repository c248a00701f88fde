//! Whether forge runs in a user namespace of its own (rootless). Snapshots (overlay `userxattr`,
//! device nodes), unpack and the runner all ask, so the answer is written here once.

/// Whether this process is in a user namespace other than the initial one (rootless): then
/// overlayfs wants `userxattr` and `user.overlay.*` attributes, mknod of devices is refused, and ids
/// other than the mapped ones cannot be used.
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_initial_uid_map(&map),
        Err(_) => false,
    }
}

/// Whether this process is in a user namespace that maps only one uid (no subordinate range: no
/// `newuidmap` or no /etc/subuid entry). Files of other owners cannot be made there at all; unpack
/// then keeps them as the mapped id (as buildah's `ignore_chown_errors` does). Read once.
pub fn single_id_namespace() -> bool {
    static SINGLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SINGLE.get_or_init(|| match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => is_single_id_map(&map),
        Err(_) => false,
    })
}

fn is_single_id_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    matches!(lines.as_slice(), [f] if f.len() == 3 && f[2] == "1")
}

/// Whether a `/proc/<pid>/uid_map` text is the initial namespace's: one line mapping every id
/// (0 to 2^32 - 1) to itself.
fn is_initial_uid_map(map: &str) -> bool {
    map.split_whitespace().eq(["0", "0", "4294967295"])
}

#[cfg(test)]
mod tests {
    use super::{is_initial_uid_map, is_single_id_map};

    #[test]
    fn a_single_id_map_has_one_line_of_one_id() {
        assert!(is_single_id_map("         0       1000          1\n"));
        assert!(!is_single_id_map(
            "         0       1000          1\n         1     100000      65536\n"
        ));
        assert!(!is_single_id_map("         0          0 4294967295\n"));
    }

    #[test]
    fn only_the_identity_map_of_all_ids_is_the_initial_namespace() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1000          1\n"));
        assert!(!is_initial_uid_map(
            "         0       1000          1\n         1     100000      65536\n"
        ));
        // A namespace that maps all but the last id to itself is still a namespace.
        assert!(!is_initial_uid_map("         0          0 4294967294\n"));
    }
}
