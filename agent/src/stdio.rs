//! A process's stdio as the agent holds it: pipes or a pty master.
//!
//! The agent keeps the read ends until the process is removed, so the tail of the output
//! is never lost: reads go on after the process exits, until the pipe reports end of file
//! (EIO on a pty master once every slave is closed). Reads are bounded by the caller's
//! deadline and abandoned if its connection goes away, without consuming data that could
//! not be delivered.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::reaper::lock;

/// Largest chunk one ReadStdout/ReadStderr returns.
pub const MAX_READ: usize = 1 << 20;
/// Longest a single poll sleeps before checking whether the requester is still there.
const POLL_SLICE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating stdio")]
    Create(#[source] io::Error),
    #[error("stream I/O")]
    Io(#[from] io::Error),
    #[error("the process has closed its stdin")]
    StdinClosed,
    #[error("the process has no stdin")]
    NoStdin,
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("the caller went away")]
    Cancelled,
    #[error("deadline reached")]
    Deadline,
}

/// The agent's end of one output stream.
pub struct OutputStream {
    fd: OwnedFd,
    eof: AtomicBool,
}

/// What one read returns.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Vec<u8>),
    Eof,
    /// Nothing arrived before the caller's deadline.
    Empty,
}

impl OutputStream {
    fn new(fd: OwnedFd) -> Result<Self, StdioError> {
        set_nonblocking(&fd)?;
        Ok(Self {
            fd,
            eof: AtomicBool::new(false),
        })
    }

    /// Waits for data or end of stream. `deadline`: when the caller must have its answer;
    /// `cancelled`: polled between waits.
    pub fn read(
        &self,
        max: usize,
        deadline: Option<Instant>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ReadOutcome, StdioError> {
        let max = max.clamp(1, MAX_READ);
        let mut buf = vec![0u8; max];
        loop {
            if self.eof.load(Ordering::SeqCst) {
                return Ok(ReadOutcome::Eof);
            }
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    self.eof.store(true, Ordering::SeqCst);
                    return Ok(ReadOutcome::Eof);
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(ReadOutcome::Data(buf));
                }
                Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => continue,
                // A pty master reads EIO once the last slave is closed: end of stream.
                Err(Errno::EIO) => {
                    self.eof.store(true, Ordering::SeqCst);
                    return Ok(ReadOutcome::Eof);
                }
                Err(e) => return Err(StdioError::Io(e.into())),
            }
            match wait_ready(&self.fd, PollFlags::POLLIN, deadline, cancelled)? {
                true => continue,
                false => return Ok(ReadOutcome::Empty),
            }
        }
    }
}

/// Polls `fd` in slices; `Ok(false)` when the deadline passed first.
fn wait_ready(
    fd: &OwnedFd,
    events: PollFlags,
    deadline: Option<Instant>,
    cancelled: &dyn Fn() -> bool,
) -> Result<bool, StdioError> {
    loop {
        if cancelled() {
            return Err(StdioError::Cancelled);
        }
        let mut slice = POLL_SLICE;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                return Ok(false);
            }
            slice = slice.min(d - now);
        }
        let timeout =
            PollTimeout::try_from(slice.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(StdioError::Io(e.into())),
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), StdioError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| StdioError::Create(e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| StdioError::Create(e.into()))?;
    Ok(())
}

/// The agent's ends of a process's stdio.
pub struct ProcessStreams {
    stdin: Mutex<Option<OwnedFd>>,
    pub stdout: Option<OutputStream>,
    pub stderr: Option<OutputStream>,
    /// The pty master (for window size), when the process has a terminal.
    tty: Option<OwnedFd>,
}

/// Descriptors for the child's fds 0, 1, 2, and the agent's ends.
pub struct StdioSetup {
    pub child: [OwnedFd; 3],
    pub streams: ProcessStreams,
}

impl StdioSetup {
    /// Pipes for stdout and stderr; a pipe for stdin if asked, else /dev/null.
    pub fn pipes(stdin: bool) -> Result<Self, StdioError> {
        let pipe =
            || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Create(e.into()));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_child, in_agent) = if stdin {
            let (r, w) = pipe()?;
            set_nonblocking(&w)?;
            (r, Some(w))
        } else {
            (
                File::open("/dev/null").map_err(StdioError::Create)?.into(),
                None,
            )
        };
        Ok(Self {
            child: [in_child, out_w, err_w],
            streams: ProcessStreams {
                stdin: Mutex::new(in_agent),
                stdout: Some(OutputStream::new(out_r)?),
                stderr: Some(OutputStream::new(err_r)?),
                tty: None,
            },
        })
    }

    /// For a process with a terminal: the child starts with /dev/null as fds 0-2 and opens
    /// the pty itself, inside the container (its /dev/pts instance, so `tty` and /dev/console
    /// name a device the container can see, as with runc's console socket); the agent gets
    /// the master back through the sync socket and builds the streams with
    /// [`ProcessStreams::from_pty_master`].
    pub fn terminal_placeholder() -> Result<Self, StdioError> {
        let null = || -> Result<OwnedFd, StdioError> {
            Ok(File::open("/dev/null").map_err(StdioError::Create)?.into())
        };
        Ok(Self {
            child: [null()?, null()?, null()?],
            streams: ProcessStreams {
                stdin: Mutex::new(None),
                stdout: None,
                stderr: None,
                tty: None,
            },
        })
    }
}

impl ProcessStreams {
    /// The agent's side of a pty whose master the container's process sent back: output on
    /// stdout only, input and window size through the master.
    pub fn from_pty_master(master: OwnedFd, size: Option<(u16, u16)>) -> Result<Self, StdioError> {
        fcntl(&master, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
            .map_err(|e| StdioError::Create(e.into()))?;
        if let Some((rows, cols)) = size {
            crate::sys::set_window_size(master.as_fd(), rows, cols).map_err(StdioError::Create)?;
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Create);
        let reader = dup(&master)?;
        let writer = dup(&master)?;
        Ok(Self {
            stdin: Mutex::new(Some(writer)),
            stdout: Some(OutputStream::new(reader)?),
            stderr: None,
            tty: Some(master),
        })
    }

    /// Writes all of `data` (waiting while the pipe is full), or fails.
    pub fn write_stdin(
        &self,
        data: &[u8],
        deadline: Option<Instant>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<usize, StdioError> {
        let guard = lock(&self.stdin);
        let fd = guard.as_ref().ok_or(StdioError::NoStdin)?;
        let mut done = 0;
        while done < data.len() {
            match nix::unistd::write(fd, &data[done..]) {
                Ok(n) => done += n,
                Err(Errno::EAGAIN) => {
                    if !wait_ready(fd, PollFlags::POLLOUT, deadline, cancelled)? {
                        break;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EPIPE | Errno::EIO) => return Err(StdioError::StdinClosed),
                Err(e) => return Err(StdioError::Io(e.into())),
            }
        }
        Ok(done)
    }

    /// Closes the agent's end of stdin so the process reads end of file. For a terminal,
    /// sends the EOF character instead (closing the master would hang up the session).
    pub fn close_stdin(&self) -> Result<(), StdioError> {
        let mut guard = lock(&self.stdin);
        if self.tty.is_some() {
            if let Some(fd) = guard.as_ref() {
                let _ = nix::unistd::write(fd, &[0x04]);
            }
            return Ok(());
        }
        guard.take();
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), StdioError> {
        let tty = self.tty.as_ref().ok_or(StdioError::NoTerminal)?;
        crate::sys::set_window_size(tty.as_fd(), rows, cols)?;
        Ok(())
    }

    pub fn has_terminal(&self) -> bool {
        self.tty.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_is_read_after_writer_closes() {
        let mut s = StdioSetup::pipes(true).unwrap();
        let [_in, out_w, err_w] = std::mem::replace(
            &mut s.child,
            [
                File::open("/dev/null").unwrap().into(),
                File::open("/dev/null").unwrap().into(),
                File::open("/dev/null").unwrap().into(),
            ],
        );
        drop(err_w);
        let mut w = File::from(out_w);
        w.write_all(b"last words").unwrap();
        drop(w);
        let out = s.streams.stdout.as_ref().unwrap();
        let never = || false;
        assert_eq!(
            out.read(4, None, &never).unwrap(),
            ReadOutcome::Data(b"last".to_vec())
        );
        assert_eq!(
            out.read(100, None, &never).unwrap(),
            ReadOutcome::Data(b" words".to_vec())
        );
        assert_eq!(out.read(100, None, &never).unwrap(), ReadOutcome::Eof);
        assert_eq!(
            s.streams
                .stderr
                .as_ref()
                .unwrap()
                .read(1, None, &never)
                .unwrap(),
            ReadOutcome::Eof
        );
    }

    #[test]
    fn read_respects_deadline_and_cancel() {
        let s = StdioSetup::pipes(false).unwrap();
        let out = s.streams.stdout.as_ref().unwrap();
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(out.read(10, soon, &|| false).unwrap(), ReadOutcome::Empty);
        assert!(matches!(
            out.read(10, None, &|| true),
            Err(StdioError::Cancelled)
        ));
        assert!(matches!(
            s.streams.write_stdin(b"x", None, &|| false),
            Err(StdioError::NoStdin)
        ));
    }
}
