//! The monitor on a state root made here: this test process stands for a running VMM, a dead
//! pid for a gone one, a corrupt state file for an unreadable one; the text is parsed back
//! with a Prometheus parser (`prometheus-parse`), over a real HTTP scrape too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use super::*;
use crate::safe_mount::MountRecord;
use crate::state::{RecordedMount, SandboxPaths, SandboxStateFile};

fn sandbox(root: &Path, ns: &str, id: &str, state: Option<SandboxStateFile>) -> SandboxPaths {
    let paths = SandboxPaths::new(root, ns, id).expect("paths");
    paths.create().expect("create");
    if let Some(s) = state {
        s.write(&paths.state_file()).expect("write state");
    }
    paths
}

fn mount(container: &str, ino: u64) -> RecordedMount {
    RecordedMount {
        container: container.into(),
        record: MountRecord {
            target: format!("/x/{container}/rootfs").into(),
            mnt_id: ino,
            root_dev: 1,
            root_ino: ino,
        },
    }
}

/// sb1 runs (this process), gone's VMM is not the process it names, bad is corrupt.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut running = SandboxStateFile::new("sb1");
    running.vmm = ProcessIdentity::of(std::process::id() as i32);
    running.mounts = vec![mount("c1", 1), mount("c1", 2), mount("c2", 3)];
    running.cri_pod = Some(("web-0".into(), "shop".into()));
    running.start_ms = Some(5250);
    sandbox(dir.path(), "k8s.io", "sb1", Some(running));
    let mut gone = SandboxStateFile::new("gone");
    let mut me = ProcessIdentity::of(std::process::id() as i32).expect("own identity");
    me.start_time += 1;
    gone.vmm = Some(me);
    sandbox(dir.path(), "default", "gone", Some(gone));
    let bad = sandbox(dir.path(), "default", "bad", None);
    std::fs::write(bad.state_file(), b"{ not json").expect("corrupt state");
    dir
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of `metric` for `sandbox` (or the unlabelled one with `None`).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, sandbox: Option<&str>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("sandbox") == sandbox)
        .and_then(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn proc_texts_are_read_field_by_field() {
    let rollup =
        "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:      20480 kB\nPss:       1536 kB\n";
    assert_eq!(kb_field(rollup, "Rss:"), Some(20480 * 1024));
    assert_eq!(kb_field(rollup, "Pss:"), Some(1536 * 1024));
    assert_eq!(kb_field(rollup, "Swap:"), None);
    // A comm with spaces and parentheses does not shift the fields.
    let stat = "42 (vessel-vmm (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 9 0 123 0 0";
    assert_eq!(stat_fields(stat), Some((320, 9)));
    assert_eq!(stat_fields("42 (truncated) S 1"), None);
}

#[test]
fn a_scrape_names_every_pod_and_says_which_run() {
    let dir = fixture();
    let sample = collect(dir.path()).expect("collect");
    assert_eq!(sample.unreadable, 1);
    assert_eq!(sample.pods.len(), 2);
    let sb1 = sample
        .pods
        .iter()
        .find(|p| p.labels.sandbox == "sb1")
        .expect("sb1");
    assert!(sb1.up);
    assert_eq!(sb1.labels.namespace, "k8s.io");
    assert_eq!(sb1.shared_containers, 2, "c1 and c2");
    let usage = sb1.vmm.expect("usage of a running VMM");
    assert!(usage.rss_bytes > 0 && usage.pss_bytes > 0 && usage.threads >= 1);
    let gone = sample
        .pods
        .iter()
        .find(|p| p.labels.sandbox == "gone")
        .expect("gone");
    assert!(!gone.up && gone.vmm.is_none());

    let text = encode_sample(&sample);
    let scrape = parse(&text);
    assert_eq!(value(&scrape, "vessel_pod_up", Some("sb1")), Some(1.0));
    assert_eq!(value(&scrape, "vessel_pod_up", Some("gone")), Some(0.0));
    assert_eq!(value(&scrape, "vessel_pods", None), Some(1.0));
    assert_eq!(value(&scrape, "vessel_state_unreadable", None), Some(1.0));
    assert_eq!(
        value(&scrape, "vessel_pod_shared_containers", Some("sb1")),
        Some(2.0)
    );
    assert_eq!(
        value(&scrape, "vessel_vmm_rss_bytes", Some("sb1")),
        Some(usage.rss_bytes as f64)
    );
    assert!(value(&scrape, "vessel_vmm_pss_bytes", Some("sb1")).is_some());
    assert_eq!(
        value(&scrape, "vessel_vmm_rss_bytes", Some("gone")),
        None,
        "no usage for a pod that is down"
    );
    let labels = &scrape
        .samples
        .iter()
        .find(|s| s.metric == "vessel_vmm_threads")
        .expect("threads")
        .labels;
    assert_eq!(labels.get("namespace"), Some("k8s.io"));
    assert_eq!(labels.get("pod_name"), Some("web-0"));
    assert_eq!(labels.get("pod_namespace"), Some("shop"));
    assert_eq!(
        value(&scrape, "vessel_pod_start_seconds", Some("sb1")),
        Some(5.25)
    );
    assert_eq!(
        value(&scrape, "vessel_pod_start_seconds", Some("gone")),
        None
    );
    let gone_labels = &scrape
        .samples
        .iter()
        .find(|s| s.metric == "vessel_pod_up" && s.labels.get("sandbox") == Some("gone"))
        .expect("gone's up")
        .labels;
    assert_eq!(gone_labels.get("pod_name"), Some(""), "not a CRI pod");
}

#[test]
fn a_vmms_children_are_counted_with_it() {
    let me = std::process::id() as i32;
    let alone = vmm_usage(me).expect("own usage");
    // A child that touches 32 MiB: the tree's RSS and threads grow by it.
    let mut child = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "x=$(head -c 33554432 /dev/zero | tr '\\0' a); echo ready; read _",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child");
    let mut ready = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready).expect("ready");
    let tree = process_tree(me);
    assert!(tree.contains(&(child.id() as i32)), "{tree:?}");
    let with_child = vmm_usage(me).expect("tree usage");
    drop(child.stdin.take());
    let _ = child.wait();
    assert!(
        with_child.rss_bytes >= alone.rss_bytes + (16 << 20),
        "{alone:?} → {with_child:?}"
    );
    assert!(with_child.threads > alone.threads);
}

#[test]
fn the_cpu_counter_moves_with_the_vmms_work() {
    let dir = fixture();
    let cpu = || {
        let scrape = parse(&encode_sample(&collect(dir.path()).expect("collect")));
        value(&scrape, "vessel_vmm_cpu_seconds_total", Some("sb1")).expect("cpu series")
    };
    let before = cpu();
    // Burn CPU in this process (the "VMM") until the kernel's tick accounting shows it.
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while cpu() <= before && start.elapsed() < Duration::from_secs(10) {
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
    assert!(cpu() > before, "cpu seconds moved from {before}");
}

fn get(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (head.to_string(), body.to_string())
}

#[test]
fn the_endpoint_answers_metrics_and_refuses_the_rest() {
    let dir = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let root = dir.path().to_path_buf();
    std::thread::spawn(move || serve(&listener, &root));

    let (head, body) = get(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(
        value(&parse(&body), "vessel_pod_up", Some("sb1")),
        Some(1.0)
    );
    let (head, _) = get(addr, "GET / HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = get(addr, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // A state root that cannot be read is a 500 with the reason, and the server stays up.
    std::fs::remove_dir_all(dir.path()).expect("remove");
    std::fs::write(dir.path(), b"not a directory").expect("file in its place");
    let (head, body) = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(body.contains("reading"), "{body}");
    std::fs::remove_file(dir.path()).expect("cleanup");
}

/// The first sample of `metric` for `sandbox` whose label `key` is `value`.
fn labelled(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    sandbox: &str,
    key: &str,
    val: &str,
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.get("sandbox") == Some(sandbox)
                && s.labels.get(key) == Some(val)
        })
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn the_vmms_counters_start_mode_owner_and_vcpu_time_are_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut running = SandboxStateFile::new("sb1");
    running.vmm = ProcessIdentity::of(std::process::id() as i32);
    running.restored = Some(true);
    let paths = sandbox(dir.path(), "default", "sb1", Some(running));
    let mut cold = SandboxStateFile::new("cold");
    cold.vmm = ProcessIdentity::of(std::process::id() as i32);
    cold.restored = Some(false);
    sandbox(dir.path(), "default", "cold", Some(cold));
    // What the VMM writes (vessel_protocol::vmm_metrics), torn first: the reader retries
    // and, the file staying torn, gives up without a series.
    let mut m = vessel_protocol::vmm_metrics::VmmMetrics {
        seq: 4,
        ..Default::default()
    };
    m.vcpu_exits.insert("mmio_write".into(), 1234);
    m.devices
        .entry("vsock".into())
        .or_default()
        .insert("rx_bytes".into(), 4096);
    let record = vessel_protocol::vmm_metrics::encode(&m).expect("encode");
    std::fs::write(paths.vmm_metrics(), &record[5..]).expect("torn record");
    assert_eq!(read_vmm_metrics(&paths.vmm_metrics()), None);
    std::fs::write(paths.vmm_metrics(), &record).expect("record");
    // The owner's last sample of the guest's containers.
    let mut guest = GuestStats::default();
    guest.containers.insert(
        "web".into(),
        guest_stats::ContainerGuestStats {
            memory_bytes: 5 << 20,
            memory_limit_bytes: 0,
            cpu_usage_usec: 2_500_000,
            pids: 3,
        },
    );
    std::fs::write(
        paths.dir().join(guest_stats::FILE_NAME),
        serde_json::to_vec(&guest).expect("json"),
    )
    .expect("guest stats");
    // A thread named like a vCPU burns CPU: the guest's CPU time is that thread's.
    let spin = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(|| {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(300) {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
            std::hint::black_box(x);
            // Stay alive for the scrape.
            std::thread::sleep(Duration::from_millis(500));
        })
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(400));
    let scrape = parse(&encode_sample(&collect(dir.path()).expect("collect")));
    spin.join().expect("join");
    assert_eq!(
        labelled(
            &scrape,
            "vessel_vcpu_exits_total",
            "sb1",
            "kind",
            "mmio_write"
        ),
        Some(1234.0)
    );
    assert_eq!(
        labelled(
            &scrape,
            "vessel_vmm_device_counter_total",
            "sb1",
            "counter",
            "rx_bytes"
        ),
        Some(4096.0)
    );
    assert_eq!(
        labelled(
            &scrape,
            "vessel_vmm_device_counter_total",
            "sb1",
            "device",
            "vsock"
        ),
        Some(4096.0)
    );
    assert_eq!(
        value(&scrape, "vessel_vcpu_exits_total", Some("cold")),
        None,
        "no record, no series"
    );
    assert_eq!(
        value(&scrape, "vessel_pod_restored", Some("sb1")),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "vessel_pod_restored", Some("cold")),
        Some(0.0)
    );
    assert_eq!(value(&scrape, "vessel_pods_restored", None), Some(1.0));
    assert_eq!(value(&scrape, "vessel_pods_cold_booted", None), Some(1.0));
    let vcpu = value(&scrape, "vessel_guest_vcpu_seconds_total", Some("sb1")).expect("vcpu");
    let all = value(&scrape, "vessel_vmm_cpu_seconds_total", Some("sb1")).expect("cpu");
    assert!(vcpu >= 0.1 && vcpu <= all, "vcpu {vcpu} s of {all} s");
    let web = |metric| labelled(&scrape, metric, "sb1", "container", "web");
    assert_eq!(web("vessel_container_memory_bytes"), Some(5242880.0));
    assert_eq!(web("vessel_container_cpu_seconds_total"), Some(2.5));
    assert_eq!(web("vessel_container_pids"), Some(3.0));
    assert_eq!(web("vessel_container_memory_limit_bytes"), Some(0.0));
    // The "owner" is this test's parent (for a pod: the shim or the holder).
    assert!(value(&scrape, "vessel_shim_rss_bytes", Some("sb1")).is_some_and(|v| v > 0.0));
}
