//! What a command can fail with. The messages that podman, Docker and conmon match on are
//! runc's own (libcontainer's `ErrExist`/`ErrNotExist` and the lifecycle refusals); every
//! failure exits with status 1, as runc's do.

use std::path::PathBuf;

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("container with given ID already exists")]
    Exists,
    #[error("container does not exist")]
    NotExist,
    #[error(transparent)]
    InvalidId(#[from] vessel_protocol::ids::IdError),
    /// A request the container's state does not allow (start twice, delete while running…).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    /// The runtime's pod operation failed.
    #[error("{context}")]
    Pod {
        context: String,
        #[source]
        source: Box<vessel_runtime::pod::PodError>,
    },
    #[error("vessel configuration")]
    Config(#[source] Box<vessel_runtime::config::ConfigError>),
    /// The container's holder process answered with an error (its message, as it said it).
    #[error("{0}")]
    Holder(String),
    /// The holder is gone or does not answer.
    #[error("container {id}: its holder process (pid {pid}) is gone")]
    HolderGone { id: String, pid: i32 },
    #[error("container {id}: talking to its holder process")]
    Control {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> CliError {
        move |source| CliError::Sys { what, source }
    }
}
