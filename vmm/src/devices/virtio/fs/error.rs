//! Errors of the virtio-fs device's constructor.

use std::path::PathBuf;

use super::TAG_LEN;

/// Why a [`super::Fs`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(
        "virtio-fs tag {0:?} is invalid: 1 to {TAG_LEN} printable ASCII characters, no spaces or '='"
    )]
    InvalidTag(String),
    #[error("shared directory {path} is not usable")]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("shared directory {0} is not valid UTF-8 (fuse-backend-rs needs a UTF-8 root path)")]
    NonUtf8Path(PathBuf),
    #[error("creating the passthrough file system for {path}")]
    Backend {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating virtio-fs queues or eventfds")]
    EventFd(#[source] std::io::Error),
}

/// Checks a tag: what the guest passes to `mount -t virtiofs <tag>`, and what our CLI splits
/// at the first `=`.
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    let ok = !tag.is_empty()
        && tag.len() <= TAG_LEN
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
    if ok {
        Ok(())
    } else {
        Err(FsError::InvalidTag(tag.to_string()))
    }
}
