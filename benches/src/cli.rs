//! Command-line options and the defaults of a full and a `--quick` run.

use std::path::PathBuf;

use clap::Parser;

use crate::setup::{parse_modes, VesselMode};

/// The measures, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Measure {
    Start,
    Memory,
    Density,
    Boot,
    /// Pod start through containerd's CRI plugin (RunPodSandbox, first container, ExecSync).
    Cri,
}

/// Benchmarks vessel against runc (start latency, memory per pod, density) under a containerd
/// it starts itself, and vessel-vmm against qemu microvm (boot). Writes a table to stdout and
/// results.json, results.md and SVG charts to --out.
#[derive(Debug, Clone, Parser)]
#[command(name = "vessel-bench", version)]
pub struct Cli {
    /// CI-sized run: fewer runs and pods (explicit options still win).
    #[arg(long)]
    pub quick: bool,
    /// Run only these measures (repeat or comma-separate); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Measure>,
    /// Measured runs per runtime for start latency [default: 20, quick 5].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Warm-up runs per runtime, discarded [default: 3, quick 1].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Measured start-latency runs for vessel pods [default: --runs] (a cold vessel pod
    /// takes minutes on KVM-PVM).
    #[arg(long)]
    pub vessel_runs: Option<usize>,
    /// Warm-up runs for vessel pods [default: --warmup].
    #[arg(long)]
    pub vessel_warmup: Option<usize>,
    /// Measured CRI pods for vessel [default: --vessel-runs, else 2, quick 1] (a VM pod
    /// through CRI costs about a minute on KVM-PVM).
    #[arg(long)]
    pub cri_vessel_runs: Option<usize>,
    /// Boots per VMM for the boot comparison [default: 3, quick 1].
    #[arg(long)]
    pub boot_runs: Option<usize>,
    /// Idle pod counts for the memory measure [default: 1,10,50, quick 1,3].
    #[arg(long, value_delimiter = ',')]
    pub pods: Vec<usize>,
    /// Pods launched at once for the density measure [default: 10, quick 3].
    #[arg(long, value_delimiter = ',')]
    pub density: Vec<usize>,
    /// Cap on vessel pods per memory/density point (larger points are reported as skipped).
    #[arg(long)]
    pub max_vessel_pods: Option<usize>,
    /// How vessel pods start: cold boot, VM snapshot restore, or both. `snapshot`/`both` also
    /// time vessel-vmm restoring a snapshot in the boot measure.
    #[arg(long, default_value = "cold", value_parser = ["cold", "snapshot", "both"])]
    pub vessel_mode: String,
    /// Output directory for results.json, results.md and the SVG charts.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Guest kernel [default: $VESSEL_KERNEL, else the runtime config's].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs with the agent [default: $VESSEL_INITRD, else the runtime config's].
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// vessel-vmm [default: $VESSEL_BIN_DIR/, else the runtime config's, else next to this
    /// binary, else PATH].
    #[arg(long)]
    pub vmm: Option<PathBuf>,
    /// containerd-shim-vessel-v2 [default: $VESSEL_BIN_DIR/, else next to this binary, else
    /// PATH].
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// qemu-system-x86_64 [default: PATH].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Firecracker, built from its public source, for the boot measure (without it that
    /// series says it was not run).
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Guest memory (MiB), for vessel pods and both VMMs.
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u32,
    /// Guest vCPUs, for vessel pods and both VMMs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Bound (s) on one runc container operation.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Bound (s) on one vessel container operation (a cold boot takes ~1 min on KVM-PVM).
    #[arg(long, default_value_t = 300)]
    pub vessel_timeout: u64,
    /// Bound (s) on one VM boot in the boot comparison.
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// Seconds to let idle pods settle before reading their memory.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Keep the work directory (vessel state, VMM logs) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// apt-get install the Debian packages of missing tools (containerd, runc, qemu, busybox).
    #[arg(long)]
    pub install_missing: bool,
    /// Measure nothing: re-render the table and charts of an earlier results.json into --out.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub render: Option<PathBuf>,
    /// Log level of the harness's progress messages (stderr).
    #[arg(long, default_value = "info", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("unknown log level {s:?}"))
}

/// The options with the defaults of a full or quick run filled in.
#[derive(Debug, Clone)]
pub struct Plan {
    pub measures: Vec<Measure>,
    pub runs: usize,
    pub warmup: usize,
    pub vessel_runs: usize,
    pub vessel_warmup: usize,
    /// CRI measure: vessel pods measured and warm-ups (runc uses `runs`/`warmup`).
    pub cri_vessel_runs: usize,
    pub cri_vessel_warmup: usize,
    pub boot_runs: usize,
    pub pods: Vec<usize>,
    pub density: Vec<usize>,
    pub modes: Vec<VesselMode>,
}

impl Cli {
    pub fn plan(&self) -> Result<Plan, String> {
        let q = self.quick;
        let mut measures = if self.only.is_empty() {
            vec![
                Measure::Start,
                Measure::Memory,
                Measure::Density,
                Measure::Boot,
                Measure::Cri,
            ]
        } else {
            self.only.clone()
        };
        measures.sort();
        measures.dedup();
        let pick = |v: &Vec<usize>, full: &[usize], quick: &[usize]| {
            if v.is_empty() {
                if q {
                    quick.to_vec()
                } else {
                    full.to_vec()
                }
            } else {
                v.clone()
            }
        };
        let runs = self.runs.unwrap_or(if q { 5 } else { 20 });
        let warmup = self.warmup.unwrap_or(if q { 1 } else { 3 });
        let plan = Plan {
            measures,
            runs,
            warmup,
            vessel_runs: self.vessel_runs.unwrap_or(runs),
            vessel_warmup: self.vessel_warmup.unwrap_or(warmup),
            cri_vessel_runs: self.cri_vessel_runs.or(self.vessel_runs).unwrap_or(if q {
                1
            } else {
                2
            }),
            cri_vessel_warmup: self.vessel_warmup.unwrap_or(0),
            boot_runs: self.boot_runs.unwrap_or(if q { 1 } else { 3 }),
            pods: pick(&self.pods, &[1, 10, 50], &[1, 3]),
            density: pick(&self.density, &[10], &[3]),
            modes: parse_modes(&self.vessel_mode)?,
        };
        if plan.runs == 0
            || plan.boot_runs == 0
            || plan.vessel_runs == 0
            || plan.cri_vessel_runs == 0
        {
            return Err(
                "--runs, --vessel-runs, --cri-vessel-runs and --boot-runs must be at least 1"
                    .into(),
            );
        }
        if plan.pods.contains(&0) || plan.density.contains(&0) {
            return Err("--pods and --density counts must be at least 1".into());
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vessel-bench").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn quick_defaults_and_overrides() {
        let p = parse(&["--quick"]).plan().unwrap();
        assert_eq!((p.runs, p.warmup, p.boot_runs), (5, 1, 1));
        assert_eq!(p.pods, [1, 3]);
        assert_eq!(p.measures.len(), 5);
        assert_eq!((p.cri_vessel_runs, p.cri_vessel_warmup), (1, 0));
        let p = parse(&[
            "--quick",
            "--runs",
            "2",
            "--pods",
            "1,2",
            "--only",
            "memory,start",
        ])
        .plan()
        .unwrap();
        assert_eq!(p.runs, 2);
        assert_eq!(p.pods, [1, 2]);
        assert_eq!(p.measures, [Measure::Start, Measure::Memory]);
        let p = parse(&[]).plan().unwrap();
        assert_eq!((p.runs, p.warmup), (20, 3));
        assert_eq!((p.cri_vessel_runs, p.cri_vessel_warmup), (2, 0));
        assert_eq!((p.vessel_runs, p.vessel_warmup), (20, 3));
        let p = parse(&["--vessel-runs", "2", "--vessel-warmup", "0"])
            .plan()
            .unwrap();
        assert_eq!((p.runs, p.vessel_runs, p.vessel_warmup), (20, 2, 0));
        assert_eq!(p.pods, [1, 10, 50]);
        assert_eq!(p.modes, [VesselMode::Cold]);
        assert_eq!((p.cri_vessel_runs, p.cri_vessel_warmup), (2, 0));
        let p = parse(&["--only", "cri", "--cri-vessel-runs", "1"])
            .plan()
            .unwrap();
        assert_eq!(p.measures, [Measure::Cri]);
        assert_eq!(p.cri_vessel_runs, 1);
        let p = parse(&["--vessel-mode", "both"]).plan().unwrap();
        assert_eq!(p.modes, [VesselMode::Cold, VesselMode::Snapshot]);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(parse(&["--runs", "0"]).plan().is_err());
        assert!(parse(&["--cri-vessel-runs", "0"]).plan().is_err());
        assert!(parse(&["--pods", "0"]).plan().is_err());
        assert!(Cli::try_parse_from(["vessel-bench", "--only", "speed"]).is_err());
        assert!(Cli::try_parse_from(["vessel-bench", "--vessel-mode", "warm"]).is_err());
    }
}
