//! The crate's `unsafe`: fds the kernel hands over as raw numbers (accepted connections, fds
//! received with `SCM_RIGHTS`, `fork`) and the terminal ioctls nix has no safe call for.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{accept4, SockFlag};

/// Accepts one connection (close-on-exec).
pub fn accept(listener: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of fds just received in an `SCM_RIGHTS` message.
pub fn own_received(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    fds.into_iter()
        // SAFETY: the kernel installed these fds in this process for this message alone;
        // nothing else refers to them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// The terminal's size (`TIOCGWINSZ`): (rows, cols).
pub fn window_size(tty: BorrowedFd<'_>) -> nix::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, which lives on our
    // stack for the call.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    nix::errno::Errno::result(rc)?;
    Ok((ws.ws_row, ws.ws_col))
}

/// Makes `tty` the calling process's controlling terminal (`TIOCSCTTY`; the caller is a
/// session leader), so that a resize of its master sends us `SIGWINCH`.
pub fn set_controlling_tty(tty: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(rc).map(drop)
}

/// fd 0, 1 or 2 of this process, borrowed for the process's life.
pub fn std_fd(n: RawFd) -> BorrowedFd<'static> {
    debug_assert!((0..=2).contains(&n), "not a std fd: {n}");
    // SAFETY: fds 0-2 are never closed in this process (we only dup2 /dev/null over them),
    // so the number stays valid for as long as the borrow; a closed one makes fstat fail.
    unsafe { BorrowedFd::borrow_raw(n) }
}

/// Sets `FD_CLOEXEC` on fd number `fd` (one found in /proc/self/fd; if it has closed since,
/// the call fails with EBADF).
pub fn set_cloexec(fd: RawFd) -> nix::Result<()> {
    // SAFETY: F_SETFD takes an integer and touches no memory; on a stale number it fails.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Which side of a fork we are on.
pub enum Forked {
    Parent { child: nix::unistd::Pid },
    Child,
}

/// `fork(2)`. Call only while this process has one thread: the child then owns a consistent
/// copy of everything (no lock held by a thread that does not exist there).
pub fn fork_single_threaded() -> nix::Result<Forked> {
    // SAFETY: the callers fork before they start any thread (the command line is parsed and
    // nothing has spawned), so the child's only thread is this one and every lock and
    // allocator state it inherits is consistent.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}
