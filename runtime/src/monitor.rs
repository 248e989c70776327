//! `vessel monitor`: a Prometheus endpoint for the host's pods (`kata-monitor`'s role).
//!
//! Decision: one process per host that reads what is already on the host at each scrape —
//! the runtime's state root (`<root>/<namespace>/<sandbox>/state.json`, which names each
//! pod's VMM by pid and start time) and `/proc` of each VMM — rather than an endpoint in every
//! shim: nothing runs or listens per pod, a scrape costs no guest work (on KVM-PVM every
//! request into a guest costs tens of milliseconds of emulated kernel), and a pod whose shim
//! is gone still shows (as down) until `vessel cleanup`. What only the VMM knows (vCPU exits by
//! kind, device counters) it rewrites every 2 s in the sandbox's `vmm-metrics.json`
//! (`vessel_protocol::vmm_metrics`), which a scrape reads like the rest. What only the guest
//! knows (its containers' cgroup memory, CPU and pids) the process that owns the pod samples
//! every 10 s into `guest-stats.json` (`crate::pod::guest_stats`); the VMM's RSS and the vCPU
//! threads' CPU time are the host's measure of the whole guest.
//!
//! Series, per pod (labels `sandbox`, `namespace`, and `pod_name`, `pod_namespace` from a CRI
//! sandbox's annotations): `vessel_pod_up`, `vessel_pod_start_seconds`,
//! `vessel_pod_restored` (1: from a snapshot, 0: cold boot), the VMM's (summed over its
//! process tree: the jail's outer process and the VM below it) `vessel_vmm_rss_bytes`,
//! `vessel_vmm_pss_bytes`, `vessel_vmm_cpu_seconds_total`, `vessel_vmm_threads`,
//! `vessel_guest_vcpu_seconds_total` (the vCPU threads alone: the guest's CPU time),
//! `vessel_vcpu_exits_total{kind}`, `vessel_vmm_device_counter_total{device,counter}` (virtio
//! net, vsock and fs counters), the process that owns the pod (the containerd shim, or
//! `vessel-runc`'s holder) as `vessel_shim_rss_bytes` and `vessel_shim_cpu_seconds_total`, and
//! `vessel_pod_shared_containers` (containers whose rootfs the runtime shared into the VM),
//! and per container (label `container`) `vessel_container_memory_bytes`,
//! `vessel_container_memory_limit_bytes`, `vessel_container_cpu_seconds_total` and
//! `vessel_container_pids`, the guest's view;
//! per host `vessel_pods`, `vessel_pods_restored`, `vessel_pods_cold_booted` (the snapshot's
//! hits and misses among the running pods) and `vessel_state_unreadable`. Encoded by
//! `prometheus-client` (OpenMetrics text).
//!
//! The HTTP side is a few lines over `std::net` on purpose: one `GET /metrics` per scrape,
//! no keep-alive, requests bounded in size and time; the runtime has no async runtime to host
//! a server framework in.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use vessel_protocol::vmm_metrics::{self, VmmMetrics};

use crate::pod::guest_stats::{self, GuestStats};
use crate::state::{list_sandboxes, ProcessIdentity, StateError};

/// The labels of a pod's series: the sandbox, its containerd namespace, and for a CRI pod the
/// Kubernetes pod's name and namespace (empty otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub sandbox: String,
    pub namespace: String,
    pub pod_name: String,
    pub pod_namespace: String,
}

impl PodLabels {
    fn with_kind(&self, kind: &str) -> KindLabels {
        KindLabels {
            sandbox: self.sandbox.clone(),
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
            kind: kind.to_string(),
        }
    }

    fn with_device(&self, device: &str, counter: &str) -> DeviceLabels {
        DeviceLabels {
            sandbox: self.sandbox.clone(),
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
            device: device.to_string(),
            counter: counter.to_string(),
        }
    }

    fn with_container(&self, container: &str) -> ContainerLabels {
        ContainerLabels {
            sandbox: self.sandbox.clone(),
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
            pod_namespace: self.pod_namespace.clone(),
            container: container.to_string(),
        }
    }
}

/// A pod's labels and one more (a counter's kind, a device's counter).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub sandbox: String,
    pub namespace: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub sandbox: String,
    pub namespace: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub device: String,
    pub counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub sandbox: String,
    pub namespace: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub container: String,
}

/// What `/proc` says about one VMM.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmmUsage {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    /// CPU time of the threads named `vcpu*` (the guest's own).
    pub vcpu_seconds: f64,
}

/// What `/proc` says about the process that owns a pod (the VMM's parent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnerUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// One pod at the time of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub labels: PodLabels,
    /// The VMM is the process its state file names (pid and start time) and is running.
    pub up: bool,
    /// `None` when it is not up or `/proc` could not be read.
    pub vmm: Option<VmmUsage>,
    pub shared_containers: usize,
    /// Seconds from the start until the agent's `CreateSandbox` answered.
    pub start_seconds: Option<f64>,
    /// Restored from a snapshot (Some(false): cold boot; None: not recorded yet).
    pub restored: Option<bool>,
    /// The VMM's last counters record, while it is up.
    pub vmm_metrics: Option<VmmMetrics>,
    /// The shim (or holder) that owns the pod, while it is up.
    pub owner: Option<OwnerUsage>,
    /// The guest's last sample of its containers (`pod::guest_stats`), while it is up.
    pub guest: Option<GuestStats>,
}

/// Everything one scrape exports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    pub pods: Vec<PodSample>,
    /// Sandbox directories whose state file could not be read.
    pub unreadable: usize,
}

/// The `kB` value of `key:` in a `smaps_rollup` text.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// (utime + stime in ticks, num_threads) from a `/proc/<pid>/stat` text.
fn stat_fields(stat: &str) -> Option<(u64, u64)> {
    // After the ")" that ends comm: field 3 (state) is index 0, utime (14) index 11,
    // stime (15) index 12, num_threads (20) index 17.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let num = |i: usize| rest.get(i)?.parse::<u64>().ok();
    Some((num(11)? + num(12)?, num(17)?))
}

/// The direct children of `pid` (from every thread's `children` file).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `pid` and every process below it, bounded (a jailed VMM is a small tree).
fn process_tree(pid: i32) -> Vec<i32> {
    const MAX_PROCESSES: usize = 64;
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_PROCESSES {
        for c in children(out[i]) {
            if !out.contains(&c) && out.len() < MAX_PROCESSES {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// CPU ticks of `pid`'s threads whose name starts with `vcpu`.
fn vcpu_ticks(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu"))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| stat_fields(&stat).map(|(ticks, _)| ticks))
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as f64
}

/// One process's usage from `/proc`.
fn process_usage(pid: i32, hz: f64) -> Option<VmmUsage> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ticks, threads) = stat_fields(&stat)?;
    Some(VmmUsage {
        rss_bytes: kb_field(&rollup, "Rss:")?,
        pss_bytes: kb_field(&rollup, "Pss:")?,
        cpu_seconds: ticks as f64 / hz,
        threads,
        vcpu_seconds: vcpu_ticks(pid) as f64 / hz,
    })
}

/// Field 4 (ppid) of a `/proc/<pid>/stat` text.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The usage of the process that started VMM `pid` (its shim, or `vessel-runc`'s holder);
/// None once the VMM was orphaned (its parent is then init).
pub fn owner_usage(pid: i32) -> Option<OwnerUsage> {
    let parent = parent_of(pid).filter(|&p| p > 1)?;
    let u = process_usage(parent, clock_ticks_per_second())?;
    Some(OwnerUsage {
        rss_bytes: u.rss_bytes,
        cpu_seconds: u.cpu_seconds,
    })
}

/// The VMM's last counters record from `path`; a read that raced its rewrite is tried again.
pub fn read_vmm_metrics(path: &Path) -> Option<VmmMetrics> {
    for _ in 0..3 {
        let mut bytes = Vec::with_capacity(vmm_metrics::RECORD_LEN);
        let f = std::fs::File::open(path).ok()?;
        f.take(vmm_metrics::RECORD_LEN as u64)
            .read_to_end(&mut bytes)
            .ok()?;
        if bytes.is_empty() {
            // Not written yet (the VMM writes its first record after 2 s).
            return None;
        }
        match vmm_metrics::decode(&bytes) {
            Ok(m) => return Some(m),
            Err(e) => log::debug!("monitor: {}: {e}", path.display()),
        }
    }
    None
}

/// The usage of the VMM whose pid is `pid`, summed over its process tree: with
/// `hypervisor.jail` the recorded process is the jail's outer one and the VM (vCPU threads,
/// guest memory) runs in a child in a pid namespace of its own. RSS is a plain sum (pages
/// shared between the processes count twice); PSS splits them.
pub fn vmm_usage(pid: i32) -> Option<VmmUsage> {
    let hz = clock_ticks_per_second();
    let mut total = process_usage(pid, hz)?;
    for child in process_tree(pid).into_iter().skip(1) {
        // A child that exits between the listing and the read is left out.
        if let Some(u) = process_usage(child, hz) {
            total.rss_bytes += u.rss_bytes;
            total.pss_bytes += u.pss_bytes;
            total.cpu_seconds += u.cpu_seconds;
            total.threads += u.threads;
            total.vcpu_seconds += u.vcpu_seconds;
        }
    }
    Some(total)
}

/// Looks at every sandbox under `root`.
pub fn collect(root: &Path) -> Result<HostSample, StateError> {
    let mut host = HostSample::default();
    for sb in list_sandboxes(root)? {
        let mut labels = PodLabels {
            sandbox: sb.id,
            namespace: sb.namespace,
            pod_name: String::new(),
            pod_namespace: String::new(),
        };
        let state = match sb.state {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "monitor: {}: {}",
                    sb.paths.dir().display(),
                    vessel_protocol::errors::chain(&e)
                );
                host.unreadable += 1;
                continue;
            }
        };
        if let Some((name, namespace)) = state.as_ref().and_then(|s| s.cri_pod.clone()) {
            labels.pod_name = name;
            labels.pod_namespace = namespace;
        }
        let vmm: Option<ProcessIdentity> = state.as_ref().and_then(|s| s.vmm);
        let up = vmm.is_some_and(|v| v.is_alive());
        let mut containers: Vec<&str> = state
            .iter()
            .flat_map(|s| s.mounts.iter().map(|m| m.container.as_str()))
            .collect();
        containers.sort_unstable();
        containers.dedup();
        host.pods.push(PodSample {
            labels,
            up,
            vmm: vmm.filter(|_| up).and_then(|v| vmm_usage(v.pid)),
            shared_containers: containers.len(),
            start_seconds: state
                .as_ref()
                .and_then(|s| s.start_ms)
                .map(|ms| ms as f64 / 1000.0),
            restored: state.as_ref().and_then(|s| s.restored),
            vmm_metrics: up
                .then(|| read_vmm_metrics(&sb.paths.vmm_metrics()))
                .flatten(),
            owner: vmm.filter(|_| up).and_then(|v| owner_usage(v.pid)),
            guest: up
                .then(|| GuestStats::read(&sb.paths.dir().join(guest_stats::FILE_NAME)))
                .flatten(),
        });
    }
    Ok(host)
}

/// A pod's gauge family.
type PodGauge = Family<PodLabels, Gauge<i64>>;

/// A new metric (or family), registered under `name`; the registry keeps a handle to it.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// The OpenMetrics text of `sample`.
pub fn encode_sample(sample: &HostSample) -> String {
    let mut registry = Registry::with_prefix("vessel");
    let up = registered::<PodGauge>(
        &mut registry,
        "pod_up",
        "1 while the pod's VMM (the process its state file names) runs",
    );
    let shared = registered::<PodGauge>(
        &mut registry,
        "pod_shared_containers",
        "Containers whose rootfs the runtime shared into the pod's VM",
    );
    let rss = registered::<PodGauge>(
        &mut registry,
        "vmm_rss_bytes",
        "Resident memory of the pod's VMM (guest memory it touched included)",
    );
    let pss = registered::<PodGauge>(
        &mut registry,
        "vmm_pss_bytes",
        "Proportional set size of the pod's VMM",
    );
    let threads = registered::<PodGauge>(&mut registry, "vmm_threads", "Threads of the pod's VMM");
    let cpu: Family<PodLabels, Counter<f64, AtomicU64>> = registered(
        &mut registry,
        "vmm_cpu_seconds",
        "User and system CPU time of the pod's VMM (its vCPUs run the guest)",
    );
    let start: Family<PodLabels, Gauge<f64, AtomicU64>> = registered(
        &mut registry,
        "pod_start_seconds",
        "Seconds from the pod's start until its agent's CreateSandbox answered (restore or boot included)",
    );
    let restored = registered::<PodGauge>(
        &mut registry,
        "pod_restored",
        "1 if the pod's VM was restored from a snapshot, 0 if it booted cold",
    );
    let vcpu: Family<PodLabels, Counter<f64, AtomicU64>> = registered(
        &mut registry,
        "guest_vcpu_seconds",
        "CPU time of the pod's vCPU threads: the guest's own, as the host measures it",
    );
    let exits: Family<KindLabels, Counter<u64>> = registered(
        &mut registry,
        "vcpu_exits",
        "vCPU exits to the VMM by kind, all vCPUs of the pod together",
    );
    let device: Family<DeviceLabels, Counter<u64>> = registered(
        &mut registry,
        "vmm_device_counter",
        "Counters of the pod's virtio devices (net, vsock, fs), by name",
    );
    let owner_rss = registered::<PodGauge>(
        &mut registry,
        "shim_rss_bytes",
        "Resident memory of the process that owns the pod (containerd shim or vessel-runc holder)",
    );
    let owner_cpu: Family<PodLabels, Counter<f64, AtomicU64>> = registered(
        &mut registry,
        "shim_cpu_seconds",
        "CPU time of the process that owns the pod",
    );
    let c_memory: Family<ContainerLabels, Gauge<i64>> = registered(
        &mut registry,
        "container_memory_bytes",
        "Memory of a container's cgroup in the guest (the agent's view, sampled every 10 s)",
    );
    let c_limit: Family<ContainerLabels, Gauge<i64>> = registered(
        &mut registry,
        "container_memory_limit_bytes",
        "Memory limit of a container's cgroup in the guest (0: none)",
    );
    let c_cpu: Family<ContainerLabels, Counter<f64, AtomicU64>> = registered(
        &mut registry,
        "container_cpu_seconds",
        "CPU time of a container's cgroup in the guest",
    );
    let c_pids: Family<ContainerLabels, Gauge<i64>> = registered(
        &mut registry,
        "container_pids",
        "Processes in a container's cgroup in the guest",
    );
    let pods: Gauge<i64> = registered(&mut registry, "pods", "Pods whose VMM runs");
    let pods_restored: Gauge<i64> = registered(
        &mut registry,
        "pods_restored",
        "Running pods whose VM was restored from a snapshot (the snapshot's hits)",
    );
    let pods_cold: Gauge<i64> = registered(
        &mut registry,
        "pods_cold_booted",
        "Running pods whose VM booted cold (the snapshot's misses, or snapshots off)",
    );
    let unreadable: Gauge<i64> = registered(
        &mut registry,
        "state_unreadable",
        "Sandbox directories whose state file could not be read",
    );
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for p in &sample.pods {
        up.get_or_create(&p.labels).set(i64::from(p.up));
        shared
            .get_or_create(&p.labels)
            .set(clamp(p.shared_containers as u64));
        if let Some(t) = p.start_seconds {
            start.get_or_create(&p.labels).set(t);
        }
        if let Some(r) = p.restored {
            restored.get_or_create(&p.labels).set(i64::from(r));
        }
        if let Some(u) = p.vmm {
            rss.get_or_create(&p.labels).set(clamp(u.rss_bytes));
            pss.get_or_create(&p.labels).set(clamp(u.pss_bytes));
            threads.get_or_create(&p.labels).set(clamp(u.threads));
            cpu.get_or_create(&p.labels).inc_by(u.cpu_seconds);
            vcpu.get_or_create(&p.labels).inc_by(u.vcpu_seconds);
        }
        if let Some(o) = p.owner {
            owner_rss.get_or_create(&p.labels).set(clamp(o.rss_bytes));
            owner_cpu.get_or_create(&p.labels).inc_by(o.cpu_seconds);
        }
        for (container, g) in p.guest.iter().flat_map(|g| g.containers.iter()) {
            let labels = p.labels.with_container(container);
            c_memory.get_or_create(&labels).set(clamp(g.memory_bytes));
            c_limit
                .get_or_create(&labels)
                .set(clamp(g.memory_limit_bytes));
            c_cpu
                .get_or_create(&labels)
                .inc_by(g.cpu_usage_usec as f64 / 1e6);
            c_pids.get_or_create(&labels).set(clamp(g.pids));
        }
        if let Some(m) = &p.vmm_metrics {
            for (kind, n) in &m.vcpu_exits {
                exits.get_or_create(&p.labels.with_kind(kind)).inc_by(*n);
            }
            for (name, counters) in &m.devices {
                for (counter, n) in counters {
                    let labels = p.labels.with_device(name, counter);
                    device.get_or_create(&labels).inc_by(*n);
                }
            }
        }
    }
    let running = || sample.pods.iter().filter(|p| p.up);
    pods.set(clamp(running().count() as u64));
    pods_restored.set(clamp(
        running().filter(|p| p.restored == Some(true)).count() as u64,
    ));
    pods_cold.set(clamp(
        running().filter(|p| p.restored == Some(false)).count() as u64,
    ));
    unreadable.set(clamp(sample.unreadable as u64));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Longest request line and headers read from a scraper.
const MAX_REQUEST_BYTES: u64 = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one HTTP request on `stream`: `GET /metrics` with the state under `root`.
pub fn answer(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST_BYTES));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers up to the blank line (bounded by the take above); none is used.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 0 && header.trim_end() != "" {
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (status, content_type, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => match collect(root) {
            Ok(sample) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                encode_sample(&sample),
            ),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{}\n", vessel_protocol::errors::chain(&e)),
            ),
        },
        (Some("GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Serves scrapes on `listener` until the process ends, one at a time.
pub fn serve(listener: &TcpListener, root: &Path) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = answer(s, root) {
                    log::debug!("monitor: answering a scrape: {e}");
                }
            }
            Err(e) => log::warn!("monitor: accept: {e}"),
        }
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
