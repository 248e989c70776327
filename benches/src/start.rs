//! Start latency: `ctr run --rm <image> <id> /bin/true`, and create+start to the first byte of
//! output (`ctr run --rm <image> <id> echo x`), per runtime, interleaved A/B/A/B.

use crate::ctr::{step_error, Ctr, Runtime};
use crate::report::{Ratio, Series, StartResult};
use crate::setup::IMAGE;

/// The two things measured per iteration and runtime.
const METRIC_RUN: &str = "run /bin/true";
const METRIC_FIRST_BYTE: &str = "first output byte";

/// Called before each runtime's turn (switches the vessel config for its mode).
pub type Prepare<'a> = dyn FnMut(usize) -> Result<(), String> + 'a;

/// Runs `warmup + runs` iterations; in each, every runtime (in order) runs both commands.
/// A runtime that fails stops being measured (its error is kept); the others go on.
pub fn measure(
    ctr: &Ctr,
    runtimes: &[Runtime],
    runs: usize,
    warmup: usize,
    prepare: &mut Prepare<'_>,
) -> StartResult {
    let mut run_series: Vec<Series> = runtimes
        .iter()
        .map(|r| Series::new(&r.name, METRIC_RUN, "ms"))
        .collect();
    let mut byte_series: Vec<Series> = runtimes
        .iter()
        .map(|r| Series::new(&r.name, METRIC_FIRST_BYTE, "ms"))
        .collect();
    for i in 0..warmup + runs {
        let measured = i >= warmup;
        for (ri, rt) in runtimes.iter().enumerate() {
            if run_series[ri].error.is_some() {
                continue;
            }
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
            if let Some(e) = step_error(&what, &r) {
                log::warn!("{e}");
                let _ = ctr.remove(&id, rt.timeout);
                let msg = format!("{label} {nth}: {e}");
                run_series[ri].fail(msg.clone());
                byte_series[ri].fail(msg);
                continue;
            }
            if let (true, Ok(t)) = (measured, &r) {
                run_series[ri].samples.push(t.elapsed.as_secs_f64() * 1e3);
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
        for (ri, rt) in runtimes.iter().enumerate().filter(|(_, r)| r.is_vessel()) {
            let _ = rt;
            ratios.push(Ratio::of(METRIC_RUN, &run_series[ri], &run_series[base]));
            ratios.push(Ratio::of(
                METRIC_FIRST_BYTE,
                &byte_series[ri],
                &byte_series[base],
            ));
        }
    }
    let mut series = run_series;
    series.extend(byte_series);
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
