//! The results: JSON model, text tables and the charts written to the output directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::procmem::Rollup;
use crate::stats::{ratio, Summary};
use crate::svg::{bar_chart, box_chart, fmt_num, Bar, BarGroup, BoxSeries};

/// The parameters of a run (named in every figure).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub command_line: String,
    pub quick: bool,
    pub only: Vec<String>,
    pub runs: usize,
    pub warmup: usize,
    #[serde(default)]
    pub vessel_runs: usize,
    #[serde(default)]
    pub vessel_warmup: usize,
    pub boot_runs: usize,
    pub pods: Vec<usize>,
    pub density: Vec<usize>,
    pub max_vessel_pods: Option<usize>,
    pub vessel_modes: Vec<String>,
    pub guest_memory_mib: u32,
    pub guest_vcpus: u32,
    pub runc_timeout_secs: u64,
    pub vessel_timeout_secs: u64,
    pub settle_secs: u64,
    pub image: String,
}

/// Samples of one thing measured for one runtime (milliseconds unless `unit` says otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub runtime: String,
    pub metric: String,
    pub unit: String,
    pub samples: Vec<f64>,
    pub summary: Option<Summary>,
    /// Why there are no (or fewer than asked) samples.
    pub error: Option<String>,
}

impl Series {
    pub fn new(runtime: &str, metric: &str, unit: &str) -> Series {
        Series {
            runtime: runtime.to_string(),
            metric: metric.to_string(),
            unit: unit.to_string(),
            samples: Vec::new(),
            summary: None,
            error: None,
        }
    }

    /// Computes the summary from the samples.
    pub fn finish(mut self) -> Series {
        self.summary = Summary::of(&self.samples);
        self
    }

    pub fn fail(&mut self, msg: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(msg.into());
        }
    }
}

/// `a ÷ b` at p50/p90/p99 (a is vessel, b the baseline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub metric: String,
    pub numerator: String,
    pub denominator: String,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

impl Ratio {
    pub fn of(metric: &str, a: &Series, b: &Series) -> Ratio {
        let pick = |f: fn(&Summary) -> f64| match (&a.summary, &b.summary) {
            (Some(x), Some(y)) => ratio(f(x), f(y)),
            _ => None,
        };
        Ratio {
            metric: metric.to_string(),
            numerator: a.runtime.clone(),
            denominator: b.runtime.clone(),
            p50: pick(|s| s.p50),
            p90: pick(|s| s.p90),
            p99: pick(|s| s.p99),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartResult {
    pub commands: Vec<String>,
    pub series: Vec<Series>,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootResult {
    pub marker: String,
    pub vessel_command: String,
    pub qemu_command: String,
    /// How restores were run (`--vessel-mode snapshot|both`).
    #[serde(default)]
    pub restore_command: Option<String>,
    /// How long `vessel-vmm snapshot-create` took (one cold boot + saving).
    #[serde(default)]
    pub snapshot_create_ms: Option<f64>,
    pub cpuid_removed_by_vessel: Vec<String>,
    pub qemu_cpu_features_not_mappable: Vec<String>,
    pub kernel_cmdline: String,
    pub notes: Vec<String>,
    /// Boot times (ms).
    pub series: Vec<Series>,
    /// The VMM process's PSS (MiB) when the marker appeared (guest memory touched included).
    pub memory: Vec<Series>,
    pub ratios: Vec<Ratio>,
}

/// Memory of one pod: its shim's process tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodMemory {
    pub id: String,
    pub shim_pid: u32,
    pub processes: Vec<String>,
    pub rollup: Rollup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryPoint {
    pub runtime: String,
    pub pods: usize,
    /// Mean PSS per pod (KiB) = sum over pods / pods.
    pub pss_per_pod_kib: Option<f64>,
    pub rss_per_pod_kib: Option<f64>,
    pub pods_measured: Vec<PodMemory>,
    pub error: Option<String>,
    /// Why this point was not measured (not a failure: e.g. `--max-vessel-pods`).
    #[serde(default)]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResult {
    pub what: String,
    pub points: Vec<MemoryPoint>,
    /// vessel ÷ runc of the per-pod PSS, per N.
    pub ratios: Vec<(usize, Option<f64>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityPoint {
    pub runtime: String,
    pub pods: usize,
    /// From launching all `ctr run -d` at once to every task RUNNING.
    pub all_running_ms: Option<f64>,
    /// Each `ctr run -d`'s own duration.
    pub per_pod: Series,
    pub error: Option<String>,
    /// Why this point was not measured (not a failure: e.g. `--max-vessel-pods`).
    #[serde(default)]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DensityResult {
    pub points: Vec<DensityPoint>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub params: Params,
    pub start: Option<StartResult>,
    pub boot: Option<BootResult>,
    pub memory: Option<MemoryResult>,
    pub density: Option<DensityResult>,
    /// Pod start through containerd's CRI plugin.
    #[serde(default)]
    pub cri: Option<CriResult>,
    /// Every measure that failed, in one place.
    pub failures: Vec<String>,
    /// Facts about the run worth knowing next to the figures.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The machine is shared: its load when the run ended.
    #[serde(default)]
    pub load_avg_at_end: String,
}

/// `352×`-style ratio text.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(v) if v >= 10.0 => format!("{v:.0}×"),
        Some(v) if v >= 0.01 => format!("{v:.2}×"),
        // A restore against a boot: "1/369×" says more than "0.00×".
        Some(v) if v > 0.0 => format!("1/{:.0}×", 1.0 / v),
        Some(v) => format!("{v:.2}×"),
        None => "-".into(),
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// A table cell for a point without a value: skipped (why) or FAILED (why).
fn not_measured(error: &Option<String>, skipped: &Option<String>) -> String {
    match (skipped, error) {
        (Some(why), _) => format!("skipped: {}", one_line(why, 200)),
        (None, Some(e)) => format!("FAILED: {}", one_line(e, 200)),
        (None, None) => "FAILED: no data".into(),
    }
}

/// A failure for a chart: its end, where the cause is.
fn chart_note(error: &str) -> String {
    format!(
        "FAILED: …{}",
        crate::exec::tail_chars(&one_line(error, 100_000), 110).trim_start_matches('…')
    )
}

/// One line, bounded: errors in tables are first lines.
pub fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

pub(crate) fn series_rows(out: &mut String, series: &[Series]) {
    let _ = writeln!(
        out,
        "| runtime | metric | n | p50 | p90 | p99 | min | max | unit |\n|---|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for s in series {
        match &s.summary {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
                    s.runtime,
                    s.metric,
                    m.n,
                    fmt_num(m.p50),
                    fmt_num(m.p90),
                    fmt_num(m.p99),
                    fmt_num(m.min),
                    fmt_num(m.max),
                    s.unit,
                    s.error
                        .as_ref()
                        .map(|e| format!(" (then failed: {})", one_line(e, 120)))
                        .unwrap_or_default()
                );
            }
            None => {
                let why = s.error.as_deref().unwrap_or("no samples");
                let _ = writeln!(
                    out,
                    "| {} | {} | 0 | FAILED: {} | | | | | |",
                    s.runtime,
                    s.metric,
                    one_line(why, 200)
                );
            }
        }
    }
}

pub(crate) fn ratio_rows(out: &mut String, ratios: &[Ratio]) {
    for r in ratios {
        let _ = writeln!(
            out,
            "ratio {} ÷ {} ({}): p50 {}, p90 {}, p99 {}",
            r.numerator,
            r.denominator,
            r.metric,
            fmt_ratio(r.p50),
            fmt_ratio(r.p90),
            fmt_ratio(r.p99)
        );
    }
}

/// The text report (markdown tables), headed by the machine and parameters.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(out, "vessel-bench results, {}", m.date_utc);
    let _ = writeln!(
        out,
        "machine: {} ({} logical CPUs, {} MiB), host kernel {}, {}, load at start {}",
        m.cpu_model, m.logical_cpus, m.memory_mib, m.host_kernel, m.kvm, m.load_avg_at_start
    );
    for (k, v) in &m.versions {
        let _ = writeln!(out, "  {k}: {v}");
    }
    let p = &r.params;
    let _ = writeln!(out, "command: {}", p.command_line);
    let _ = writeln!(
        out,
        "guest: {} MiB, {} vCPU(s); vessel mode(s): {}",
        p.guest_memory_mib,
        p.guest_vcpus,
        p.vessel_modes.join(",")
    );
    if let Some(s) = &r.start {
        let _ = writeln!(
            out,
            "\n## start latency (ms), N={} after W={} warm-ups{}, interleaved vessel/runc\n",
            p.runs,
            p.warmup,
            vessel_schedule(p)
        );
        for c in &s.commands {
            let _ = writeln!(out, "    {c}");
        }
        out.push('\n');
        series_rows(&mut out, &s.series);
        ratio_rows(&mut out, &s.ratios);
    }
    if let Some(b) = &r.boot {
        let _ = writeln!(
            out,
            "\n## VM boot (ms from VMM process start), N={} per VMM\n\nmarker: {}\n    {}\n    {}\n",
            p.boot_runs, b.marker, b.vessel_command, b.qemu_command
        );
        if let Some(c) = &b.restore_command {
            let _ = writeln!(out, "    {c}");
        }
        if let Some(ms) = b.snapshot_create_ms {
            let _ = writeln!(out, "snapshot-create took {} ms", fmt_num(ms));
        }
        out.push('\n');
        series_rows(&mut out, &b.series);
        out.push('\n');
        series_rows(&mut out, &b.memory);
        ratio_rows(&mut out, &b.ratios);
        for n in &b.notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
    if let Some(mem) = &r.memory {
        let _ = writeln!(
            out,
            "\n## host memory per idle pod ({}), settle {} s\n\n| runtime | pods | PSS/pod MiB | RSS/pod MiB | processes per pod |\n|---|---:|---:|---:|---|",
            mem.what, p.settle_secs
        );
        for pt in &mem.points {
            match (pt.pss_per_pod_kib, &pt.error) {
                (Some(pss), _) => {
                    let procs = pt
                        .pods_measured
                        .first()
                        .map(|pm| pm.processes.join("+"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} |",
                        pt.runtime,
                        pt.pods,
                        mib(pss),
                        pt.rss_per_pod_kib.map(mib).unwrap_or_default(),
                        procs
                    );
                }
                (None, e) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | | |",
                        pt.runtime,
                        pt.pods,
                        not_measured(e, &pt.skipped)
                    );
                }
            }
        }
        for (n, rt) in &mem.ratios {
            let _ = writeln!(
                out,
                "ratio vessel ÷ runc PSS/pod at N={n}: {}",
                fmt_ratio(*rt)
            );
        }
    }
    if let Some(d) = &r.density {
        let _ = writeln!(
            out,
            "\n## density: K pods started at once (`ctr run -d ... sleep`), time until all RUNNING\n\n| runtime | K | all running ms | per-pod ctr run p50 ms | p90 ms |\n|---|---:|---:|---:|---:|"
        );
        for pt in &d.points {
            match (pt.all_running_ms, &pt.error) {
                (Some(ms), _) => {
                    let s = pt.per_pod.summary.as_ref();
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} |",
                        pt.runtime,
                        pt.pods,
                        fmt_num(ms),
                        s.map(|s| fmt_num(s.p50)).unwrap_or_default(),
                        s.map(|s| fmt_num(s.p90)).unwrap_or_default()
                    );
                }
                (None, e) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | | |",
                        pt.runtime,
                        pt.pods,
                        not_measured(e, &pt.skipped)
                    );
                }
            }
        }
    }
    if let Some(c) = &r.cri {
        render_cri(&mut out, c);
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !r.load_avg_at_end.is_empty() {
        let _ = writeln!(out, "\nload average at the end: {}", r.load_avg_at_end);
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\n## failures\n");
        for f in &r.failures {
            let _ = writeln!(out, "- {}", one_line(f, 600));
        }
    }
    out
}

/// ", vessel N=3 after W=0" when vessel pods ran a different schedule.
fn vessel_schedule(p: &Params) -> String {
    if p.vessel_runs == 0 || (p.vessel_runs, p.vessel_warmup) == (p.runs, p.warmup) {
        String::new()
    } else {
        format!(" (vessel: N={} after W={})", p.vessel_runs, p.vessel_warmup)
    }
}

fn caption(r: &Report, what: &str) -> Vec<String> {
    vec![
        what.to_string(),
        r.machine.caption(),
        format!(
            "guest {} MiB / {} vCPU · {}",
            r.params.guest_memory_mib, r.params.guest_vcpus, r.params.command_line
        ),
    ]
}

fn boxes(series: &[Series]) -> Vec<BoxSeries> {
    series
        .iter()
        .map(|s| BoxSeries {
            label: format!("{} {}", s.runtime, s.metric),
            summary: s.summary.clone(),
            note: s.error.as_ref().map(|e| chart_note(e)),
        })
        .collect()
}

/// The charts of a report: (file name, SVG text).
pub fn render_charts(r: &Report) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(s) = &r.start {
        let what = format!(
            "N={} after W={} warm-ups{} (interleaved), busybox image",
            r.params.runs,
            r.params.warmup,
            vessel_schedule(&r.params)
        );
        let (sandbox, ctr): (Vec<Series>, Vec<Series>) = s
            .series
            .iter()
            .cloned()
            .partition(|x| x.metric.starts_with("sandbox"));
        out.push((
            "start.svg".to_string(),
            box_chart(
                "start latency: ctr run --rm",
                &caption(r, &what),
                "ms",
                &boxes(&ctr),
            ),
        ));
        if !sandbox.is_empty() {
            let what = "vessel pods: the shim's Create to 'sandbox ready' (VM booted or restored, agent answered), every attempt";
            out.push((
                "start-sandbox.svg".to_string(),
                box_chart(
                    "vessel pod sandbox stage",
                    &caption(r, what),
                    "ms",
                    &boxes(&sandbox),
                ),
            ));
        }
    }
    if let Some(b) = &r.boot {
        let what = format!("N={} per VMM · marker: {}", r.params.boot_runs, b.marker);
        out.push((
            "boot.svg".to_string(),
            box_chart(
                "VM boot: vessel-vmm vs qemu microvm",
                &caption(r, &what),
                "ms",
                &boxes(&b.series),
            ),
        ));
        out.push((
            "boot-memory.svg".to_string(),
            box_chart(
                "VMM process PSS when the agent serves",
                &caption(r, &what),
                "MiB",
                &boxes(&b.memory),
            ),
        ));
    }
    if let Some(m) = &r.memory {
        let mut ns: Vec<usize> = m.points.iter().map(|p| p.pods).collect();
        ns.sort_unstable();
        ns.dedup();
        let groups = ns
            .iter()
            .map(|n| BarGroup {
                label: format!("N={n}"),
                bars: m
                    .points
                    .iter()
                    .filter(|p| p.pods == *n)
                    .map(|p| Bar {
                        series: p.runtime.clone(),
                        value: p.pss_per_pod_kib.map(|k| k / 1024.0),
                        note: Some(
                            if p.skipped.is_some() {
                                "skipped"
                            } else {
                                "FAILED"
                            }
                            .into(),
                        ),
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        out.push((
            "memory.svg".to_string(),
            bar_chart(
                "host memory per idle pod (PSS)",
                &caption(r, &m.what),
                "MiB",
                &groups,
            ),
        ));
    }
    if let Some(d) = &r.density {
        let mut ks: Vec<usize> = d.points.iter().map(|p| p.pods).collect();
        ks.sort_unstable();
        ks.dedup();
        let groups = ks
            .iter()
            .map(|k| BarGroup {
                label: format!("K={k}"),
                bars: d
                    .points
                    .iter()
                    .filter(|p| p.pods == *k)
                    .map(|p| Bar {
                        series: p.runtime.clone(),
                        value: p.all_running_ms,
                        note: Some(
                            if p.skipped.is_some() {
                                "skipped"
                            } else {
                                "FAILED"
                            }
                            .into(),
                        ),
                    })
                    .collect(),
            })
            .collect::<Vec<_>>();
        out.push((
            "density.svg".to_string(),
            bar_chart(
                "density: K pods at once, time until all running",
                &caption(r, "ctr run -d ... sleep, all launched together"),
                "ms",
                &groups,
            ),
        ));
    }
    if let Some(c) = &r.cri {
        out.push((
            "cri.svg".to_string(),
            box_chart(
                "pod start through containerd's CRI plugin",
                &caption(r, &cri_chart_what(c)),
                "ms",
                &boxes(&c.series),
            ),
        ));
    }
    out
}

/// Reads a results.json written by [`write_all`].
pub fn read_report(path: &Path) -> std::io::Result<Report> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Writes results.json, results.md and the charts into `dir`; returns the paths written.
pub fn write_all(r: &Report, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    let p = dir.join("results.json");
    std::fs::write(&p, json + "\n")?;
    written.push(p);
    let p = dir.join("results.md");
    std::fs::write(&p, render_table(r))?;
    written.push(p);
    for (name, svg) in render_charts(r) {
        let p = dir.join(name);
        std::fs::write(&p, svg)?;
        written.push(p);
    }
    Ok(written)
}

/// The CRI measure's result (made by `crate::cri`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CriResult {
    /// What one iteration does.
    pub commands: Vec<String>,
    /// Per runtime: "runc: N=5 after W=1".
    pub schedule: Vec<String>,
    pub series: Vec<Series>,
    pub ratios: Vec<Ratio>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The CRI section of the text report.
pub fn render_cri(out: &mut String, r: &CriResult) {
    let _ = writeln!(
        out,
        "\n## CRI latency (ms) through containerd's CRI plugin, interleaved ({})\n",
        r.schedule.join("; ")
    );
    for c in &r.commands {
        let _ = writeln!(out, "    {c}");
    }
    out.push('\n');
    series_rows(out, &r.series);
    ratio_rows(out, &r.ratios);
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
}

/// The CRI chart's "what" line.
pub fn cri_chart_what(r: &CriResult) -> String {
    format!(
        "{} · interleaved, one pod per iteration",
        r.schedule.join("; ")
    )
}
