//! CRI latency: the steps kubelet takes to start a pod, through containerd 1.6's CRI plugin,
//! per runtime handler (vessel vs runc), interleaved.
//!
//! Each iteration and runtime: RunPodSandbox; CreateContainer + StartContainer of the first
//! container (busybox `httpd` serving from the pod's /dev/shm); once it serves (untimed wait),
//! ExecSync of `/bin/true` in it; from the host, [`HTTP_REQUESTS`] GETs of a small page at the
//! pod's IP (p50 and p99 of their latency) and one GET of [`BLOB_BYTES`] (throughput);
//! StopPodSandbox + RemovePodSandbox.
//!
//! ExecSync waits for the server so that it measures an exec into a settled pod, as kubelet's
//! probes see it: until 2026-12-07 it ran while the container was still writing its 8 MiB blob,
//! which on KVM-PVM (a page fault ~5 ms) competed with the exec for the guest's vCPU.
//! The containerd is the test harness's ([`vessel_tests::cri::CriContainerd`]: CRI enabled,
//! its own CNI bridge and /24, pause and busybox images built locally).

use std::path::{Path, PathBuf};
use std::time::Instant;

use vessel_tests::cri::{
    container_config, http_fetch, CriContainerd, CriOptions, RUNC_HANDLER, VESSEL_HANDLER,
};

use crate::ctr::Runtime;
use crate::report::{Ratio, Series};
use crate::setup::VesselMode;

pub const METRIC_RUN_POD: &str = "RunPodSandbox";
pub const METRIC_FIRST_CONTAINER: &str = "CreateContainer+StartContainer (first container)";
pub const METRIC_EXEC: &str = "ExecSync /bin/true";
pub const METRIC_TEARDOWN: &str = "StopPodSandbox+RemovePodSandbox";
pub const METRIC_HTTP_P50: &str = "host→pod HTTP GET, p50 of the pod's requests";
pub const METRIC_HTTP_P99: &str = "host→pod HTTP GET, p99 of the pod's requests";
pub const METRIC_HTTP_THROUGHPUT: &str = "host←pod HTTP GET of 8 MiB";
const METRICS: [&str; 7] = [
    METRIC_RUN_POD,
    METRIC_FIRST_CONTAINER,
    METRIC_EXEC,
    METRIC_HTTP_P50,
    METRIC_HTTP_P99,
    METRIC_HTTP_THROUGHPUT,
    METRIC_TEARDOWN,
];
/// Units of [`METRICS`].
const UNITS: [&str; 7] = ["ms", "ms", "ms", "ms", "ms", "MB/s", "ms"];
/// Small GETs per pod.
pub const HTTP_REQUESTS: usize = 20;
/// The bounded transfer.
pub const BLOB_BYTES: usize = 8 << 20;
const HTTP_PORT: u16 = 8080;
/// The first container: a page and a blob in the pod's /dev/shm (memory, in the guest for
/// vessel), served by busybox httpd on every address.
const HTTPD: &str = "mkdir -p /dev/shm/www && echo ok > /dev/shm/www/i && \
    head -c 8388608 /dev/zero > /dev/shm/www/blob && exec httpd -f -p 8080 -h /dev/shm/www";

pub use crate::report::CriResult;

/// What the CRI measure needs from the run.
pub struct CriSpec<'a> {
    /// The runtimes compared, with the vessel mode of each vessel one.
    pub runtimes: &'a [(Runtime, Option<VesselMode>)],
    /// The vessel runtime config text per mode.
    pub configs: &'a [(VesselMode, String)],
    /// Where `containerd-shim-vessel-v2` is.
    pub shim_dir: Option<PathBuf>,
    /// The run's work dir (the vessel config file goes there).
    pub work: &'a Path,
}

/// One turn of the interleaved schedule: iteration, runtime index, whether it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub iteration: usize,
    pub runtime: usize,
    pub measured: bool,
}

/// The interleaved order: in iteration i every runtime (in order) with iterations left
/// (`warmup + runs` each) takes one turn; its first `warmup` turns are not measured.
pub fn schedule(plan: &[(usize, usize)]) -> Vec<Turn> {
    let iterations = plan.iter().map(|(w, r)| w + r).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..iterations {
        for (ri, (warmup, runs)) in plan.iter().enumerate() {
            if i < warmup + runs {
                out.push(Turn {
                    iteration: i,
                    runtime: ri,
                    measured: i >= *warmup,
                });
            }
        }
    }
    out
}

/// The times (ms) of one pod's four steps; the first error ends it.
fn one_pod(
    cri: &CriContainerd,
    handler: &str,
    name: &str,
    exec_timeout_s: i64,
) -> Result<[f64; 7], String> {
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let client = cri.client();
    let t = Instant::now();
    let pod = cri
        .run_pod(name, handler)
        .map_err(|e| format!("RunPodSandbox: {e:#}"))?;
    let run_pod = ms(t);
    let teardown = |pod_id: &str| -> Result<f64, String> {
        let t = Instant::now();
        client
            .stop_pod_sandbox(pod_id)
            .and_then(|_| client.remove_pod_sandbox(pod_id))
            .map_err(|e| format!("{e:#}"))?;
        Ok(ms(t))
    };
    let steps = (|| -> Result<(f64, f64, [f64; 3]), String> {
        let t = Instant::now();
        let id = client
            .create_container(
                &pod.id,
                &container_config("c0", &["sh", "-c", HTTPD]),
                &pod.config,
            )
            .and_then(|id| client.start_container(&id).map(|_| id))
            .map_err(|e| format!("CreateContainer+StartContainer: {e:#}"))?;
        let first = ms(t);
        let ip = wait_serving(cri, &pod.id)?;
        let t = Instant::now();
        let r = client
            .exec_sync(&id, &["/bin/true"], exec_timeout_s)
            .map_err(|e| format!("ExecSync /bin/true: {e:#}"))?;
        if r.exit_code != 0 {
            return Err(format!(
                "ExecSync /bin/true: exit code {}, stderr {:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            ));
        }
        let exec = ms(t);
        Ok((first, exec, http(&ip)?))
    })();
    let down = teardown(&pod.id);
    let (first, exec, [p50, p99, mbps]) = steps?;
    let down = down.map_err(|e| format!("StopPodSandbox+RemovePodSandbox: {e}"))?;
    Ok([run_pod, first, exec, p50, p99, mbps, down])
}

fn http_get(ip: &str, path: &str, limit: u64) -> Result<Vec<u8>, String> {
    http_fetch(
        ip,
        HTTP_PORT,
        path,
        std::time::Duration::from_secs(30),
        limit,
    )
    .map_err(|e| format!("{e:#}"))
}

/// The pod's IP once its server answers (untimed; the server starts after the blob is
/// written, so a page from it means the container's start-up work is done).
fn wait_serving(cri: &CriContainerd, pod_id: &str) -> Result<String, String> {
    let ip = cri
        .client()
        .pod_sandbox_status(pod_id, false)
        .map_err(|e| format!("PodSandboxStatus: {e:#}"))?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    cri.check_route(&ip)
        .map_err(|e| format!("pod IP {ip:?}: {e:#}"))?;
    let ready = Instant::now();
    loop {
        match http_get(&ip, "/i", 4096) {
            Ok(b) if b.ends_with(b"ok\n") => return Ok(ip),
            Ok(_) | Err(_) if ready.elapsed() < std::time::Duration::from_secs(300) => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Ok(b) => return Err(format!("GET /i: {:?}", String::from_utf8_lossy(&b))),
            Err(e) => return Err(format!("GET /i: {e}")),
        }
    }
}

/// From the host to the pod's IP: p50 and p99 (ms) of [`HTTP_REQUESTS`] small GETs, then the
/// throughput (MB/s) of one [`BLOB_BYTES`] GET.
fn http(ip: &str) -> Result<[f64; 3], String> {
    let get = |path: &str, limit: u64| http_get(ip, path, limit);
    let mut lat = Vec::with_capacity(HTTP_REQUESTS);
    for _ in 0..HTTP_REQUESTS {
        let t = Instant::now();
        let body = get("/i", 4096).map_err(|e| format!("GET /i: {e}"))?;
        if !body.ends_with(b"ok\n") {
            return Err(format!("GET /i: {:?}", String::from_utf8_lossy(&body)));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    let t = Instant::now();
    let blob = get("/blob", 1 << 24).map_err(|e| format!("GET /blob: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if blob.len() <= BLOB_BYTES {
        return Err(format!("GET /blob: {} bytes", blob.len()));
    }
    Ok([pick(0.5), pick(0.99), BLOB_BYTES as f64 / 1e6 / secs])
}

/// Runs the schedule. A runtime that fails stops being measured (its error is kept in each
/// of its series); the others go on. Setup failures (containerd, CNI) fail every series.
pub fn measure(spec: &CriSpec<'_>) -> CriResult {
    let runtimes: Vec<&Runtime> = spec.runtimes.iter().map(|(r, _)| r).collect();
    let mut series: Vec<Vec<Series>> = runtimes
        .iter()
        .map(|r| {
            METRICS
                .iter()
                .zip(UNITS)
                .map(|(m, u)| Series::new(&r.name, m, u))
                .collect()
        })
        .collect();
    let mut notes = Vec::new();
    let config_path = spec.work.join("vessel-config-cri.toml");
    let first_config = spec.configs.first().map(|(_, t)| t.clone());
    let started = first_config
        .as_ref()
        .map_or(Ok(()), |t| std::fs::write(&config_path, t))
        .map_err(|e| format!("writing {}: {e}", config_path.display()))
        .and_then(|_| {
            log::info!("cri: starting containerd with the CRI plugin, importing pause + busybox");
            CriContainerd::start_with(CriOptions {
                vessel_config: first_config.as_ref().map(|_| config_path.clone()),
                shim_dir: spec.shim_dir.clone(),
                env: Vec::new(),
            })
            .map_err(|e| format!("starting containerd with CRI: {e:#}"))
        });
    let cri = match started {
        Ok(c) => c,
        Err(e) => {
            for s in series.iter_mut().flatten() {
                s.fail(e.clone());
            }
            return finish(spec, series, notes);
        }
    };
    notes.push(format!(
        "CNI bridge {} on {}, pods' cgroup parent {}",
        cri.bridge(),
        cri.subnet(),
        cri.cgroup_parent()
    ));
    let plan: Vec<(usize, usize)> = runtimes.iter().map(|r| (r.warmup, r.runs)).collect();
    let mut current_mode = spec.configs.first().map(|(m, _)| *m);
    for turn in schedule(&plan) {
        let (rt, mode) = &spec.runtimes[turn.runtime];
        if series[turn.runtime][0].error.is_some() {
            continue;
        }
        if let Some(m) = mode {
            if current_mode != Some(*m) {
                let text = spec.configs.iter().find(|(x, _)| x == m).map(|(_, t)| t);
                if let Err(e) = text
                    .ok_or_else(|| format!("no vessel config for mode {m}"))
                    .and_then(|t| std::fs::write(&config_path, t).map_err(|e| e.to_string()))
                {
                    series[turn.runtime]
                        .iter_mut()
                        .for_each(|s| s.fail(e.clone()));
                    continue;
                }
                current_mode = Some(*m);
            }
        }
        let label = if turn.measured { "run" } else { "warm-up" };
        let nth = if turn.measured {
            turn.iteration - rt.warmup + 1
        } else {
            turn.iteration + 1
        };
        log::info!("cri: {} {label} {nth}", rt.name);
        cri.client().set_timeout(rt.timeout);
        let handler = if rt.is_vessel() {
            VESSEL_HANDLER
        } else {
            RUNC_HANDLER
        };
        let name = format!("vb-cri-{}-{}", rt.tag, turn.iteration);
        let exec_timeout = i64::try_from(rt.timeout.as_secs()).unwrap_or(i64::MAX);
        let t = Instant::now();
        match one_pod(&cri, handler, &name, exec_timeout) {
            Ok(times) => {
                if turn.measured {
                    for (s, v) in series[turn.runtime].iter_mut().zip(times) {
                        s.samples.push(v);
                    }
                }
            }
            Err(e) => {
                let msg = format!(
                    "{label} {nth} (after {:.1} s): {e}",
                    t.elapsed().as_secs_f64()
                );
                log::warn!("cri: {}: {msg}", rt.name);
                series[turn.runtime]
                    .iter_mut()
                    .for_each(|s| s.fail(msg.clone()));
                for e in cri.remove_all_pods() {
                    notes.push(format!("cleanup after the failure: {e}"));
                }
            }
        }
    }
    let left = cri.remove_all_pods();
    notes.extend(left.into_iter().map(|e| format!("cleanup: {e}")));
    drop(cri);
    finish(spec, series, notes)
}

fn finish(spec: &CriSpec<'_>, series: Vec<Vec<Series>>, notes: Vec<String>) -> CriResult {
    let series: Vec<Vec<Series>> = series
        .into_iter()
        .map(|v| v.into_iter().map(Series::finish).collect())
        .collect();
    let mut ratios = Vec::new();
    if let Some(base) = spec.runtimes.iter().position(|(r, _)| !r.is_vessel()) {
        for (ri, _) in spec
            .runtimes
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| r.is_vessel())
        {
            for (mi, m) in METRICS.iter().enumerate() {
                ratios.push(Ratio::of(m, &series[ri][mi], &series[base][mi]));
            }
        }
    }
    // Grouped by metric, runtimes side by side.
    let mut flat = Vec::new();
    for mi in 0..METRICS.len() {
        flat.extend(series.iter().map(|v| v[mi].clone()));
    }
    CriResult {
        commands: vec![
            "RunPodSandbox (pause image, CNI bridge, handler runc|vessel)".into(),
            "CreateContainer + StartContainer: busybox `httpd` serving a page and 8 MiB from the pod's /dev/shm".into(),
            "ExecSync [\"/bin/true\"] in it once its server answers (exit code 0 checked)".into(),
            format!("host → pod IP:{HTTP_PORT}: {HTTP_REQUESTS} × GET of a 3-byte page (p50, p99), 1 × GET of {} MiB (MB/s)", BLOB_BYTES >> 20),
            "StopPodSandbox + RemovePodSandbox".into(),
        ],
        schedule: spec
            .runtimes
            .iter()
            .map(|(r, _)| format!("{}: N={} after W={}", r.name, r.runs, r.warmup))
            .collect(),
        series: flat,
        ratios,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn schedule_interleaves_and_skips_warmups() {
        // vessel: 0 warm-ups, 1 run; runc: 1 warm-up, 3 runs.
        let s = schedule(&[(0, 1), (1, 3)]);
        let order: Vec<(usize, usize, bool)> = s
            .iter()
            .map(|t| (t.iteration, t.runtime, t.measured))
            .collect();
        assert_eq!(
            order,
            [
                (0, 0, true),
                (0, 1, false),
                (1, 1, true),
                (2, 1, true),
                (3, 1, true)
            ]
        );
        assert!(schedule(&[]).is_empty());
        assert_eq!(schedule(&[(2, 0)]).iter().filter(|t| t.measured).count(), 0);
    }

    fn result() -> CriResult {
        let rt = |name: &str, ty: &str| Runtime {
            name: name.into(),
            runtime_type: ty.into(),
            timeout: Duration::from_secs(1),
            tag: "x".into(),
            runs: 2,
            warmup: 0,
        };
        let runtimes = vec![
            (
                rt("vessel (cold)", "io.containerd.vessel.v2"),
                Some(VesselMode::Cold),
            ),
            (rt("runc", "io.containerd.runc.v2"), None),
        ];
        let spec = CriSpec {
            runtimes: &runtimes,
            configs: &[],
            shim_dir: None,
            work: Path::new("/nonexistent"),
        };
        let mk = |rt: &str, m: &str, v: &[f64], err: Option<&str>| {
            let mut s = Series::new(rt, m, "ms");
            s.samples = v.to_vec();
            s.error = err.map(str::to_string);
            s
        };
        let vessel: Vec<Series> = METRICS
            .iter()
            .map(|m| mk("vessel (cold)", m, &[14000.0, 16000.0], None))
            .collect();
        let mut runc: Vec<Series> = METRICS
            .iter()
            .map(|m| mk("runc", m, &[100.0, 300.0], None))
            .collect();
        runc[2] = mk(
            "runc",
            METRIC_EXEC,
            &[],
            Some("run 1: ExecSync /bin/true: exit code 1"),
        );
        finish(&spec, vec![vessel, runc], vec!["a note".into()])
    }

    #[test]
    fn ratios_table_and_json() {
        let r = result();
        assert_eq!(r.series.len(), 14);
        assert_eq!(r.series[0].metric, METRIC_RUN_POD);
        assert_eq!(r.series[1].runtime, "runc");
        assert_eq!(r.ratios.len(), 7);
        // p50: 15000 / 200
        assert_eq!(r.ratios[0].p50, Some(75.0));
        // No runc samples for ExecSync: no ratio, never a zero.
        assert_eq!(r.ratios[2].p50, None);
        let mut text = String::new();
        crate::report::render_cri(&mut text, &r);
        assert!(text.contains("## CRI latency"), "{text}");
        assert!(
            text.contains("vessel (cold): N=2 after W=0; runc: N=2 after W=0"),
            "{text}"
        );
        assert!(
            text.contains("| runc | ExecSync /bin/true | 0 | FAILED: run 1: ExecSync"),
            "{text}"
        );
        assert!(text.contains("75×"), "{text}");
        assert!(text.contains("note: a note"));
        let json = serde_json::to_string(&r).unwrap();
        let back: CriResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.series.len(), 14);
    }

    #[test]
    fn failed_setup_fails_every_series() {
        let rt = Runtime {
            name: "runc".into(),
            runtime_type: "io.containerd.runc.v2".into(),
            timeout: Duration::from_secs(1),
            tag: "r".into(),
            runs: 1,
            warmup: 0,
        };
        let runtimes = vec![(rt, None)];
        // A config path in a dir that does not exist: the measure fails before containerd.
        let configs = vec![(VesselMode::Cold, "x".to_string())];
        let r = measure(&CriSpec {
            runtimes: &runtimes,
            configs: &configs,
            shim_dir: None,
            work: Path::new("/nonexistent/vessel-bench"),
        });
        assert_eq!(r.series.len(), 7);
        for s in &r.series {
            assert!(s.summary.is_none());
            assert!(
                s.error.as_deref().unwrap().contains("writing"),
                "{:?}",
                s.error
            );
        }
    }
}
