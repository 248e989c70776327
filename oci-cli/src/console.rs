//! A container's terminal on the host side, as runc's `--console-socket` contract wants it:
//! we open a pty, send its master to the engine's socket (conmon, containerd's runc shim)
//! and keep the slave. The slave is raw: the guest's own pty does the line discipline, so
//! the host one must pass bytes through untouched (no echo twice, no CR/LF rewriting).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use crate::errors::CliError;

/// Opens a pty; returns (master, raw slave).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), CliError> {
    let pty = nix::pty::openpty(None, None).map_err(CliError::sys("opening a pty"))?;
    // openpty's fds are inherited across exec; the VMM the holder starts must not get them.
    for fd in [&pty.master, &pty.slave] {
        crate::sys::set_cloexec(fd.as_raw_fd()).map_err(CliError::sys("pty close-on-exec"))?;
    }
    let mut t = tcgetattr(pty.slave.as_fd()).map_err(CliError::sys("reading the pty's modes"))?;
    cfmakeraw(&mut t);
    tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t)
        .map_err(CliError::sys("making the pty raw"))?;
    Ok((pty.master, pty.slave))
}

/// Sends `master` to the console socket at `path` (runc sends the name "/dev/ptmx" as the
/// message's data; conmon and the runc shim only take the fd).
pub fn send_master(path: &Path, master: &OwnedFd) -> Result<(), CliError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(CliError::sys("console socket"))?;
    let (addr, _dir) =
        crate::control::address(path).map_err(CliError::sys("console socket path"))?;
    connect(sock.as_raw_fd(), &addr).map_err(CliError::sys("connecting to the console socket"))?;
    let fds = [master.as_raw_fd()];
    let iov = [IoSlice::new(b"/dev/ptmx")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(CliError::sys("sending the pty to the console socket"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_master_reaches_the_socket_and_the_slave_is_raw() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (master, slave) = open_pty().unwrap();
        send_master(&path, &master).unwrap();
        drop(master);
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut received = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                received.extend(fds);
            }
        }
        assert_eq!(msg.bytes, b"/dev/ptmx".len());
        let got = crate::sys::own_received(received);
        assert_eq!(got.len(), 1);
        // Raw: "a\n" written to the master arrives as is (no echo back, no CR added).
        let mut m = std::fs::File::from(got.into_iter().next().unwrap());
        m.write_all(b"a\n").unwrap();
        let mut s = std::fs::File::from(slave);
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"a\n");
        s.write_all(b"b\n").unwrap();
        m.read_exact(&mut two).unwrap();
        assert_eq!(
            &two, b"b\n",
            "a cooked pty would have sent \"b\\r\\n\" or echoed \"a\""
        );
    }
}
