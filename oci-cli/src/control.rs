//! The commands ↔ a container's holder: one request and one reply per `SOCK_SEQPACKET`
//! message (JSON), so the kernel keeps message boundaries and an exec's stdio fds travel with
//! its request (`SCM_RIGHTS`). The socket lives in the container's 0700 directory.
//!
//! Exec is the one long conversation: the holder answers `started`, then, on the same
//! connection, the exit status when the process ends.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::socket::{
    bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};

/// The largest message (an exec's process spec is the big one: a few KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// At most stdin, stdout and stderr travel with a request.
pub const MAX_FDS: usize = 3;

/// What a command asks the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Start,
    /// A signal for the init (or, with `all`, every process of the container).
    Kill {
        signal: i32,
        all: bool,
    },
    /// End the container now (`delete` of a created one, `delete --force`).
    Delete,
    Pids,
    Pause,
    Resume,
    /// Run `process` (OCI process JSON). The fds sent with it are, in order, those of the
    /// streams flagged here (with a terminal: one, the pty's slave, for all three).
    Exec {
        exec_id: String,
        process: String,
        terminal: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// A signal for an exec.
    SignalExec {
        exec_id: String,
        signal: i32,
    },
    /// A terminal's new size (`exec_id` "" = the init).
    Resize {
        exec_id: String,
        rows: u16,
        cols: u16,
    },
}

/// The holder's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The error's whole message, if the request failed.
    pub error: Option<String>,
    pub pids: Vec<u32>,
    /// An exec's end: its exit status (the second reply of an exec).
    pub exit_status: Option<u32>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::default()
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            error: Some(message.into()),
            ..Reply::default()
        }
    }
}

/// The address of the socket at `path`. A Unix socket path holds 107 bytes, and engines
/// pick long roots (containerd's runc shim: `<exec-root>/runtime-runc/<ns>/`) for 64-character
/// ids; so the path goes through an `O_PATH` fd of its directory (`/proc/self/fd/N/name`),
/// which the kernel resolves like any path. The fd must live until bind/connect returns.
pub(crate) fn address(path: &Path) -> nix::Result<(UnixAddr, Option<OwnedFd>)> {
    if path.as_os_str().len() < 100 {
        return Ok((UnixAddr::new(path)?, None));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(nix::errno::Errno::ENAMETOOLONG);
    };
    let dir = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    Ok((UnixAddr::new(&short)?, Some(dir)))
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// A listening socket at `path`.
pub fn listen_at(path: &Path) -> nix::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (addr, _dir) = address(path)?;
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// A connection to the socket at `path`.
pub fn connect_to(path: &Path) -> nix::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (addr, _dir) = address(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(conn: BorrowedFd<'_>, message: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message of {} bytes (at most {MAX_MESSAGE})", bytes.len()),
        ));
    }
    let cmsgs = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let iov = [IoSlice::new(&bytes)];
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and the fds that came with it; `None` when the peer hung up. A
/// message that was cut (longer than [`MAX_MESSAGE`]), carried more than [`MAX_FDS`] fds or
/// is not the expected JSON is an error (its fds are closed).
pub fn recv<T: for<'de> Deserialize<'de>>(
    conn: BorrowedFd<'_>,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, raw_fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut raw = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
        }
        (msg.bytes, msg.flags, raw)
    };
    let fds = crate::sys::own_received(raw_fds);
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS {
        return bad(format!(
            "message cut or with too many fds ({} bytes, {} fds)",
            len,
            fds.len()
        ));
    }
    match serde_json::from_slice(&buf[..len]) {
        Ok(m) => Ok(Some((m, fds))),
        Err(e) => bad(format!("malformed message: {e}")),
    }
}

/// Sends `request` and waits for the reply.
pub fn call(conn: &OwnedFd, request: &Request, fds: &[RawFd]) -> std::io::Result<Reply> {
    send(conn.as_fd(), request, fds)?;
    match recv::<Reply>(conn.as_fd())? {
        Some((reply, _)) => Ok(reply),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the holder hung up without answering",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn requests_and_fds_cross_one_message_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.sock");
        let listener = listen_at(&path).unwrap();
        let server = std::thread::spawn(move || {
            let conn = crate::sys::accept(listener.as_fd()).unwrap();
            let (req, fds): (Request, _) = recv(conn.as_fd()).unwrap().unwrap();
            assert_eq!(fds.len(), 1);
            let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
            w.write_all(b"through the fd").unwrap();
            drop(w);
            send(conn.as_fd(), &Reply::ok(), &[]).unwrap();
            let second: Option<(Request, Vec<OwnedFd>)> = recv(conn.as_fd()).unwrap();
            (req, second.map(|(r, _)| r))
        });
        let conn = connect_to(&path).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let req = Request::Exec {
            exec_id: "e1".into(),
            process: "{}".into(),
            terminal: false,
            stdin: false,
            stdout: true,
            stderr: false,
        };
        let reply = call(&conn, &req, &[w.as_raw_fd()]).unwrap();
        drop(w);
        assert_eq!(reply, Reply::ok());
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the fd");
        send(conn.as_fd(), &Request::Start, &[]).unwrap();
        let (first, second) = server.join().unwrap();
        assert_eq!(first, req);
        assert_eq!(second, Some(Request::Start));
    }

    #[test]
    fn a_socket_deeper_than_a_unix_path_allows_still_works() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(64));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("control.sock");
        assert!(path.as_os_str().len() > 108);
        let listener = listen_at(&path).unwrap();
        assert!(path.exists(), "bound at the real path");
        let server = std::thread::spawn(move || {
            let conn = crate::sys::accept(listener.as_fd()).unwrap();
            let got: Option<(Request, Vec<OwnedFd>)> = recv(conn.as_fd()).unwrap();
            got.map(|(r, _)| r)
        });
        let conn = connect_to(&path).unwrap();
        send(conn.as_fd(), &Request::Pids, &[]).unwrap();
        assert_eq!(server.join().unwrap(), Some(Request::Pids));
    }

    #[test]
    fn hang_up_is_none_and_garbage_is_an_error() {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        nix::unistd::write(&a, b"{\"op\":\"nonsense\"}").unwrap();
        let e = recv::<Request>(b.as_fd()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let big = vec![b' '; MAX_MESSAGE + 1];
        nix::unistd::write(&a, &big).unwrap();
        let e = recv::<Request>(b.as_fd()).unwrap_err();
        assert!(e.to_string().contains("cut"), "{e}");
        drop(a);
        assert!(recv::<Request>(b.as_fd()).unwrap().is_none());
    }
}
