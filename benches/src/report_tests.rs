//! Tests of the report: ratios, the text table, JSON and charts.

use std::collections::BTreeMap;

use crate::machine::Machine;
use crate::procmem::Rollup;
use crate::report::*;

fn machine() -> Machine {
    let mut versions = BTreeMap::new();
    versions.insert(
        "containerd".to_string(),
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1".to_string(),
    );
    versions.insert("runc".to_string(), "runc version 1.1.5+ds1".to_string());
    Machine {
        date_utc: "2025-01-02T03:04:05Z".into(),
        hostname: "h".into(),
        cpu_model: "AMD EPYC".into(),
        logical_cpus: 2,
        memory_mib: 24000,
        host_kernel: "6.18.44".into(),
        kvm: "KVM-PVM (native mode: guest kernel code emulated)".into(),
        kvm_params: BTreeMap::new(),
        load_avg_at_start: "0.1 0.2 0.3".into(),
        versions,
    }
}

fn params() -> Params {
    Params {
        command_line: "vessel-bench --quick".into(),
        quick: true,
        only: vec!["start".into()],
        runs: 4,
        warmup: 1,
        vessel_runs: 4,
        vessel_warmup: 1,
        boot_runs: 1,
        pods: vec![1, 3],
        density: vec![3],
        max_vessel_pods: None,
        vessel_modes: vec!["cold".into()],
        guest_memory_mib: 128,
        guest_vcpus: 1,
        runc_timeout_secs: 60,
        vessel_timeout_secs: 300,
        settle_secs: 3,
        image: "img".into(),
    }
}

fn series(rt: &str, samples: &[f64], error: Option<&str>) -> Series {
    let mut s = Series::new(rt, "run /bin/true", "ms");
    s.samples = samples.to_vec();
    s.error = error.map(str::to_string);
    s.finish()
}

fn report() -> Report {
    let runc = series("runc", &[100.0, 110.0, 120.0, 200.0], None);
    let vessel = series(
        "vessel (cold)",
        &[],
        Some("warm-up iteration 1: ctr: failed to create shim task: VMM exited\nwith status 1"),
    );
    let ratios = vec![Ratio::of("run /bin/true", &vessel, &runc)];
    Report {
        machine: machine(),
        params: params(),
        start: Some(StartResult {
            commands: vec!["ctr run --rm ...".into()],
            series: vec![vessel, runc],
            ratios,
        }),
        boot: None,
        memory: Some(MemoryResult {
            what: "PSS".into(),
            points: vec![MemoryPoint {
                runtime: "runc".into(),
                pods: 1,
                pss_per_pod_kib: Some(10_240.0),
                rss_per_pod_kib: Some(20_480.0),
                pods_measured: vec![PodMemory {
                    id: "p".into(),
                    shim_pid: 1,
                    processes: vec!["containerd-shim".into(), "sleep".into()],
                    rollup: Rollup::default(),
                }],
                error: None,
                skipped: None,
            }],
            ratios: vec![(1, None)],
        }),
        density: None,
        cri: None,
        failures: vec!["start: vessel (cold) run /bin/true: boom".into()],
        notes: vec!["a note".into()],
        load_avg_at_end: "1.0 1.0 1.0".into(),
    }
}

#[test]
fn ratios_divide_the_percentiles() {
    let a = series("vessel", &[1000.0, 2000.0, 3000.0], None);
    let b = series("runc", &[100.0, 200.0, 300.0], None);
    let r = Ratio::of("m", &a, &b);
    assert_eq!(r.p50, Some(10.0));
    assert_eq!(r.p90, Some(10.0));
    assert_eq!(fmt_ratio(r.p50), "10×");
    assert_eq!(fmt_ratio(Some(1.234)), "1.23×");
    assert_eq!(fmt_ratio(Some(80.0 / 29_478.0)), "1/368×");
    assert_eq!(fmt_ratio(None), "-");
    // No samples on one side: no ratio (not 0, not inf).
    let none = Ratio::of("m", &series("vessel", &[], Some("x")), &b);
    assert_eq!((none.p50, none.p99), (None, None));
}

#[test]
fn table_names_machine_versions_and_n_and_shows_failures() {
    let t = render_table(&report());
    for want in [
        "2025-01-02T03:04:05Z",
        "AMD EPYC",
        "KVM-PVM",
        "containerd: containerd github.com/containerd/containerd 1.6.20~ds1",
        "runc: runc version 1.1.5+ds1",
        "N=4 after W=1 warm-ups",
        "| runc | run /bin/true | 4 | 115 | 176 | 198 | 100 | 200 | ms |",
        "| vessel (cold) | run /bin/true | 0 | FAILED: warm-up iteration 1: ctr: failed to create shim task: VMM exited with status 1 |",
        "ratio vessel (cold) ÷ runc (run /bin/true): p50 -, p90 -, p99 -",
        "| runc | 1 | 10.0 | 20.0 | containerd-shim+sleep |",
        "## failures",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    // A failure is never shown as a zero latency.
    assert!(
        !t.contains("| vessel (cold) | run /bin/true | 0 | 0"),
        "{t}"
    );
}

#[test]
fn json_is_machine_readable_with_facts() {
    let text = serde_json::to_string(&report()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["machine"]["cpu_model"], "AMD EPYC");
    assert_eq!(v["machine"]["logical_cpus"], 2);
    assert_eq!(v["params"]["runs"], 4);
    assert_eq!(v["params"]["warmup"], 1);
    assert_eq!(v["start"]["series"][1]["summary"]["p50"], 115.0);
    assert!(v["start"]["series"][0]["summary"].is_null());
    assert!(v["start"]["series"][0]["error"]
        .as_str()
        .unwrap()
        .contains("shim task"));
    assert!(v["start"]["ratios"][0]["p50"].is_null());
    assert_eq!(v["memory"]["points"][0]["pss_per_pod_kib"], 10240.0);
}

#[test]
fn charts_are_well_formed_svg_with_captions() {
    let charts = render_charts(&report());
    let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["start.svg", "memory.svg"]);
    for (name, svg) in &charts {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text: String = doc
            .descendants()
            .filter_map(|n| n.text())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("AMD EPYC") && text.contains("2025-01-02"),
            "{name}: {text}"
        );
        assert!(text.contains("vessel-bench --quick"), "{name}");
    }
}

#[test]
fn write_all_writes_every_file() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let written = write_all(&report(), &out).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["results.json", "results.md", "start.svg", "memory.svg"]
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["params"]["pods"], serde_json::json!([1, 3]));
}

#[test]
fn one_line_flattens_and_bounds() {
    assert_eq!(one_line("a\n  b\tc", 100), "a b c");
    assert_eq!(one_line("abcdef", 3), "abc…");
}

#[test]
fn results_json_reads_back_and_renders_the_same() {
    let d = tempfile::tempdir().unwrap();
    write_all(&report(), d.path()).unwrap();
    let back = read_report(&d.path().join("results.json")).unwrap();
    assert_eq!(render_table(&back), render_table(&report()));
    std::fs::write(d.path().join("bad.json"), "{").unwrap();
    let e = read_report(&d.path().join("bad.json")).unwrap_err();
    assert!(e.to_string().contains("bad.json"), "{e}");
}

#[test]
fn skipped_points_are_not_failures() {
    let mut r = report();
    if let Some(m) = r.memory.as_mut() {
        m.points.push(MemoryPoint {
            runtime: "vessel (cold)".into(),
            pods: 10,
            pss_per_pod_kib: None,
            rss_per_pod_kib: None,
            pods_measured: vec![],
            error: None,
            skipped: Some("10 pods > --max-vessel-pods 1".into()),
        });
    }
    let t = render_table(&r);
    assert!(
        t.contains("| vessel (cold) | 10 | skipped: 10 pods > --max-vessel-pods 1 | | |"),
        "{t}"
    );
}

#[test]
fn cri_section_renders_and_old_results_still_read() {
    let mut r = report();
    let mut s = Series::new("runc", crate::cri::METRIC_RUN_POD, "ms");
    s.samples = vec![150.0, 250.0];
    r.cri = Some(crate::cri::CriResult {
        commands: vec!["RunPodSandbox".into()],
        schedule: vec!["runc: N=2 after W=0".into()],
        series: vec![s.finish()],
        ratios: Vec::new(),
        notes: Vec::new(),
    });
    let t = render_table(&r);
    assert!(t.contains("## CRI latency"), "{t}");
    assert!(t.contains("| runc | RunPodSandbox | 2 |"), "{t}");
    let charts = render_charts(&r);
    let (_, svg) = charts.iter().find(|(n, _)| n == "cri.svg").unwrap();
    roxmltree::Document::parse(svg).unwrap();
    // A results.json from before the CRI measure has no "cri" key.
    let mut v = serde_json::to_value(report()).unwrap();
    v.as_object_mut().unwrap().remove("cri");
    let back: Report = serde_json::from_value(v).unwrap();
    assert!(back.cri.is_none());
}
