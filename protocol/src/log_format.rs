//! How the host processes (the shim, the VMM) write their log lines: `log_format` in the
//! runtime's config, `--log-format` on `vessel-vmm`'s command line.
//!
//! * `text` (the default): what they always wrote — the shim containerd-shim's logfmt-style
//!   `time=... level=... msg="..."`, the VMM `vessel-vmm [thread] LEVEL message`.
//! * `json`: one JSON object per line, for log collectors (what Kata's and containerd's
//!   `--log-format json` give): `time` (RFC 3339, UTC, nanoseconds), `level` (lower case),
//!   `process` (`shim` or `vmm`), `sandbox` and `namespace` when known, `container` when the
//!   call site names one (the `container` key of the record's key-values), `msg`, `target`
//!   (the Rust module), `thread` when named, and `fields` with the record's other key-values.
//!   Built with `serde_json`, so a message with quotes or newlines stays one valid line.

use std::fmt;
use std::str::FromStr;

use log::kv::{self, VisitSource};
use serde_json::{Map, Value};

/// A log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The names `log_format` takes.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `log_format` that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log format {0:?} is not one of text, json")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_string())),
        }
    }
}

/// What every line of one process carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSource {
    /// `shim`, `vmm` or `vessel-runc`.
    pub process: &'static str,
    pub sandbox: Option<String>,
    /// The containerd namespace.
    pub namespace: Option<String>,
}

/// Collects a record's key-values: `container` apart, the rest as strings.
#[derive(Default)]
struct Fields {
    container: Option<String>,
    other: Map<String, Value>,
}

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        if key.as_str() == "container" {
            self.container = Some(value.to_string());
        } else {
            self.other
                .insert(key.as_str().to_string(), Value::String(value.to_string()));
        }
        Ok(())
    }
}

/// The current time as RFC 3339 in UTC with nanoseconds.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// One JSON line (with its newline) for `record`, logged by `source` on thread `thread`.
pub fn json_line(source: &LogSource, record: &log::Record<'_>, thread: Option<&str>) -> String {
    json_line_at(&now_rfc3339(), source, record, thread)
}

fn json_line_at(
    time: &str,
    source: &LogSource,
    record: &log::Record<'_>,
    thread: Option<&str>,
) -> String {
    let mut fields = Fields::default();
    // A visitor that never fails: an error here would only lose fields.
    let _ = record.key_values().visit(&mut fields);
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            o.insert(k.to_string(), Value::String(v));
        }
    };
    put("time", Some(time.to_string()));
    put("level", Some(record.level().as_str().to_ascii_lowercase()));
    put("process", Some(source.process.to_string()));
    put("sandbox", source.sandbox.clone());
    put("namespace", source.namespace.clone());
    put("container", fields.container);
    put("msg", Some(record.args().to_string()));
    put("target", Some(record.target().to_string()));
    put("thread", thread.map(str::to_string));
    if !fields.other.is_empty() {
        o.insert("fields".to_string(), Value::Object(fields.other));
    }
    let mut line = Value::Object(o).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> LogSource {
        LogSource {
            process: "shim",
            sandbox: Some("sb1".into()),
            namespace: Some("k8s.io".into()),
        }
    }

    #[test]
    fn names_parse_and_print_back() {
        for name in LOG_FORMATS {
            assert_eq!(name.parse::<LogFormat>().expect("known").as_str(), name);
        }
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "log format \"yaml\" is not one of text, json"
        );
    }

    #[test]
    fn a_record_becomes_one_json_object_with_its_fields() {
        let kvs: [(&str, &str); 2] = [("container", "c1"), ("pid", "42")];
        let line = json_line_at(
            "2026-12-07T10:54:01.497191694Z",
            &source(),
            &log::Record::builder()
                .args(format_args!("said \"hi\"\nand left"))
                .level(log::Level::Warn)
                .target("vessel_runtime::pod")
                .key_values(&kvs)
                .build(),
            Some("vcpu0"),
        );
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        let want = serde_json::json!({
            "time": "2026-12-07T10:54:01.497191694Z",
            "level": "warn",
            "process": "shim",
            "sandbox": "sb1",
            "namespace": "k8s.io",
            "container": "c1",
            "msg": "said \"hi\"\nand left",
            "target": "vessel_runtime::pod",
            "thread": "vcpu0",
            "fields": {"pid": "42"},
        });
        assert_eq!(v, want);
    }

    #[test]
    fn unknown_parts_are_left_out_and_the_clock_is_rfc3339() {
        let src = LogSource {
            process: "vmm",
            ..LogSource::default()
        };
        let line = json_line(
            &src,
            &log::Record::builder()
                .args(format_args!("booted"))
                .level(log::Level::Info)
                .target("vessel_vmm")
                .build(),
            None,
        );
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        let o = v.as_object().expect("object");
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["level", "msg", "process", "target", "time"]);
        let time = o["time"].as_str().expect("time");
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{time}: {e}"));
        assert!(time.ends_with('Z'), "UTC: {time}");
    }
}
