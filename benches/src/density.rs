//! Density/concurrency: K pods launched at once (`ctr run -d ... sleep`), time until every
//! task is RUNNING.

use std::time::{Duration, Instant};

use crate::ctr::{step_error, Ctr, Runtime};
use crate::report::{DensityPoint, Series};

/// Launches `pods` pods of `rt` together; every pod is removed afterwards. The deadline for
/// the whole point is the runtime's timeout times `pods` (they share the CPUs).
pub fn measure_point(ctr: &Ctr, rt: &Runtime, pods: usize) -> DensityPoint {
    let ids: Vec<String> = (0..pods)
        .map(|i| format!("vb-d-{}-{pods}-{i}", rt.tag))
        .collect();
    let timeout = rt.timeout * u32::try_from(pods.max(1)).unwrap_or(u32::MAX);
    let mut per_pod = Series::new(&rt.name, "ctr run -d", "ms");
    let mut error = None;
    log::info!("density: {} launching {pods} pods at once", rt.name);
    let t0 = Instant::now();
    let results: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let (what, r) = ctr.run_idle_pod(rt, id, timeout);
                    (step_error(&what, &r), r.ok().map(|t| t.elapsed))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok((err, elapsed)) => {
                    if let (None, Some(e)) = (&err, elapsed) {
                        per_pod.samples.push(e.as_secs_f64() * 1e3);
                    }
                    err
                }
                Err(_) => Some("a launcher thread panicked".into()),
            })
            .collect()
    });
    if let Some(e) = results.into_iter().flatten().next() {
        error = Some(e);
    }
    let mut all_running_ms = None;
    if error.is_none() {
        match wait_all_running(ctr, &ids, t0 + timeout) {
            Ok(at) => all_running_ms = Some(at.duration_since(t0).as_secs_f64() * 1e3),
            Err(e) => error = Some(e),
        }
    }
    for id in &ids {
        if let Err(e) = ctr.remove(id, rt.timeout) {
            log::warn!("removing {id}: {e}");
            error.get_or_insert(format!("cleanup of {id} failed: {e}"));
        }
    }
    DensityPoint {
        runtime: rt.name.clone(),
        pods,
        all_running_ms,
        per_pod: per_pod.finish(),
        error,
        skipped: None,
    }
}

/// Polls `ctr tasks ls` until every id is RUNNING; returns when that was first seen.
fn wait_all_running(ctr: &Ctr, ids: &[String], deadline: Instant) -> Result<Instant, String> {
    loop {
        let tasks = ctr.tasks().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let not_running: Vec<&String> = ids
            .iter()
            .filter(|id| !tasks.iter().any(|t| &t.id == *id && t.status == "RUNNING"))
            .collect();
        if not_running.is_empty() {
            return Ok(now);
        }
        if now >= deadline {
            return Err(format!("not RUNNING by the deadline: {not_running:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
