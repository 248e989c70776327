//! The runtime's only `unsafe`: what must run between fork and exec of a child.

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
