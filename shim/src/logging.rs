//! The shim's logger: its lines go to the `log` fifo containerd made in the bundle (containerd
//! copies them into its own log), in the format `runtime.log_format` names.
//!
//! `text` is containerd-shim's own logger (logfmt-style, as every shim writes). `json` is
//! [`JsonLogger`]: one object per line from `vessel_protocol::log_format`, each written with
//! one `write` so lines of concurrent threads, and of other shims sharing containerd's relay,
//! never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Mutex;

use vessel_protocol::log_format::{self, LogFormat, LogSource};
use vessel_protocol::sync::lock;

/// JSON lines into a file (the fifo).
pub struct JsonLogger {
    out: Mutex<File>,
    source: LogSource,
}

impl JsonLogger {
    pub fn new(out: File, source: LogSource) -> JsonLogger {
        JsonLogger {
            out: Mutex::new(out),
            source,
        }
    }
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let line = log_format::json_line(&self.source, record, thread.name());
        // containerd's relay may be gone for a while (a restart): the line is lost, the shim
        // goes on (Rust programs start with SIGPIPE ignored, so this is EPIPE).
        let _ = lock(&self.out).write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = lock(&self.out).flush();
    }
}

/// The level: `runtime.log_level`, raised to debug when containerd runs with `-debug`
/// (what containerd-shim's own logger does).
fn level(debug: bool, configured: &str) -> log::LevelFilter {
    let level = configured.parse().unwrap_or(log::LevelFilter::Info);
    if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    }
}

/// Sets the process's logger up for `format`, writing to the `log` fifo in the working
/// directory (the bundle).
pub fn init(
    format: LogFormat,
    flags: &containerd_shim::Flags,
    configured_level: &str,
) -> io::Result<()> {
    match format {
        LogFormat::Text => containerd_shim::logger::init(
            flags.debug,
            configured_level,
            &flags.namespace,
            &flags.id,
        )
        .map_err(|e| io::Error::other(e.to_string())),
        LogFormat::Json => {
            let fifo = OpenOptions::new().write(true).open("log")?;
            let logger = JsonLogger::new(fifo, source(flags));
            log::set_boxed_logger(Box::new(logger)).map_err(io::Error::other)?;
            log::set_max_level(level(flags.debug, configured_level));
            Ok(())
        }
    }
}

fn source(flags: &containerd_shim::Flags) -> LogSource {
    LogSource {
        process: "shim",
        sandbox: (!flags.id.is_empty()).then(|| flags.id.clone()),
        namespace: (!flags.namespace.is_empty()).then(|| flags.namespace.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn each_record_is_one_json_line_naming_the_shims_sandbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let flags = containerd_shim::Flags {
            id: "sb-7".into(),
            namespace: "k8s.io".into(),
            ..Default::default()
        };
        let logger = JsonLogger::new(File::create(&path).expect("log file"), source(&flags));
        // The global filter (Off until set); no other test of this binary reads it.
        log::set_max_level(log::LevelFilter::Trace);
        let kvs: [(&str, &str); 1] = [("container", "c-1")];
        for (msg, kv) in [("created", &kvs[..]), ("line\nbreak \"quoted\"", &[][..])] {
            logger.log(
                &log::Record::builder()
                    .args(format_args!("{msg}"))
                    .level(log::Level::Error)
                    .target("vessel_runtime::pod")
                    .key_values(&kv)
                    .build(),
            );
        }
        let text = std::fs::read_to_string(&path).expect("read log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["sandbox"], "sb-7");
        assert_eq!(lines[0]["namespace"], "k8s.io");
        assert_eq!(lines[0]["process"], "shim");
        assert_eq!(lines[0]["container"], "c-1");
        assert_eq!(lines[0]["level"], "error");
        assert_eq!(lines[1]["msg"], "line\nbreak \"quoted\"");
        assert!(lines[1].get("container").is_none());
    }

    #[test]
    fn containerds_debug_flag_raises_the_level_only_upwards() {
        assert_eq!(level(false, "warn"), log::LevelFilter::Warn);
        assert_eq!(level(true, "warn"), log::LevelFilter::Debug);
        assert_eq!(level(true, "trace"), log::LevelFilter::Trace);
        assert_eq!(level(false, "nonsense"), log::LevelFilter::Info);
    }
}
