//! The CLI's log: runc's `--log FILE` / `--log-format text|json` (conmon and the runc shim
//! read it back to show a failed command's error). Without `--log`, commands log to stderr as
//! runc does, but a holder never does: its stderr is the container's, so it logs to a file in
//! the container's directory instead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use vessel_protocol::log_format::{self, LogFormat, LogSource};
use vessel_protocol::sync::lock;

struct CliLogger {
    format: LogFormat,
    /// None: stderr.
    target: Mutex<Option<File>>,
    source: Mutex<LogSource>,
}

static LOGGER: std::sync::OnceLock<CliLogger> = std::sync::OnceLock::new();

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Installs the logger (once per process).
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> std::io::Result<()> {
    let target = log.map(open_append).transpose()?;
    let logger = LOGGER.get_or_init(|| CliLogger {
        format,
        target: Mutex::new(target),
        source: Mutex::new(LogSource {
            process: "vessel-runc",
            sandbox: None,
            namespace: Some(crate::holder::NAMESPACE.to_string()),
        }),
    });
    let _ = log::set_logger(logger);
    log::set_max_level(if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    Ok(())
}

/// Names the container on every line from now on.
pub fn set_container(id: &str) {
    if let Some(l) = LOGGER.get() {
        lock(&l.source).sandbox = Some(id.to_string());
    }
}

/// A holder's log: keeps `--log` if given, else moves from stderr to `path`.
pub fn leave_stderr(path: &Path) {
    if let Some(l) = LOGGER.get() {
        let mut t = lock(&l.target);
        if t.is_none() {
            *t = open_append(path).ok();
            if t.is_none() {
                // Nowhere to write that is not the container's stderr: stay quiet.
                log::set_max_level(log::LevelFilter::Off);
            }
        }
    }
}

/// A logrus-style text line, as runc writes: `time="…" level=… msg="…"`.
fn text_line(record: &log::Record<'_>) -> String {
    let now = time::OffsetDateTime::now_utc();
    let time = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let level = record.level().as_str().to_ascii_lowercase();
    let msg = format!("{}", record.args());
    format!("time={time:?} level={level} msg={msg:?}\n")
}

impl log::Log for CliLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match self.format {
            LogFormat::Json => {
                let source = lock(&self.source).clone();
                log_format::json_line(&source, record, std::thread::current().name())
            }
            LogFormat::Text => text_line(record),
        };
        match lock(&self.target).as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}
