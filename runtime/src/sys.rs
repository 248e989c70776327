//! The runtime's only `unsafe`: what must run between fork and exec of a child, and the tap
//! ioctl.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Writes "0" to each file (cgroup `cgroup.procs`: moves the writer) in the child between
/// fork and exec. Best effort: a file that cannot be written is skipped.
pub(crate) fn write_zero_before_exec(cmd: &mut Command, files: Vec<CString>) {
    let join = move || {
        for f in &files {
            write_zero(f);
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec; it only calls the
    // async-signal-safe open(2), write(2) and close(2) (in `write_zero`) on C strings built
    // before the fork, allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(join);
    }
}

/// open + write "0" + close, all async-signal-safe.
fn write_zero(path: &CString) {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` was just opened; the buffer is a static one-byte string.
    let _ = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
}

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `sizeof(struct ifreq)` on x86_64; the name takes the first `IFNAMSIZ` (16) bytes.
const IFREQ_LEN: usize = 40;

/// Creates tap `name` (at most 15 bytes) in the calling thread's network namespace and
/// returns its queue fd (close-on-exec) with the flags the VMM requires
/// ([`vessel_protocol::vmm_launch::tap_flags::REQUIRED`]: frames behind a vnet header), not
/// persistent — the tap goes away when the last fd on it closes.
pub(crate) fn open_tap(name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tap name {name:?}: 1 to 15 bytes, no NUL"),
        ));
    }
    // std opens with O_CLOEXEC.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut ifr = [0u8; IFREQ_LEN];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&vessel_protocol::vmm_launch::tap_flags::REQUIRED.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes back one `struct ifreq` (IFREQ_LEN bytes) in `ifr`,
    // which we own and which outlives the call; `file` is an open /dev/net/tun fd.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::os::fd::OwnedFd::from(file))
}

/// Keeps `fd` open in the child across exec (clears its `FD_CLOEXEC` between fork and
/// exec, in the child only: other children the process spawns meanwhile do not get it).
/// The caller keeps `fd` open until the child has been spawned.
pub(crate) fn keep_fd_across_exec(cmd: &mut Command, fd: std::os::fd::RawFd) {
    let clear = move || {
        // SAFETY: fcntl is async-signal-safe; `fd` is open in the parent at fork time (the
        // caller's contract), so it is open in the child.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags == -1 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; only the close-on-exec bit changes.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe fcntl(2); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(clear);
    }
}
