//! The one error style of every vessel crate (Cloud Hypervisor's): an error's message names
//! what failed and never repeats its cause; the cause is its `#[source]`; the whole chain is
//! printed once, at an edge (a log line, a ttrpc status, a binary's exit), with [`chain`].

use std::error::Error;

/// The error and its causes on one line, `what failed: why: why`. A cause whose text the
/// message already holds is not repeated (an error from a crate that still quotes its
/// cause, or a cause that is only carried).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Top {
        #[error("loading the kernel")]
        Load(#[source] Read),
        #[error("old style")]
        Quoting(#[from] std::io::Error),
    }

    #[test]
    fn each_cause_is_printed_once_in_order() {
        let e = Top::Load(Read {
            path: "/k",
            source: std::io::Error::other("no such file"),
        });
        assert_eq!(chain(&e), "loading the kernel: reading /k: no such file");
        let e = Top::Quoting(std::io::Error::other("boom"));
        assert_eq!(chain(&e), "old style: boom");
    }
}
