//! Running a command with a deadline, timing its exit and its first byte of output.
//!
//! Every step of the benchmark goes through here so that nothing can hang: at the deadline
//! the child is killed (it is our own child, by pid) and the step reports a timeout.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Output kept per stream (the tail beyond this is dropped).
pub const MAX_CAPTURE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{what}: cannot start {program}")]
    Spawn {
        what: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{what}: no answer within {secs:.1} s (killed){}", detail_suffix(.stderr))]
    Timeout {
        what: String,
        secs: f64,
        stderr: String,
    },
    #[error("{what}: exit status {status}: {}", first_lines(.stderr, .stdout))]
    Failed {
        what: String,
        status: String,
        stdout: String,
        stderr: String,
    },
}

fn detail_suffix(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", tail_chars(t, 2000))
    }
}

fn first_lines(stderr: &str, stdout: &str) -> String {
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let t = text.trim();
    if t.is_empty() {
        "(no output)".to_string()
    } else {
        tail_chars(t, 2000)
    }
}

/// The last `max` characters of `s` (errors quote tails: the cause is usually at the end).
pub fn tail_chars(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        s.to_string()
    } else {
        let skip = count - max;
        format!("…{}", s.chars().skip(skip).collect::<String>())
    }
}

/// What a finished (not timed-out) command did.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Exit code, or `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// From spawn to the first byte on stdout.
    pub first_stdout_byte: Option<Duration>,
}

impl Timed {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `Ok(self)` on exit 0, else a [`ExecError::Failed`] quoting the output.
    pub fn check(self, what: &str) -> Result<Timed, ExecError> {
        if self.success() {
            Ok(self)
        } else {
            Err(ExecError::Failed {
                what: what.to_string(),
                status: self
                    .code
                    .map_or_else(|| "killed by a signal".to_string(), |c| c.to_string()),
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

enum Chunk {
    Stdout(Instant, Vec<u8>),
    Stderr(Vec<u8>),
    Closed,
}

fn pump(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Chunk>, is_stdout: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    let chunk = if is_stdout {
                        Chunk::Stdout(Instant::now(), data)
                    } else {
                        Chunk::Stderr(data)
                    };
                    if tx.send(chunk).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Chunk::Closed);
    });
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_CAPTURE.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Runs `cmd` (stdin from /dev/null) until it exits or `timeout` passes; `what` names the
/// step in errors. A non-zero exit is returned as `Ok` (see [`Timed::check`]).
pub fn run_timed(mut cmd: Command, what: &str, timeout: Duration) -> Result<Timed, ExecError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        what: what.to_string(),
        program,
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone(), true);
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx, false);
    }
    let deadline = start + timeout;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut first = None;
    let mut open_streams = 2;
    let mut exited: Option<(Option<i32>, Duration)> = None;
    loop {
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some((status.code(), start.elapsed()));
            }
        }
        if let Some((code, elapsed)) = exited {
            // The process is gone; give its pipes a moment to drain (a grandchild holding
            // them open must not hold us).
            let drain_until = Instant::now() + Duration::from_secs(2);
            while open_streams > 0 {
                let left = drain_until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(chunk) => absorb(
                        chunk,
                        &mut stdout,
                        &mut stderr,
                        &mut first,
                        &mut open_streams,
                    ),
                    Err(_) => break,
                }
            }
            return Ok(Timed {
                code,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                elapsed,
                first_stdout_byte: first.map(|t: Instant| t.duration_since(start)),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            kill_child(&mut child);
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                absorb(
                    chunk,
                    &mut stdout,
                    &mut stderr,
                    &mut first,
                    &mut open_streams,
                );
            }
            return Err(ExecError::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs_f64(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            });
        }
        // Wake for output, or every 5 ms to look at the exit status.
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(5));
        if let Ok(chunk) = rx.recv_timeout(wait) {
            absorb(
                chunk,
                &mut stdout,
                &mut stderr,
                &mut first,
                &mut open_streams,
            );
        }
    }
}

fn absorb(
    chunk: Chunk,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
    first: &mut Option<Instant>,
    open: &mut u32,
) {
    match chunk {
        Chunk::Stdout(at, data) => {
            first.get_or_insert(at);
            keep(stdout, &data);
        }
        Chunk::Stderr(data) => keep(stderr, &data),
        Chunk::Closed => *open = open.saturating_sub(1),
    }
}

/// SIGKILLs our own child and reaps it.
pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The first line of `<program> <args>`'s output (stdout, else stderr), for version facts.
pub fn first_line_of(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_timed(cmd, program, Duration::from_secs(10)).ok()?;
    let text = if out.stdout.trim().is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn captures_output_status_and_first_byte() {
        let t = run_timed(
            sh("sleep 0.2; printf x; sleep 0.2; echo err >&2; exit 3"),
            "t",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(t.code, Some(3));
        assert_eq!(t.stdout, "x");
        assert_eq!(t.stderr, "err\n");
        let first = t.first_stdout_byte.unwrap();
        assert!(first >= Duration::from_millis(200), "{first:?}");
        assert!(t.elapsed >= first + Duration::from_millis(200), "{t:?}");
        let e = t.check("the step").unwrap_err();
        assert!(
            e.to_string().contains("the step: exit status 3: err"),
            "{e}"
        );
    }

    #[test]
    fn a_hung_command_is_killed_at_the_deadline() {
        let start = Instant::now();
        let e = run_timed(
            sh("echo starting >&2; exec sleep 30"),
            "hang",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        let text = e.to_string();
        assert!(
            text.contains("hang: no answer within 0.3 s") && text.contains("starting"),
            "{text}"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = run_timed(
            Command::new("/nonexistent/vessel-bench-tool"),
            "x",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }), "{e}");
    }

    #[test]
    fn capture_is_bounded() {
        let t = run_timed(
            sh("head -c 1000000 /dev/zero"),
            "big",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(t.stdout.len(), MAX_CAPTURE);
    }

    #[test]
    fn tails_are_char_safe() {
        assert_eq!(tail_chars("abcdef", 3), "…def");
        assert_eq!(tail_chars("äöü", 5), "äöü");
        assert_eq!(tail_chars("äöü", 1), "…ü");
    }
}
