//! A process's terminal, made inside its container (as runc does with its console socket).

use std::os::fd::{AsFd, OwnedFd};

use super::ChildError;
use crate::syscall::Syscall;

/// Opens a pty in the current root (the container's, after pivot_root or setns), makes the
/// slave our fds 0-2 and, for a container's init, /dev/console; returns the master for the
/// agent. This is what runc does with its console socket.
pub fn open_console(sys: &dyn Syscall, bind_dev_console: bool) -> Result<OwnedFd, ChildError> {
    let pty = nix::pty::openpty(None, None).map_err(|e| {
        ChildError::sys(
            "open a pty in the container (does the spec mount devpts at /dev/pts?)",
            e,
        )
    })?;
    if bind_dev_console {
        let name = nix::unistd::ttyname(pty.slave.as_fd())
            .map_err(|e| ChildError::sys("name of the pty", e))?;
        super::devices::bind_console(sys, &name)?;
    }
    nix::unistd::dup2_stdin(&pty.slave).map_err(|e| ChildError::sys("dup2 pty to stdin", e))?;
    nix::unistd::dup2_stdout(&pty.slave).map_err(|e| ChildError::sys("dup2 pty to stdout", e))?;
    nix::unistd::dup2_stderr(&pty.slave).map_err(|e| ChildError::sys("dup2 pty to stderr", e))?;
    Ok(pty.master)
}
