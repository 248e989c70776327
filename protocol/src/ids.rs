//! The one rule for the names that cross the host/guest boundary and become file, cgroup and
//! log names on both sides: container, sandbox and exec ids, and containerd namespaces.

/// Longest id accepted (containerd uses 64 hex chars; CRI-made names are longer).
pub const MAX_ID_LEN: usize = 128;
/// Longest containerd namespace (containerd's own identifier limit).
pub const MAX_NAMESPACE_LEN: usize = 76;

/// A name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown:?}: {reason}")]
pub struct IdError {
    pub what: &'static str,
    /// The offending name, cut to a printable length.
    pub shown: String,
    pub reason: &'static str,
}

fn refuse(what: &'static str, name: &str, reason: &'static str) -> Result<(), IdError> {
    Err(IdError {
        what,
        shown: name.chars().take(MAX_ID_LEN + 8).collect(),
        reason,
    })
}

/// Container, sandbox and exec ids: 1-128 of `[A-Za-z0-9_.-]`, not starting with `.` (so
/// never `.`, `..` or a hidden file), usable as one path component and in log lines.
pub fn check_id(id: &str) -> Result<(), IdError> {
    check_name("id", id)
}

/// [`check_id`] with the kind of name given for the message ("exec id", "sandbox id").
pub fn check_name(what: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return refuse(what, id, "empty");
    }
    if id.len() > MAX_ID_LEN {
        return refuse(what, id, "longer than 128 bytes");
    }
    if id.starts_with('.') {
        return refuse(what, id, "starts with '.'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return refuse(what, id, "only [A-Za-z0-9._-] are allowed");
    }
    Ok(())
}

/// containerd namespaces (containerd's identifier rule): alphanumeric runs joined by single
/// `.`, `_` or `-`, at most 76 bytes.
pub fn check_namespace(ns: &str) -> Result<(), IdError> {
    const WHAT: &str = "containerd namespace";
    if ns.is_empty() {
        return refuse(WHAT, ns, "empty");
    }
    if ns.len() > MAX_NAMESPACE_LEN {
        return refuse(WHAT, ns, "longer than 76 bytes");
    }
    let mut prev_sep = true;
    for b in ns.bytes() {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if !sep && !b.is_ascii_alphanumeric() {
            return refuse(WHAT, ns, "only [A-Za-z0-9._-] are allowed");
        }
        if sep && prev_sep {
            return refuse(WHAT, ns, "separators must sit between alphanumerics");
        }
        prev_sep = sep;
    }
    if prev_sep {
        return refuse(WHAT, ns, "separators must sit between alphanumerics");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for ok in ["abc", "a-b_c.d", "a.", &"f".repeat(128)] {
            check_id(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "a\nb",
            &"x".repeat(129),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
        let e = check_name("exec id", "a/b").unwrap_err();
        assert!(e.to_string().contains("exec id"), "{e}");
    }

    #[test]
    fn namespaces_follow_containerds_rule() {
        for ok in ["default", "k8s.io", "moby", "a-b_c.d", "x1"] {
            check_namespace(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "a b", &"n".repeat(77)] {
            assert!(check_namespace(bad).is_err(), "{bad:?} accepted");
        }
    }
}
