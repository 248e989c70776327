//! Stage times of a vessel pod from the shim's lines in containerd's log: from the shim's
//! `Create <id>` to `sandbox <id>: ready` (VM booted or restored, agent answered,
//! `CreateSandbox` done). It tells how long the VM part of a pod start took, also when the
//! container step after it fails.

/// Seconds since the epoch of an RFC 3339 UTC time as containerd logs it
/// (`2026-11-22T18:43:59.439399432Z`).
pub fn parse_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return None;
    }
    let days = days_from_civil(y, m, day);
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `time="..."` of a logrus line, if its `msg` starts with `msg_prefix`.
fn time_of(line: &str, msg_prefix: &str) -> Option<f64> {
    let msg = line.split(" msg=\"").nth(1)?;
    if !msg.starts_with(msg_prefix) {
        return None;
    }
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    parse_utc(t)
}

/// Milliseconds from the shim's `Create <id>` to `sandbox <id>: ready` (the last such pair in
/// `log`), or why there is none.
pub fn sandbox_ready_ms(log: &str, id: &str) -> Result<f64, String> {
    let create = format!("Create {id} ");
    let ready = format!("sandbox {id}: ready");
    let mut start = None;
    let mut found = None;
    for line in log.lines() {
        if let Some(t) = time_of(line, &create) {
            start = Some(t);
        } else if let (Some(t), Some(s)) = (time_of(line, &ready), start) {
            found = Some((t - s) * 1e3);
        }
    }
    match (start, found) {
        (_, Some(ms)) => Ok(ms),
        (Some(_), None) => Err(format!("{id}: the shim never logged \"{ready}\"")),
        (None, None) => Err(format!("{id}: no \"Create {id}\" line in containerd's log")),
    }
}

/// Where a vessel pod's `ctr run --rm` spent its time, from the shim's lines (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodStages {
    /// `Create <id>` to `sandbox <id>: ready` (VM restored or booted, agent answered,
    /// `CreateSandbox`).
    pub sandbox: f64,
    /// Ready to the shim's `Start <id>`: the container made (rootfs mounted and shared,
    /// the agent's CreateContainer) and containerd's turn-around.
    pub create: f64,
    /// `Start <id>` to `<id>: exited with status`: StartContainer, the program's run, and
    /// its exit and output's end reaching the shim.
    pub run: f64,
    /// The exit to `sandbox <id>: stopped, state removed`: containerd's delete and the
    /// pod's teardown.
    pub teardown: f64,
}

/// The stages of the last `Create <id>` in `log`, or why they cannot be told.
pub fn pod_stages(log: &str, id: &str) -> Result<PodStages, String> {
    // The line each stage ends on, in order; `Start <id> ` is matched whole (the closing
    // quote), so an exec's `Start <id> <exec>` is not taken for the container's start.
    let marks = [
        ("Create", format!("Create {id} ")),
        ("ready", format!("sandbox {id}: ready")),
        ("Start", format!("Start {id} \"")),
        ("exited", format!("{id}: exited with status")),
        ("stopped", format!("sandbox {id}: stopped, state removed")),
    ];
    let mut at: [Option<f64>; 5] = [None; 5];
    for line in log.lines() {
        let hit = marks
            .iter()
            .enumerate()
            .find_map(|(i, (_, m))| time_of(line, m).map(|t| (i, t)));
        if let Some((i, t)) = hit {
            if i == 0 {
                at = [None; 5];
            }
            at[i] = Some(t);
        }
    }
    let mut t = [0.0; 5];
    for (i, (name, _)) in marks.iter().enumerate() {
        t[i] = at[i].ok_or_else(|| format!("{id}: no \"{name}\" line for the pod"))?;
    }
    let ms = |a: usize, b: usize| (t[b] - t[a]) * 1e3;
    Ok(PodStages {
        sandbox: ms(0, 1),
        create: ms(1, 2),
        run: ms(2, 3),
        teardown: ms(3, 4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_utc("2026-11-22T18:43:59.439399432Z").unwrap();
        let u = parse_utc("2026-11-22T18:44:04.816760685Z").unwrap();
        assert!((u - t - 5.377361253).abs() < 1e-6, "{}", u - t);
        // 2023-11-14T22:13:20Z is 1_700_000_000.
        assert_eq!(parse_utc("2023-11-14T22:13:20Z"), Some(1_700_000_000.0));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        for bad in [
            "",
            "2026-11-22 18:43:59Z",
            "2026-13-01T00:00:00Z",
            "x-y-zT1:2:3Z",
            "2026-11-22T18:43:59",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    const LOG: &str = r#"time="2026-11-22T18:43:59.437081010Z" level=info msg="serving unix:///run/containerd/s/8bef for vb-s-vs-0"
time="2026-11-22T18:43:59.439399432Z" level=info msg="Create vb-s-vs-0 (bundle /tmp/x/vb-s-vs-0)"
time="2026-11-22T18:43:59.443781407Z" level=info msg="sandbox vb-s-vs-0: starting /t/vessel-vmm (128 MiB, 1 vCPU), restoring /tmp/s"
time="2026-11-22T18:44:04.816760685Z" level=info msg="sandbox vb-s-vs-0: ready"
time="2026-11-22T18:44:34.349129151Z" level=error msg="Create: create vb-s-vs-0: sandbox vb-s-vs-0: agent CreateContainer: pivot_root: EINVAL"
time="2026-11-22T18:45:00.000000000Z" level=info msg="Create vb-s-vs-10 (bundle /tmp/x/vb-s-vs-10)"
"#;

    const RUN_LOG: &str = r#"time="2026-12-07T00:00:00.000000000Z" level=info msg="Create vb-s-vs-3 (bundle /b)"
time="2026-12-07T00:00:01.100000000Z" level=info msg="sandbox vb-s-vs-3: ready (machine started 5ms, agent answered 600ms, CreateSandbox 400ms)"
time="2026-12-07T00:00:05.000000000Z" level=info msg="Start vb-s-vs-3 x"
time="2026-12-07T00:00:05.900000000Z" level=info msg="Start vb-s-vs-3 "
time="2026-12-07T00:00:07.400000000Z" level=info msg="vb-s-vs-3: exited with status 0"
time="2026-12-07T00:00:09.000000000Z" level=info msg="sandbox vb-s-vs-3: stopped, state removed"
"#;

    #[test]
    fn splits_a_pod_run_into_stages() {
        let s = pod_stages(RUN_LOG, "vb-s-vs-3").unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(close(s.sandbox, 1100.0), "{s:?}");
        // The exec's "Start <id> x" is not the init's start.
        assert!(close(s.create, 4800.0), "{s:?}");
        assert!(close(s.run, 1500.0), "{s:?}");
        assert!(close(s.teardown, 1600.0), "{s:?}");
        let cut: String = RUN_LOG.lines().take(4).map(|l| format!("{l}\n")).collect();
        let e = pod_stages(&cut, "vb-s-vs-3").unwrap_err();
        assert!(e.contains("\"exited\""), "{e}");
        assert!(pod_stages(RUN_LOG, "vb-s-vs-30").is_err());
    }

    #[test]
    fn finds_the_sandbox_ready_stage() {
        let ms = sandbox_ready_ms(LOG, "vb-s-vs-0").unwrap();
        assert!((ms - 5377.361).abs() < 0.01, "{ms}");
        // "vb-s-vs-1" must not match "vb-s-vs-10" (or "vb-s-vs-0").
        let e = sandbox_ready_ms(LOG, "vb-s-vs-1").unwrap_err();
        assert!(e.contains("no \"Create vb-s-vs-1\""), "{e}");
        let e = sandbox_ready_ms(LOG, "vb-s-vs-10").unwrap_err();
        assert!(e.contains("never logged"), "{e}");
    }
}
