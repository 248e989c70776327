//! The file the VMM rewrites its counters in (`--metrics-fd`; the format and its rules are
//! `vessel_protocol::vmm_metrics`'s). The runtime opens it in the sandbox's directory and
//! the VMM inherits it, so the jailed VMM needs no path and no socket for it.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{BorrowedFd, RawFd};

use vessel_protocol::vmm_metrics::{encode, VmmMetrics};

/// The inherited fd cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsFileError {
    #[error("--metrics-fd {fd}: not an open fd")]
    NotOpen { fd: RawFd },
    #[error("--metrics-fd {fd}: not a regular file")]
    NotAFile { fd: RawFd },
    #[error("--metrics-fd {fd}")]
    Io {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// The metrics file.
pub struct MetricsFile {
    file: File,
}

impl MetricsFile {
    /// Takes over inherited fd `fd` (a duplicate; the number itself is left alone), which
    /// must be open on a regular file.
    pub fn from_inherited(fd: RawFd) -> Result<MetricsFile, MetricsFileError> {
        // SAFETY: F_GETFD only reads the fd flags of whatever `fd` is; a closed number gives
        // EBADF and nothing else happens.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(MetricsFileError::NotOpen { fd });
        }
        // SAFETY: `fd` is open (checked above; the VMM's startup is single-threaded, so
        // nothing closes it meanwhile) and the borrow ends within this statement.
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|source| MetricsFileError::Io { fd, source })?;
        let file = File::from(owned);
        let meta = file
            .metadata()
            .map_err(|source| MetricsFileError::Io { fd, source })?;
        if !meta.is_file() {
            return Err(MetricsFileError::NotAFile { fd });
        }
        Ok(MetricsFile { file })
    }

    /// Writes `m` over the previous record (one `lseek` and one `write` of a fixed-length
    /// record: syscalls the VMM thread's filter allows).
    pub fn write(&mut self, m: &VmmMetrics) -> std::io::Result<()> {
        let record = encode(m).map_err(std::io::Error::other)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vessel_protocol::vmm_metrics::{decode, RECORD_LEN};

    #[test]
    fn records_replace_each_other_in_place() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = MetricsFile::from_inherited(tmp.as_file().as_raw_fd()).unwrap();
        let mut m = VmmMetrics::default();
        m.vcpu_exits.insert("hlt".into(), 7);
        m.seq = 1;
        f.write(&m).unwrap();
        m.seq = 2;
        m.vcpu_exits.clear();
        f.write(&m).unwrap();
        let bytes = std::fs::read(tmp.path()).unwrap();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(decode(&bytes).unwrap(), m);
    }

    #[test]
    fn only_an_open_regular_file_is_taken() {
        assert!(matches!(
            MetricsFile::from_inherited(-1),
            Err(MetricsFileError::NotOpen { .. })
        ));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            MetricsFile::from_inherited(r.as_raw_fd()),
            Err(MetricsFileError::NotAFile { .. })
        ));
    }
}
