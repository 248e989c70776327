//! The two socket calls std does not offer: a non-blocking connect to a Unix stream socket (a
//! blocking one would stall the event loop when the listener's backlog is full), and a send
//! that cannot raise SIGPIPE.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Longest path a `sockaddr_un` holds (without its NUL terminator).
pub(crate) const MAX_PATH_LEN: usize = 107;

/// Connects a non-blocking, close-on-exec Unix stream socket to `path`. For AF_UNIX the result
/// is immediate: success, or an error (`EAGAIN` when the backlog is full, `ENOENT`,
/// `ECONNREFUSED`...).
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() > MAX_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a fully initialised sockaddr_un that outlives the call, and `len` is at
    // most its size (the path length was checked above).
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// `send(2)` with `MSG_NOSIGNAL`: a peer that went away yields `EPIPE`, never SIGPIPE (which
/// would kill the VMM if the process did not ignore it).
pub(crate) fn send_nosignal(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid readable buffer of `data.len()` bytes for the duration of the
    // call, and the fd is owned by `stream`, which outlives it.
    let rc = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast::<libc::c_void>(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // `rc` is non-negative and at most `data.len()`.
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn connects_and_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let err = connect_nonblocking(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

        let listener = UnixListener::bind(&path).unwrap();
        let mut c = connect_nonblocking(&path).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // Non-blocking: nothing to read yet.
        let err = c.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        // Sending to a closed peer is an error, not a signal.
        drop(s);
        let err = send_nosignal(&c, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");

        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
