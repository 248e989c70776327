//! Start latency: `ctr run --rm <image> <id> /bin/true`, and create+start to the first byte of
//! output (`ctr run --rm <image> <id> echo x`), per runtime, interleaved A/B/A/B.

use std::path::Path;

use crate::ctr::{step_error, Ctr, Runtime};
use crate::report::{Ratio, Series, StartResult};
use crate::setup::IMAGE;
use crate::shimlog::{pod_stages, sandbox_ready_ms};

/// The two things measured per iteration and runtime.
const METRIC_RUN: &str = "run /bin/true";
const METRIC_FIRST_BYTE: &str = "first output byte";
const METRIC_SANDBOX_READY: &str = "sandbox ready (shim log; every attempt)";
/// The stages of a measured vessel `/bin/true` run, from the shim's lines (`shimlog`).
const METRIC_STAGES: [&str; 3] = [
    "stage: ready to Start (container created)",
    "stage: Start to exit seen",
    "stage: exit seen to pod gone",
];

/// Called before each runtime's turn (switches the vessel config for its mode).
pub type Prepare<'a> = dyn FnMut(usize) -> Result<(), String> + 'a;

/// Runs each runtime's `warmup + runs` iterations, interleaved: in iteration i every runtime
/// (in order) that still has iterations runs both commands. A runtime that fails stops being
/// measured (its error is kept); the others go on. For
/// vessel runtimes, the sandbox stage of every `/bin/true` attempt (warm-ups and failed ones
/// included) is read from the shim's lines in `shim_log` (containerd's log).
pub fn measure(
    ctr: &Ctr,
    runtimes: &[Runtime],
    shim_log: &Path,
    prepare: &mut Prepare<'_>,
) -> StartResult {
    let mut ready_series: Vec<Series> = runtimes
        .iter()
        .map(|r| Series::new(&r.name, METRIC_SANDBOX_READY, "ms"))
        .collect();
    let mut stage_series: Vec<[Series; 3]> = runtimes
        .iter()
        .map(|r| METRIC_STAGES.map(|m| Series::new(&r.name, m, "ms")))
        .collect();
    let mut run_series: Vec<Series> = runtimes
        .iter()
        .map(|r| Series::new(&r.name, METRIC_RUN, "ms"))
        .collect();
    let mut byte_series: Vec<Series> = runtimes
        .iter()
        .map(|r| Series::new(&r.name, METRIC_FIRST_BYTE, "ms"))
        .collect();
    let iterations = runtimes
        .iter()
        .map(|r| r.warmup + r.runs)
        .max()
        .unwrap_or(0);
    for i in 0..iterations {
        for (ri, rt) in runtimes.iter().enumerate() {
            if run_series[ri].error.is_some() || i >= rt.warmup + rt.runs {
                continue;
            }
            let (measured, warmup) = (i >= rt.warmup, rt.warmup);
            if let Err(e) = prepare(ri) {
                run_series[ri].fail(e.clone());
                byte_series[ri].fail(e);
                continue;
            }
            let label = if measured { "run" } else { "warm-up" };
            let nth = if measured { i - warmup + 1 } else { i + 1 };
            log::info!("start: {} {label} {nth}", rt.name);
            // /bin/true: create, start, wait, delete.
            let id = format!("vb-s-{}-{i}", rt.tag);
            let what = format!("ctr run --rm ({}) {id} /bin/true", rt.name);
            let r = ctr.run(
                &[
                    "run",
                    "--rm",
                    "--runtime",
                    &rt.runtime_type,
                    IMAGE,
                    &id,
                    "/bin/true",
                ],
                &what,
                rt.timeout,
            );
            if rt.is_vessel() {
                let log = std::fs::read_to_string(shim_log).unwrap_or_default();
                match sandbox_ready_ms(&log, &id) {
                    Ok(ms) => ready_series[ri].samples.push(ms),
                    Err(e) => ready_series[ri].fail(e),
                }
            }
            if let Some(e) = step_error(&what, &r) {
                log::warn!("{e}");
                let _ = ctr.remove(&id, rt.timeout);
                let after = r
                    .as_ref()
                    .map(|t| format!(" (after {:.1} s)", t.elapsed.as_secs_f64()))
                    .unwrap_or_default();
                let msg = format!("{label} {nth}{after}: {e}");
                run_series[ri].fail(msg.clone());
                byte_series[ri].fail(msg);
                continue;
            }
            if let (true, Ok(t)) = (measured, &r) {
                run_series[ri].samples.push(t.elapsed.as_secs_f64() * 1e3);
                if rt.is_vessel() {
                    match stages_of(shim_log, &id) {
                        Ok(st) => {
                            for (series, ms) in
                                stage_series[ri]
                                    .iter_mut()
                                    .zip([st.create, st.run, st.teardown])
                            {
                                series.samples.push(ms);
                            }
                        }
                        Err(e) => stage_series[ri].iter_mut().for_each(|s| s.fail(e.clone())),
                    }
                }
            }
            // echo x: time to the first byte on ctr's stdout.
            let id = format!("vb-e-{}-{i}", rt.tag);
            let what = format!("ctr run --rm ({}) {id} echo x", rt.name);
            let r = ctr.run(
                &[
                    "run",
                    "--rm",
                    "--runtime",
                    &rt.runtime_type,
                    IMAGE,
                    &id,
                    "echo",
                    "x",
                ],
                &what,
                rt.timeout,
            );
            let err = step_error(&what, &r).or_else(|| match &r {
                Ok(t) if t.stdout != "x\n" => {
                    Some(format!("{what}: printed {:?}, expected \"x\\n\"", t.stdout))
                }
                Ok(t) if t.first_stdout_byte.is_none() => Some(format!("{what}: no output")),
                _ => None,
            });
            if let Some(e) = err {
                log::warn!("{e}");
                let _ = ctr.remove(&id, rt.timeout);
                byte_series[ri].fail(format!("{label} {nth}: {e}"));
                continue;
            }
            if let (true, Ok(t)) = (measured, &r) {
                if let Some(first) = t.first_stdout_byte {
                    byte_series[ri].samples.push(first.as_secs_f64() * 1e3);
                }
            }
        }
    }
    let run_series: Vec<Series> = run_series.into_iter().map(Series::finish).collect();
    let byte_series: Vec<Series> = byte_series.into_iter().map(Series::finish).collect();
    let mut ratios = Vec::new();
    if let Some(base) = runtimes.iter().position(|r| !r.is_vessel()) {
        for ri in (0..runtimes.len()).filter(|i| runtimes[*i].is_vessel()) {
            ratios.push(Ratio::of(METRIC_RUN, &run_series[ri], &run_series[base]));
            ratios.push(Ratio::of(
                METRIC_FIRST_BYTE,
                &byte_series[ri],
                &byte_series[base],
            ));
        }
    }
    let ready_series: Vec<Series> = ready_series
        .into_iter()
        .zip(runtimes)
        .filter(|(_, r)| r.is_vessel())
        .map(|(s, _)| s.finish())
        .collect();
    // Snapshot vs cold (the vessel runtimes come first: cold, then snapshot).
    if let [cold, snapshot] = ready_series.as_slice() {
        ratios.push(Ratio::of(METRIC_SANDBOX_READY, snapshot, cold));
    }
    let stage_series = stage_series
        .into_iter()
        .zip(runtimes)
        .filter(|(_, r)| r.is_vessel())
        .flat_map(|(s, _)| s.map(Series::finish));
    let mut series = run_series;
    series.extend(byte_series);
    series.extend(ready_series);
    series.extend(stage_series);
    StartResult {
        commands: vec![
            format!("ctr run --rm --runtime <runtime> {IMAGE} <id> /bin/true   (time to exit)"),
            format!(
                "ctr run --rm --runtime <runtime> {IMAGE} <id> echo x   (time to the first byte on stdout)"
            ),
        ],
        series,
        ratios,
    }
}

/// The pod's stages from the shim's lines; the teardown's last line may land in the log a
/// moment after `ctr` returned, so the log is read again for up to 3 s.
fn stages_of(shim_log: &Path, id: &str) -> Result<crate::shimlog::PodStages, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let log = std::fs::read_to_string(shim_log).unwrap_or_default();
        match pod_stages(&log, id) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}
