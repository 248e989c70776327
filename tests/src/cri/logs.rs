//! CRI container log files: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>` per line
//! (kubelet's format; `P` marks a partial line continued by the next entry of that stream).

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// Tag `P`: this entry continues in the next one of its stream.
    pub partial: bool,
    pub text: String,
}

/// Whether `s` is a Go `time.RFC3339Nano` timestamp (`2006-01-02T15:04:05.999999999Z07:00`:
/// fraction of 1..=9 digits optional, `Z` or `±hh:mm`).
pub fn is_rfc3339_nano(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| -> u32 {
        s.get(r).and_then(|t| t.parse().ok()).unwrap_or(u32::MAX)
    };
    if b.len() < 20
        || !(digits(0..4) && digits(5..7) && digits(8..10))
        || !(digits(11..13) && digits(14..16) && digits(17..19))
        || (b[4], b[7], b[10], b[13], b[16]) != (b'-', b'-', b'T', b':', b':')
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z'] => true,
        [sign, h1, h2, b':', m1, m2] if *sign == b'+' || *sign == b'-' => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
        }
        _ => false,
    }
}

/// Parses one log line.
pub fn parse_log_line(line: &str) -> Result<LogEntry, String> {
    let mut parts = line.splitn(4, ' ');
    let (time, stream, tag) = match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(s), Some(g)) => (t, s, g),
        _ => return Err(format!("not `<time> <stream> <tag> <text>`: {line:?}")),
    };
    if !is_rfc3339_nano(time) {
        return Err(format!("time {time:?} is not RFC3339Nano in {line:?}"));
    }
    if stream != "stdout" && stream != "stderr" {
        return Err(format!("stream {stream:?} in {line:?}"));
    }
    let partial = match tag {
        "F" => false,
        "P" => true,
        other => return Err(format!("tag {other:?} (F or P) in {line:?}")),
    };
    Ok(LogEntry {
        time: time.to_string(),
        stream: stream.to_string(),
        partial,
        text: parts.next().unwrap_or_default().to_string(),
    })
}

/// Parses a whole log file (errors name the line number).
pub fn parse_log(text: &str) -> Result<Vec<LogEntry>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| parse_log_line(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// The full lines of `stream` (`P` entries joined to what follows them), in order.
pub fn log_messages(entries: &[LogEntry], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for e in entries.iter().filter(|e| e.stream == stream) {
        pending.push_str(&e.text);
        if !e.partial {
            out.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

/// The first 300 characters of `s`, for error messages.
pub fn clip(s: &str) -> String {
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        for ok in [
            "2026-12-01T10:20:30.123456789Z",
            "2026-12-01T10:20:30Z",
            "2026-12-01T10:20:30.5+01:00",
            "2026-02-28T23:59:60.000000001-07:30",
        ] {
            assert!(is_rfc3339_nano(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-12-01 10:20:30Z",
            "2026-13-01T10:20:30Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:20:30",
            "2026-12-01T10:20:30.Z",
            "2026-12-01T10:20:30.1234567890Z",
            "2026-12-01T10:20:30+0100",
            "2026-12-01T10:20:30ZZ",
            "20261201T102030Z0000",
        ] {
            assert!(!is_rfc3339_nano(bad), "{bad}");
        }
    }

    #[test]
    fn lines_and_partials() {
        let text = "2026-12-01T10:20:30.1Z stdout F hello world\n\
                    2026-12-01T10:20:30.2Z stderr P par\n\
                    2026-12-01T10:20:30.3Z stdout F \n\
                    2026-12-01T10:20:30.4Z stderr F tial\n";
        let e = parse_log(text).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].text, "hello world");
        assert!(e[1].partial);
        assert_eq!(log_messages(&e, "stdout"), ["hello world", ""]);
        assert_eq!(log_messages(&e, "stderr"), ["partial"]);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_log_line("hello").is_err());
        assert!(parse_log_line("2026-12-01T10:20:30Z stdin F x").is_err());
        assert!(parse_log_line("2026-12-01T10:20:30Z stdout X x").is_err());
        assert!(parse_log_line("yesterday stdout F x").is_err());
        let err = parse_log("2026-12-01T10:20:30Z stdout F a\nbroken\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }
}
