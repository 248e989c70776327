//! Moving a process's stdio between containerd's fifos (or any fd) and the agent.
//!
//! Output: `ReadStdout`/`ReadStderr` chunks → a writer, until the agent reports end of stream.
//! If the writer fails (nobody reads the fifo any more) the pump keeps draining the agent, so
//! the process never blocks on a full pipe. Input: a reader → `WriteStdin`, then `CloseStdin`.
//! Blocking fd reads and writes are cancellable ([`Canceller`]) so a stuck fifo never pins a
//! thread or an fd after its process is gone.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::agent::{Agent, AgentError};

const INPUT_CHUNK: usize = 32 * 1024;

/// A stream of output chunks; `Ok(None)` is end of stream.
pub trait OutputSource: Send {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String>;
}

/// Where a process's input goes.
pub trait InputSink: Send {
    fn write(&mut self, data: &[u8]) -> Result<(), String>;
    fn close(&mut self) -> Result<(), String>;
}

/// What an output pump did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PumpReport {
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes written to the sink (less than `read` if the sink failed).
    pub written: u64,
    pub sink_error: Option<String>,
    pub source_error: Option<String>,
}

/// Copies `source` into `sink` until end of stream. A failing sink is dropped, not fatal: the
/// source is drained to its end regardless.
pub fn pump_output(source: &mut dyn OutputSource, sink: &mut dyn Write) -> PumpReport {
    let mut report = PumpReport::default();
    loop {
        match source.next_chunk() {
            Ok(None) => break,
            Ok(Some(data)) => {
                report.read += data.len() as u64;
                if report.sink_error.is_none() {
                    match sink.write_all(&data) {
                        Ok(()) => report.written += data.len() as u64,
                        Err(e) => report.sink_error = Some(e.to_string()),
                    }
                }
            }
            Err(e) => {
                report.source_error = Some(e);
                break;
            }
        }
    }
    if report.sink_error.is_none() {
        if let Err(e) = sink.flush() {
            report.sink_error = Some(e.to_string());
        }
    }
    report
}

/// Copies `input` into `sink` until end of input (or cancellation), then closes the sink.
pub fn pump_input(input: &mut dyn Read, sink: &mut dyn InputSink) -> Result<u64, String> {
    let mut buf = vec![0u8; INPUT_CHUNK];
    let mut total = 0u64;
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                sink.write(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Cancelled or broken: still close, so the process sees EOF.
            Err(e) => {
                log::debug!("stdin: {e}");
                break;
            }
        }
    }
    sink.close()?;
    Ok(total)
}

/// Wakes every [`FdReader`]/[`FdWriter`] built from it; they then fail with `Interrupted`-like
/// errors (`io::ErrorKind::Other`, "cancelled").
#[derive(Clone)]
pub struct Canceller {
    read: Arc<OwnedFd>,
    write: Arc<OwnedFd>,
}

impl Canceller {
    pub fn new() -> io::Result<Canceller> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Canceller {
            read: Arc::new(r),
            write: Arc::new(w),
        })
    }

    /// Cancels all current and future blocking operations of this canceller's fds.
    pub fn cancel(&self) {
        let _ = nix::unistd::write(self.write.as_fd(), b"x");
    }

    /// Waits for `events` on `fd`; Err if cancelled. `Ok(revents)` otherwise.
    fn wait(&self, fd: &OwnedFd, events: PollFlags) -> io::Result<PollFlags> {
        loop {
            let mut fds = [
                PollFd::new(fd.as_fd(), events),
                PollFd::new(self.read.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return Err(io::Error::other("cancelled"));
            }
            if let Some(r) = fds[0].revents() {
                if !r.is_empty() {
                    return Ok(r);
                }
            }
        }
    }
}

/// A non-blocking fd read through poll, so it can be cancelled. A cancelled read still
/// returns what the fd already holds (up to [`DRAIN_AFTER_CANCEL`] bytes): containerd's
/// CloseIO comes right after its client wrote the last of stdin into the fifo, and that
/// input must reach the process before its stdin is closed.
pub struct FdReader {
    fd: OwnedFd,
    cancel: Canceller,
    drained: usize,
}

/// Most bytes a cancelled [`FdReader`] still reads (a fifo holds 64 KiB by default).
pub const DRAIN_AFTER_CANCEL: usize = 1 << 20;

impl FdReader {
    /// `fd` must be in non-blocking mode.
    pub fn new(fd: OwnedFd, cancel: Canceller) -> FdReader {
        FdReader {
            fd,
            cancel,
            drained: 0,
        }
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Err(cancelled) = self.cancel.wait(&self.fd, PollFlags::POLLIN) {
                let room = DRAIN_AFTER_CANCEL
                    .saturating_sub(self.drained)
                    .min(buf.len());
                return match nix::unistd::read(self.fd.as_fd(), &mut buf[..room]) {
                    Ok(n) if n > 0 => {
                        self.drained += n;
                        Ok(n)
                    }
                    _ => Err(cancelled),
                };
            }
            match nix::unistd::read(self.fd.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A non-blocking fd write through poll, so it can be cancelled.
pub struct FdWriter {
    fd: OwnedFd,
    cancel: Canceller,
}

impl FdWriter {
    /// `fd` must be in non-blocking mode.
    pub fn new(fd: OwnedFd, cancel: Canceller) -> FdWriter {
        FdWriter { fd, cancel }
    }
}

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.cancel.wait(&self.fd, PollFlags::POLLOUT)?;
            match nix::unistd::write(self.fd.as_fd(), buf) {
                Ok(n) => return Ok(n),
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One of a process's output streams read from the agent.
pub struct AgentOutput {
    pub agent: Agent,
    pub container_id: String,
    pub exec_id: String,
    pub stderr: bool,
}

impl OutputSource for AgentOutput {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.agent
            .read_stream(&self.container_id, &self.exec_id, self.stderr)
            .map_err(|e: AgentError| e.to_string())
    }
}

/// A process's stdin written through the agent.
pub struct AgentInput {
    pub agent: Agent,
    pub container_id: String,
    pub exec_id: String,
}

impl InputSink for AgentInput {
    fn write(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let n = self
                .agent
                .write_stdin(&self.container_id, &self.exec_id, data)
                .map_err(|e| e.to_string())? as usize;
            if n == 0 || n > data.len() {
                return Err(format!("agent accepted {n} of {} stdin bytes", data.len()));
            }
            data = &data[n..];
        }
        Ok(())
    }
    fn close(&mut self) -> Result<(), String> {
        self.agent
            .close_stdin(&self.container_id, &self.exec_id)
            .map_err(|e| e.to_string())
    }
}

/// The copy threads of one process.
pub struct ProcessIo {
    label: String,
    outputs: std::sync::Mutex<Vec<JoinHandle<PumpReport>>>,
    output_cancel: Canceller,
    input_cancel: Canceller,
}

/// An output stream to pump: where from, where to.
pub type OutputPair = (Box<dyn OutputSource>, Box<dyn Write + Send>);
/// An input stream to pump: where from, where to.
pub type InputPair = (Box<dyn Read + Send>, Box<dyn InputSink>);

impl ProcessIo {
    /// Starts one thread per stream. `output_cancel` / `input_cancel` must be the cancellers
    /// of the output writers / the input reader.
    pub fn start(
        label: &str,
        outputs: Vec<OutputPair>,
        input: Option<InputPair>,
        output_cancel: Canceller,
        input_cancel: Canceller,
    ) -> io::Result<ProcessIo> {
        let mut handles = Vec::new();
        for (i, (mut src, mut sink)) in outputs.into_iter().enumerate() {
            let name = format!("io-out{i}-{label}");
            let label = label.to_string();
            handles.push(std::thread::Builder::new().name(name).spawn(move || {
                let r = pump_output(src.as_mut(), sink.as_mut());
                drop(sink); // close the fifo now: the reader sees EOF after the tail
                if let Some(e) = &r.source_error {
                    log::warn!("{label}: output stream {i}: {e}");
                }
                if let Some(e) = &r.sink_error {
                    log::info!(
                        "{label}: output stream {i}: dropped after {} bytes: {e}",
                        r.written
                    );
                }
                r
            })?);
        }
        if let Some((mut reader, mut sink)) = input {
            let label2 = label.to_string();
            // Not joined: it ends at end of input, on close_stdin() or when dropped.
            std::thread::Builder::new()
                .name(format!("io-in-{label}"))
                .spawn(move || {
                    if let Err(e) = pump_input(reader.as_mut(), sink.as_mut()) {
                        log::info!("{label2}: stdin: {e}");
                    }
                })?;
        }
        Ok(ProcessIo {
            label: label.to_string(),
            outputs: std::sync::Mutex::new(handles),
            output_cancel,
            input_cancel,
        })
    }

    /// Waits until every output stream reached its end, up to `grace`. Returns false if some
    /// stream is still open then (e.g. a background child holds it); its pump goes on.
    pub fn wait_outputs(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut outputs = self.outputs.lock().unwrap_or_else(|p| p.into_inner());
        while outputs.iter().any(|h| !h.is_finished()) {
            if Instant::now() >= deadline {
                log::warn!(
                    "{}: output still open {grace:?} after exit; reporting the exit anyway",
                    self.label
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in outputs.drain(..) {
            let _ = h.join();
        }
        true
    }

    /// Stops the stdin pump; it closes the process's stdin on its way out.
    pub fn close_stdin(&self) {
        self.input_cancel.cancel();
    }

    /// Cancels every blocked fd operation (the task is being deleted). Output pumps still
    /// drain their source to its end, discarding.
    pub fn cancel(&self) {
        self.input_cancel.cancel();
        self.output_cancel.cancel();
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests;

/// Opens a fifo's read end without blocking for a writer. On Linux, poll() on it does not
/// report hang-up until a writer has come and gone, so an early open is not an early EOF.
pub fn open_fifo_reader(path: &std::path::Path, cancel: Canceller) -> io::Result<FdReader> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(FdReader::new(fd, cancel))
}

/// Opens a fifo's write end without blocking. containerd opens the read end before it asks
/// for the task; if it has not (ENXIO), open read-write so the open cannot fail or block.
pub fn open_fifo_writer(path: &std::path::Path, cancel: Canceller) -> io::Result<FdWriter> {
    let open = |flags| {
        nix::fcntl::open(
            path,
            flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    };
    let fd = match open(OFlag::O_WRONLY) {
        Err(nix::errno::Errno::ENXIO) => open(OFlag::O_RDWR)?,
        other => other?,
    };
    Ok(FdWriter::new(fd, cancel))
}
