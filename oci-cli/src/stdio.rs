//! The stdio the engine hands a container (or an exec): which of fds 0-2 carry a stream, the
//! paths the runtime's relay opens them by (`/proc/self/fd/N`, the holder's own), and the
//! small pipe on which a forked holder tells its command how the start went.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use vessel_runtime::pod::StdioPaths;

/// The longest start report (an error's message).
const MAX_REPORT: u64 = 64 * 1024;

/// The path the relay opens `fd` of this process by.
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// fd `n` (0-2) of this process.
fn inherited(n: RawFd) -> BorrowedFd<'static> {
    crate::sys::std_fd(n)
}

/// Whether `fd` carries a stream: open and not `/dev/null` (conmon passes `/dev/null` for a
/// container without `-i`; the guest process then gets its own, with no relay).
pub fn is_stream(fd: BorrowedFd<'_>) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) => {
            let chr = (st.st_mode & libc::S_IFMT) == libc::S_IFCHR;
            !(chr && st.st_rdev == nix::sys::stat::makedev(1, 3))
        }
        Err(_) => false,
    }
}

/// The container's init stdio: fds 0-2 of this process, each by path, "" for none.
pub fn inherited_paths() -> StdioPaths {
    let path = |n| {
        if is_stream(inherited(n)) {
            format!("/proc/self/fd/{n}")
        } else {
            String::new()
        }
    };
    StdioPaths {
        stdin: path(0),
        stdout: path(1),
        stderr: path(2),
        terminal: false,
    }
}

/// Points fds 0-2 at `/dev/null` (the relay has its own fds on the streams by now): the
/// engine's pipes then close when the relay's do, and nothing the holder prints can mix
/// into the container's output.
pub fn detach_inherited() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    let _ = nix::unistd::dup2_stdout(&null);
    let _ = nix::unistd::dup2_stderr(&null);
}

/// Marks every fd above 2 close-on-exec: what the engine left open must not leak into the
/// VMM and its jail.
pub fn close_on_exec_above_stderr() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // An fd that closed meanwhile (the directory's own) fails harmlessly.
        let _ = crate::sys::set_cloexec(fd);
    }
}

/// Tells the waiting command how the start went ("ok" or the error).
pub fn report(pipe: &OwnedFd, message: &str) {
    let mut rest = message.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(pipe, rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            // The command is gone: nobody to tell.
            Err(_) => return,
        }
    }
}

/// Reads the forked process's report to its end: "ok", or why not.
pub fn read_report(pipe: OwnedFd) -> String {
    let mut text = String::new();
    let _ = std::fs::File::from(pipe)
        .take(MAX_REPORT)
        .read_to_string(&mut text);
    text
}

/// Which streams an exec has; the fds sent with its request follow this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecStreams {
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl ExecStreams {
    /// This process's streams and the fds to send (a terminal sends its slave alone).
    pub fn of_this_process(tty_slave: Option<&OwnedFd>) -> (ExecStreams, Vec<RawFd>) {
        if let Some(slave) = tty_slave {
            let all = ExecStreams {
                terminal: true,
                stdin: true,
                stdout: true,
                stderr: false,
            };
            return (all, vec![slave.as_raw_fd()]);
        }
        let mut fds = Vec::new();
        let mut has = |n: RawFd| {
            let stream = is_stream(inherited(n));
            if stream {
                fds.push(n);
            }
            stream
        };
        let streams = ExecStreams {
            terminal: false,
            stdin: has(0),
            stdout: has(1),
            stderr: has(2),
        };
        (streams, fds)
    }

    /// The relay's paths for the fds that came with the request, in this order.
    pub fn paths(&self, fds: &[OwnedFd]) -> Result<StdioPaths, String> {
        if self.terminal {
            let [tty] = fds else {
                return Err(format!("a terminal exec sends one fd, not {}", fds.len()));
            };
            let p = fd_path(tty);
            return Ok(StdioPaths {
                stdin: p.clone(),
                stdout: p,
                stderr: String::new(),
                terminal: true,
            });
        }
        let wanted = [self.stdin, self.stdout, self.stderr];
        let n = wanted.iter().filter(|w| **w).count();
        if n != fds.len() {
            return Err(format!("{n} streams named but {} fds sent", fds.len()));
        }
        let mut it = fds.iter();
        let mut next = |w: bool| {
            if w {
                it.next().map(fd_path).unwrap_or_default()
            } else {
                String::new()
            }
        };
        Ok(StdioPaths {
            stdin: next(self.stdin),
            stdout: next(self.stdout),
            stderr: next(self.stderr),
            terminal: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn dev_null_is_no_stream_and_a_pipe_is_one() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_stream(null.as_fd()));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(is_stream(r.as_fd()));
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert!(is_stream(zero.as_fd()));
    }

    #[test]
    fn exec_paths_follow_the_flags() {
        let (a, b) = nix::unistd::pipe().unwrap();
        let s = ExecStreams {
            terminal: false,
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let fds = vec![a, b];
        let p = s.paths(&fds).unwrap();
        assert_eq!(p.stdin, "");
        assert_eq!(p.stdout, fd_path(&fds[0]));
        assert_eq!(p.stderr, fd_path(&fds[1]));
        assert!(s.paths(&fds[..1]).is_err(), "two flagged, one sent");
        let t = ExecStreams {
            terminal: true,
            ..s
        };
        let p = t.paths(&fds[..1]).unwrap();
        assert!(p.terminal && p.stdin == p.stdout && p.stderr.is_empty());
        assert!(t.paths(&fds).is_err());
    }

    #[test]
    fn reports_cross_the_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        report(&w, "no such thing");
        drop(w);
        assert_eq!(read_report(r), "no such thing");
    }
}
