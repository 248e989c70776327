//! One benchmark run: check prerequisites, set up, measure, write the results.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::boot::{self, BootSpec};
use crate::cli::{Cli, Measure, Plan};
use crate::ctr::Runtime;
use crate::machine::Machine;
use crate::prereq::{debian_packages, find_tools, Needs, Overrides, PrereqError, SearchEnv, Tools};
use crate::report::{
    DensityPoint, DensityResult, MemoryPoint, MemoryResult, Params, Report, Series,
};
use crate::setup::{self, mode_available, vessel_config, Bed, VesselMode, VesselSettings, IMAGE};
use crate::stats::ratio;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    #[error("installing {packages:?}: {detail}")]
    Install {
        packages: Vec<String>,
        detail: String,
    },
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error("work directory")]
    Work(#[source] std::io::Error),
    #[error("writing results to {dir}")]
    Output {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The finished run: the report, where it was written, and whether anything failed.
pub struct Outcome {
    pub report: Report,
    pub written: Vec<PathBuf>,
}

fn needs(plan: &Plan) -> Needs {
    let m = &plan.measures;
    Needs {
        containerd: m.iter().any(|x| *x != Measure::Boot),
        boot: m.contains(&Measure::Boot),
        // Makes snapshots, and cleans up sandboxes a killed step left behind.
        vessel_cli: m.iter().any(|x| *x != Measure::Boot),
    }
}

/// Paths from the options, else from the environment `scripts/artifacts.sh` prints
/// (`VESSEL_KERNEL`, `VESSEL_INITRD`, `VESSEL_BIN_DIR`).
fn overrides(cli: &Cli) -> Overrides {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let bin = |name: &str| env("VESSEL_BIN_DIR").map(|d| d.join(name));
    Overrides {
        vmm: cli.vmm.clone().or_else(|| bin("vessel-vmm")),
        kernel: cli.kernel.clone().or_else(|| env("VESSEL_KERNEL")),
        initrd: cli.initrd.clone().or_else(|| env("VESSEL_INITRD")),
        shim: cli
            .shim
            .clone()
            .or_else(|| bin("containerd-shim-vessel-v2")),
        qemu: cli.qemu.clone(),
    }
}

/// Finds the tools; with `install`, apt-gets the Debian packages of missing ones first.
fn tools(cli: &Cli, needs: Needs) -> Result<Tools, RunError> {
    let env = SearchEnv::from_process();
    match find_tools(needs, &overrides(cli), &env) {
        Ok(t) => Ok(t),
        Err(PrereqError::Missing(missing)) if cli.install_missing => {
            let packages = debian_packages(&missing);
            if packages.is_empty() {
                return Err(PrereqError::Missing(missing).into());
            }
            log::info!("installing {packages:?}");
            let status = std::process::Command::new("apt-get")
                .args(["install", "-y"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map_err(|e| RunError::Install {
                    packages: packages.clone(),
                    detail: vessel_protocol::errors::chain(&e),
                })?;
            if !status.success() {
                return Err(RunError::Install {
                    packages,
                    detail: status.to_string(),
                });
            }
            Ok(find_tools(needs, &overrides(cli), &env)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k / 1024)
}

/// Why `pods` vessel pods are not run, if they are not.
fn vessel_skip(cli: &Cli, pods: usize) -> Option<String> {
    if let Some(max) = cli.max_vessel_pods {
        if pods > max {
            return Some(format!("{pods} pods > --max-vessel-pods {max}"));
        }
    }
    // Guest memory plus ~40 MiB of VMM and shim per pod must fit in 80% of what is free.
    let need = pods as u64 * (u64::from(cli.mem_mib) + 40);
    match mem_available_mib() {
        Some(avail) if need > avail * 8 / 10 => Some(format!(
            "{pods} pods need ~{need} MiB, {avail} MiB available"
        )),
        _ => None,
    }
}

/// Runs the plan. Measures that fail are reported in the results (never as zeros); setup
/// problems (missing tools, containerd not starting) are errors.
pub fn run(cli: &Cli, command_line: String) -> Result<Outcome, RunError> {
    let plan = cli.plan().map_err(RunError::Usage)?;
    let needs = needs(&plan);
    let tools = tools(cli, needs)?;
    let mut failures = Vec::new();
    // Pod start modes the runtime cannot do are reported failures (runc is still measured,
    // and the boot measure times VMM-level restores on its own).
    let mut modes = Vec::new();
    if needs.containerd {
        for m in &plan.modes {
            match mode_available(*m, tools.vessel_cli.as_deref()) {
                Ok(()) => modes.push(*m),
                Err(e) => failures.push(vessel_protocol::errors::chain(&e)),
            }
        }
    }
    let machine = Machine::probe(&tools);
    let work = tempfile::Builder::new()
        .prefix("vbench")
        .tempdir_in("/tmp")
        .map_err(RunError::Work)?;
    let params = Params {
        command_line,
        quick: cli.quick,
        only: plan
            .measures
            .iter()
            .map(|m| format!("{m:?}").to_lowercase())
            .collect(),
        runs: plan.runs,
        warmup: plan.warmup,
        vessel_runs: plan.vessel_runs,
        vessel_warmup: plan.vessel_warmup,
        boot_runs: plan.boot_runs,
        pods: plan.pods.clone(),
        density: plan.density.clone(),
        max_vessel_pods: cli.max_vessel_pods,
        vessel_modes: plan.modes.iter().map(ToString::to_string).collect(),
        guest_memory_mib: cli.mem_mib,
        guest_vcpus: cli.vcpus,
        runc_timeout_secs: cli.timeout,
        vessel_timeout_secs: cli.vessel_timeout,
        settle_secs: cli.settle,
        image: IMAGE.to_string(),
    };
    let mut report = Report {
        machine,
        params,
        start: None,
        boot: None,
        memory: None,
        density: None,
        cri: None,
        failures,
        notes: Vec::new(),
        load_avg_at_end: String::new(),
    };
    let ctr_measures = [Measure::Start, Measure::Memory, Measure::Density];
    if plan.measures.iter().any(|m| ctr_measures.contains(m)) {
        containerd_measures(cli, &plan, &tools, &modes, work.path(), &mut report)?;
    }
    if plan.measures.contains(&Measure::Cri) {
        cri_measure(cli, &plan, &tools, &modes, work.path(), &mut report)?;
    }
    if plan.measures.contains(&Measure::Boot) {
        let spec = BootSpec {
            vmm: tools.vmm.clone().unwrap_or_default(),
            qemu: tools.qemu.clone().unwrap_or_default(),
            firecracker: cli.firecracker.clone(),
            kernel: tools.kernel.clone().unwrap_or_default(),
            initrd: tools.initrd.clone().unwrap_or_default(),
            mem_mib: cli.mem_mib,
            vcpus: cli.vcpus,
            runs: plan.boot_runs,
            warmup: 0,
            timeout: Duration::from_secs(cli.boot_timeout),
            work: work.path().to_path_buf(),
            pvm: std::path::Path::new("/sys/module/kvm_pvm").exists(),
            restore: plan.modes.contains(&VesselMode::Snapshot),
        };
        let b = boot::measure(&spec);
        collect_series_failures(&mut report.failures, "boot", &b.series);
        report.boot = Some(b);
    }
    report.load_avg_at_end = crate::machine::load_avg();
    // Never delete through a mount (a container rootfs shared into a sandbox dir).
    let mut left = vessel_tests::containerd::mounts_under(work.path());
    left.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &left {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    let mut work = work;
    if !vessel_tests::containerd::mounts_under(work.path()).is_empty() {
        report.failures.push(format!(
            "mounts left under {}; not removing it",
            work.path().display()
        ));
        work.disable_cleanup(true);
    } else if !left.is_empty() {
        report
            .failures
            .push(format!("cleanup: unmounted leftovers {left:?}"));
    }
    if cli.keep_work {
        let kept = work.keep();
        log::info!("work directory kept: {}", kept.display());
    }
    let written =
        crate::report::write_all(&report, &cli.out).map_err(|source| RunError::Output {
            dir: cli.out.clone(),
            source,
        })?;
    Ok(Outcome { report, written })
}

fn collect_series_failures(failures: &mut Vec<String>, measure: &str, series: &[Series]) {
    let mut seen = std::collections::HashSet::new();
    for s in series {
        if let Some(e) = &s.error {
            if seen.insert((s.runtime.clone(), e.clone())) {
                failures.push(format!("{measure}: {} {}: {e}", s.runtime, s.metric));
            }
        }
    }
}

fn vessel_settings(cli: &Cli, tools: &Tools, work: &Path) -> VesselSettings {
    VesselSettings {
        vmm: tools.vmm.clone().unwrap_or_default(),
        kernel: tools.kernel.clone().unwrap_or_default(),
        initrd: tools.initrd.clone().unwrap_or_default(),
        memory_mib: cli.mem_mib,
        vcpus: cli.vcpus,
        // Short: a CRI sandbox id is 64 characters, and the vsock socket path under it must
        // fit a Unix socket address (107 bytes).
        state_root: work.join("state"),
        // The runtime gives up a little before the harness would kill ctr.
        agent_timeout_secs: cli.vessel_timeout.saturating_sub(30).max(30),
        snapshot_dir: work.join("snapshots"),
    }
}

/// The vessel config text per mode; a mode the runtime cannot do is a reported failure
/// (once) and leaves `modes`.
fn vessel_configs(
    settings: &VesselSettings,
    modes: &mut Vec<VesselMode>,
    failures: &mut Vec<String>,
) -> Result<Vec<(VesselMode, String)>, RunError> {
    let mut configs = Vec::new();
    for m in modes.clone() {
        match vessel_config(settings, m) {
            Ok(text) => configs.push((m, text)),
            Err(e @ setup::SetupError::ModeUnavailable { .. }) => {
                if !failures.contains(&vessel_protocol::errors::chain(&e)) {
                    failures.push(vessel_protocol::errors::chain(&e));
                }
                modes.retain(|x| *x != m);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(configs)
}

/// The CRI measure, on a containerd of its own (CRI plugin enabled, CNI bridge).
fn cri_measure(
    cli: &Cli,
    plan: &Plan,
    tools: &Tools,
    modes: &[VesselMode],
    work: &Path,
    report: &mut Report,
) -> Result<(), RunError> {
    let settings = vessel_settings(cli, tools, work);
    let mut modes = modes.to_vec();
    let configs = vessel_configs(&settings, &mut modes, &mut report.failures)?;
    let runtimes = setup::runtimes(
        &modes,
        setup::Schedule {
            timeout: Duration::from_secs(cli.timeout),
            runs: plan.runs,
            warmup: plan.warmup,
        },
        setup::Schedule {
            timeout: Duration::from_secs(cli.vessel_timeout),
            runs: plan.cri_vessel_runs,
            warmup: plan.cri_vessel_warmup,
        },
    );
    let c = crate::cri::measure(&crate::cri::CriSpec {
        runtimes: &runtimes,
        configs: &configs,
        shim_dir: tools.shim_dir(),
        work,
    });
    collect_series_failures(&mut report.failures, "cri", &c.series);
    let root = settings.state_root.display().to_string();
    for p in vessel_tests::cri::processes_mentioning(&root) {
        report
            .failures
            .push(format!("cri cleanup: process left: {p}"));
    }
    report.cri = Some(c);
    Ok(())
}

fn containerd_measures(
    cli: &Cli,
    plan: &Plan,
    tools: &Tools,
    modes: &[VesselMode],
    work: &Path,
    report: &mut Report,
) -> Result<(), RunError> {
    let settings = vessel_settings(cli, tools, work);
    let mut modes = modes.to_vec();
    let configs = vessel_configs(&settings, &mut modes, &mut report.failures)?;
    let first = match configs.first() {
        Some((_, t)) => t.clone(),
        None => vessel_config(&settings, VesselMode::Cold)?,
    };
    log::info!("starting containerd and importing the busybox image");
    let bed = Bed::start(tools, work, &first)?;
    // Snapshot mode: make the snapshot before measuring (else the first pod pays for it).
    if let Some((_, text)) = configs.iter().find(|(m, _)| *m == VesselMode::Snapshot) {
        let path = work.join("vessel-config-snapshot.toml");
        let made = std::fs::write(&path, text)
            .map_err(|e| setup::SetupError::Write {
                path: path.clone(),
                source: e,
            })
            .and_then(|_| {
                let cli_path = tools.vessel_cli.as_deref().unwrap_or(Path::new("vessel"));
                log::info!("snapshot mode: vessel snapshot create (one cold boot)");
                setup::create_snapshot(
                    cli_path,
                    &path,
                    Duration::from_secs(cli.vessel_timeout + 60),
                )
            });
        match made {
            Ok(took) => report.notes.push(format!(
                "vessel snapshot create (before measuring): {:.1} s",
                took.as_secs_f64()
            )),
            Err(e) => {
                report.failures.push(vessel_protocol::errors::chain(&e));
                modes.retain(|m| *m != VesselMode::Snapshot);
            }
        }
    }
    let all = setup::runtimes(
        &modes,
        setup::Schedule {
            timeout: Duration::from_secs(cli.timeout),
            runs: plan.runs,
            warmup: plan.warmup,
        },
        setup::Schedule {
            timeout: Duration::from_secs(cli.vessel_timeout),
            runs: plan.vessel_runs,
            warmup: plan.vessel_warmup,
        },
    );
    let runtimes: Vec<Runtime> = all.iter().map(|(r, _)| r.clone()).collect();
    let mut current = modes.first().copied();
    let mut select = |ri: usize| -> Result<(), String> {
        let Some(mode) = all[ri].1 else { return Ok(()) };
        if current != Some(mode) {
            let text = configs
                .iter()
                .find(|(m, _)| *m == mode)
                .map(|(_, t)| t.as_str())
                .ok_or_else(|| format!("no config for mode {mode}"))?;
            bed.set_vessel_config(text)
                .map_err(|e| vessel_protocol::errors::chain(&e))?;
            current = Some(mode);
        }
        Ok(())
    };
    if let Err(e) = bed.ctr.remove_all(Duration::from_secs(60)) {
        log::warn!("leftover containers: {e}");
    }
    if plan.measures.contains(&Measure::Start) {
        let shim_log = bed.containerd.dir().join("containerd.log");
        let s = crate::start::measure(&bed.ctr, &runtimes, &shim_log, &mut select);
        collect_series_failures(&mut report.failures, "start", &s.series);
        report.start = Some(s);
    }
    if plan.measures.contains(&Measure::Memory) {
        let mut points = Vec::new();
        for &n in &plan.pods {
            for (ri, rt) in runtimes.iter().enumerate() {
                let empty = |error, skipped| MemoryPoint {
                    runtime: rt.name.clone(),
                    pods: n,
                    pss_per_pod_kib: None,
                    rss_per_pod_kib: None,
                    pods_measured: Vec::new(),
                    error,
                    skipped,
                };
                let skip = rt.is_vessel().then(|| vessel_skip(cli, n)).flatten();
                let point = match (skip, select(ri)) {
                    (Some(skip), _) => empty(None, Some(skip)),
                    (None, Err(e)) => empty(Some(e), None),
                    (None, Ok(())) => crate::memory::measure_point(
                        &bed.ctr,
                        rt,
                        n,
                        Duration::from_secs(cli.settle),
                    ),
                };
                if let Some(e) = &point.error {
                    report
                        .failures
                        .push(format!("memory: {} N={n}: {e}", rt.name));
                }
                points.push(point);
            }
        }
        let ratios = plan
            .pods
            .iter()
            .map(|&n| {
                let per = |vessel: bool| {
                    points
                        .iter()
                        .find(|p| p.pods == n && p.runtime.starts_with("vessel") == vessel)
                        .and_then(|p| p.pss_per_pod_kib)
                };
                (n, per(true).zip(per(false)).and_then(|(v, r)| ratio(v, r)))
            })
            .collect();
        report.memory = Some(MemoryResult {
            what: "PSS of each pod's shim process tree (vessel: shim + VMM incl. touched guest memory; runc: shim + container), `sleep` containers".into(),
            points,
            ratios,
        });
    }
    if plan.measures.contains(&Measure::Density) {
        let mut points = Vec::new();
        for &k in &plan.density {
            for (ri, rt) in runtimes.iter().enumerate() {
                let empty = |error, skipped| DensityPoint {
                    runtime: rt.name.clone(),
                    pods: k,
                    all_running_ms: None,
                    per_pod: Series::new(&rt.name, "ctr run -d", "ms"),
                    error,
                    skipped,
                };
                let skip = rt.is_vessel().then(|| vessel_skip(cli, k)).flatten();
                let point = match (skip, select(ri)) {
                    (Some(skip), _) => empty(None, Some(skip)),
                    (None, Err(e)) => empty(Some(e), None),
                    (None, Ok(())) => crate::density::measure_point(&bed.ctr, rt, k),
                };
                if let Some(e) = &point.error {
                    report
                        .failures
                        .push(format!("density: {} K={k}: {e}", rt.name));
                }
                points.push(point);
            }
        }
        report.density = Some(DensityResult { points });
    }
    if let Err(e) = bed.ctr.remove_all(Duration::from_secs(120)) {
        report.failures.push(format!("cleanup: {e}"));
    }
    for problem in bed.reap(
        &settings.state_root,
        tools.vessel_cli.as_deref(),
        Duration::from_secs(30),
    ) {
        log::warn!("{problem}");
        report.failures.push(format!("cleanup: {problem}"));
    }
    if !report.failures.is_empty() {
        // Shims log into containerd's log: keep it next to the results.
        let src = bed.containerd.dir().join("containerd.log");
        let dst = cli.out.join("containerd.log");
        match std::fs::create_dir_all(&cli.out).and_then(|_| std::fs::copy(&src, &dst)) {
            Ok(_) => log::info!("containerd's log (shims log there): {}", dst.display()),
            Err(e) => log::warn!("copying {}: {e}", src.display()),
        }
    }
    Ok(())
}
