//! Running code inside a network namespace given by path (CNI's `/var/run/netns/<name>`).
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread, so the work runs on a thread of its
//! own, which ends with it: the rest of the runtime never leaves the host's namespace. Fds
//! made there (netlink sockets, the tap) stay bound to that namespace after the thread ends.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Entering a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("thread for network namespace {path}")]
    Thread {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread in network namespace {path} panicked")]
    Panicked { path: String },
}

/// Runs `f` on a new thread inside the network namespace at `path`; its result.
pub fn in_netns<T, E>(path: &Path, f: impl FnOnce() -> Result<T, E> + Send) -> Result<T, E>
where
    T: Send,
    E: From<NetnsError> + Send,
{
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("vessel-netns".into())
            .spawn_scoped(s, move || -> Result<T, E> {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: shown.clone(),
                    source,
                })?;
                f()
            })
            .map_err(|source| NetnsError::Thread {
                path: path.display().to_string(),
                source,
            })?;
        handle.join().unwrap_or_else(|_| {
            Err(NetnsError::Panicked {
                path: path.display().to_string(),
            }
            .into())
        })
    })
}
