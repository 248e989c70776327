//! Host memory per idle pod: N `sleep` containers kept running, then the PSS of each pod's
//! shim process tree (vessel: shim + VMM, whose PSS includes the guest memory it touched;
//! runc: shim + the container's processes).

use std::path::Path;
use std::time::Duration;

use crate::ctr::{step_error, Ctr, Runtime};
use crate::procmem::{tree_memory, ProcTable};
use crate::report::{MemoryPoint, PodMemory};

/// Measures `runtime` with `pods` idle pods; every pod is removed afterwards.
pub fn measure_point(ctr: &Ctr, rt: &Runtime, pods: usize, settle: Duration) -> MemoryPoint {
    let ids: Vec<String> = (0..pods)
        .map(|i| format!("vb-m-{}-{pods}-{i}", rt.tag))
        .collect();
    let mut point = MemoryPoint {
        runtime: rt.name.clone(),
        pods,
        pss_per_pod_kib: None,
        rss_per_pod_kib: None,
        pods_measured: Vec::new(),
        error: None,
        skipped: None,
    };
    let mut started = Vec::new();
    for id in &ids {
        log::info!(
            "memory: {} starting pod {} of {pods}",
            rt.name,
            started.len() + 1
        );
        let (what, r) = ctr.run_idle_pod(rt, id, rt.timeout);
        started.push(id.clone());
        if let Some(e) = step_error(&what, &r) {
            point.error = Some(e);
            break;
        }
    }
    if point.error.is_none() {
        std::thread::sleep(settle);
        match pods_memory(ctr, &started) {
            Ok(measured) => {
                let n = measured.len() as f64;
                let pss: u64 = measured.iter().map(|p| p.rollup.pss_kib).sum();
                let rss: u64 = measured.iter().map(|p| p.rollup.rss_kib).sum();
                point.pss_per_pod_kib = Some(pss as f64 / n);
                point.rss_per_pod_kib = Some(rss as f64 / n);
                point.pods_measured = measured;
            }
            Err(e) => point.error = Some(e),
        }
    }
    for id in &started {
        if let Err(e) = ctr.remove(id, rt.timeout) {
            log::warn!("removing {id}: {e}");
            if point.error.is_none() {
                point.error = Some(format!("cleanup of {id} failed: {e}"));
            }
        }
    }
    point
}

/// Every pod in `ids` must be RUNNING with a shim that has at least one child (the container
/// or the VMM); then their memory.
fn pods_memory(ctr: &Ctr, ids: &[String]) -> Result<Vec<PodMemory>, String> {
    let tasks = ctr.tasks().map_err(|e| e.to_string())?;
    for id in ids {
        match tasks.iter().find(|t| &t.id == id) {
            Some(t) if t.status == "RUNNING" => {}
            Some(t) => {
                return Err(format!(
                    "{id} is {} after the settle time, not RUNNING",
                    t.status
                ))
            }
            None => return Err(format!("{id} has no task")),
        }
    }
    let proc_root = Path::new("/proc");
    let table = ProcTable::scan(proc_root).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for id in ids {
        let shim = table
            .find_shim(&ctr.namespace, id)
            .ok_or_else(|| format!("no shim process found for {id} (looked for containerd-shim-* -namespace {} -id {id})", ctr.namespace))?;
        let mem = tree_memory(proc_root, &table, shim);
        if mem.pids.len() < 2 {
            return Err(format!(
                "the shim of {id} (pid {shim}) has no live child process: {:?}",
                mem.comms
            ));
        }
        out.push(PodMemory {
            id: id.clone(),
            shim_pid: shim,
            processes: mem.comms,
            rollup: mem.total,
        });
    }
    Ok(out)
}
