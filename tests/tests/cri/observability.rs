//! What an operator sees of a live vessel pod: its JSON log lines and its Prometheus series
//! (scenarios of `cri.rs`'s one pod; no VM of their own).

use std::path::Path;

use super::Checks;

/// With `log_format = "json"`: the shim's lines in containerd's log are JSON objects naming
/// the pod's sandbox, and its `Create` of `container` names that container; every line of the
/// VMM's log (in the sandbox's state dir) is a JSON object naming the sandbox.
pub(crate) fn json_logs_name_the_pod(
    c: &mut Checks,
    containerd_log: &str,
    sandbox_dir: &Path,
    sandbox: &str,
    container: &str,
) {
    let objects = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let shim = objects(containerd_log);
    let create = shim.iter().find(|o| {
        o["process"] == "shim"
            && o["sandbox"] == sandbox
            && o["container"] == container
            && o["msg"].as_str().is_some_and(|m| m.starts_with("Create "))
    });
    c.check(
        create.is_some(),
        format!(
            "a JSON shim line in containerd's log names sandbox {sandbox} and container {container} on its Create ({} JSON lines)",
            shim.len()
        ),
    );
    let vmm_log = std::fs::read_to_string(sandbox_dir.join("vmm.log")).unwrap_or_default();
    let lines: Vec<&str> = vmm_log.lines().filter(|l| !l.is_empty()).collect();
    let vmm = objects(&vmm_log);
    c.check(
        !lines.is_empty()
            && vmm.len() == lines.len()
            && vmm
                .iter()
                .all(|o| o["process"] == "vmm" && o["sandbox"] == sandbox),
        format!(
            "every vmm.log line is a JSON object naming sandbox {sandbox} ({} of {} lines)",
            vmm.len(),
            lines.len()
        ),
    );
}

/// `vessel monitor` (the real binary, on the test's config) scraped twice around `work`: the
/// pod's series are there, parse as Prometheus text, and its VMM's CPU counter, vCPU exits
/// and vsock counters move.
pub(crate) fn monitor_scrapes_the_pod(
    c: &mut Checks,
    config: &Path,
    sandbox: &str,
    pod_name: &str,
    work: impl FnOnce(),
) {
    use std::io::{BufRead, Read, Write};
    let bin = vessel_tests::containerd::workspace_binary("vessel", "vessel-runtime")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = std::process::Command::new(bin)
        .args(["monitor", "--listen", "127.0.0.1:0"])
        .env("VESSEL_CONFIG", config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("vessel monitor");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let _ = std::io::BufReader::new(stdout).read_line(&mut first);
    let addr = first
        .trim()
        .trim_start_matches("vessel monitor: http://")
        .trim_end_matches("/metrics")
        .to_string();
    let scrape = || -> Option<prometheus_parse::Scrape> {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: monitor\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
    };
    let value = |s: &prometheus_parse::Scrape, metric: &str| -> Option<f64> {
        s.samples
            .iter()
            .find(|x| x.metric == metric && x.labels.get("sandbox") == Some(sandbox))
            .and_then(|x| match x.value {
                // A counter's `_total` sample parses as untyped (its TYPE line names the
                // family without the suffix).
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    };
    let before = scrape();
    work();
    let after = scrape();
    let _ = child.kill();
    let _ = child.wait();
    let (Some(before), Some(after)) = (before, after) else {
        c.check(
            false,
            format!("vessel monitor on {addr:?} answered two scrapes"),
        );
        return;
    };
    c.check(
        value(&after, "vessel_pod_up") == Some(1.0),
        format!("monitor: vessel_pod_up{{sandbox={sandbox}}} is 1"),
    );
    let named = after.samples.iter().any(|x| {
        x.metric == "vessel_pod_up"
            && x.labels.get("sandbox") == Some(sandbox)
            && x.labels.get("pod_name") == Some(pod_name)
    });
    c.check(
        named,
        format!("monitor: the pod is labelled pod_name={pod_name}"),
    );
    c.check(
        value(&after, "vessel_pod_start_seconds").is_some_and(|v| v > 0.0),
        format!(
            "monitor: the pod's start time ({:?} s)",
            value(&after, "vessel_pod_start_seconds")
        ),
    );
    c.check(
        value(&after, "vessel_vmm_rss_bytes").is_some_and(|v| v > 0.0)
            && value(&after, "vessel_vmm_pss_bytes").is_some_and(|v| v > 0.0),
        format!(
            "monitor: the VMM's RSS and PSS ({:?})",
            value(&after, "vessel_vmm_rss_bytes")
        ),
    );
    c.check(
        value(&after, "vessel_pod_shared_containers").is_some_and(|v| v >= 3.0),
        format!(
            "monitor: at least the three containers shared ({:?})",
            value(&after, "vessel_pod_shared_containers")
        ),
    );
    // What only the VMM knows (its metrics file): exits by kind and device counters.
    let sum = |s: &prometheus_parse::Scrape, metric: &str, key: &str, val: Option<&str>| {
        s.samples
            .iter()
            .filter(|x| {
                x.metric == metric
                    && x.labels.get("sandbox") == Some(sandbox)
                    && val.is_none_or(|v| x.labels.get(key) == Some(v))
            })
            .filter_map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .sum::<f64>()
    };
    let exits = |s: &prometheus_parse::Scrape| sum(s, "vessel_vcpu_exits_total", "kind", None);
    c.check(
        exits(&after) > exits(&before) && exits(&before) > 0.0,
        format!(
            "monitor: the vCPU exits moved with an exec ({} → {})",
            exits(&before),
            exits(&after)
        ),
    );
    let vsock_rx = |s: &prometheus_parse::Scrape| {
        sum(
            s,
            "vessel_vmm_device_counter_total",
            "device",
            Some("vsock"),
        )
    };
    c.check(
        vsock_rx(&after) > vsock_rx(&before),
        format!(
            "monitor: the vsock counters moved with an exec ({} → {})",
            vsock_rx(&before),
            vsock_rx(&after)
        ),
    );
    c.check(
        sum(
            &after,
            "vessel_vmm_device_counter_total",
            "device",
            Some("net"),
        ) > 0.0
            && sum(
                &after,
                "vessel_vmm_device_counter_total",
                "device",
                Some("fs"),
            ) > 0.0,
        "monitor: virtio-net and virtio-fs counters are there",
    );
    c.check(
        value(&after, "vessel_pod_restored").is_some()
            && value(&after, "vessel_guest_vcpu_seconds_total").is_some_and(|v| v > 0.0)
            && value(&after, "vessel_shim_rss_bytes").is_some_and(|v| v > 0.0),
        format!(
            "monitor: start mode {:?}, the guest's vCPU seconds {:?}, the shim's RSS {:?}",
            value(&after, "vessel_pod_restored"),
            value(&after, "vessel_guest_vcpu_seconds_total"),
            value(&after, "vessel_shim_rss_bytes")
        ),
    );
    // The guest's own view of its containers, sampled by the shim every 10 s.
    let guest_memory = sum(&after, "vessel_container_memory_bytes", "container", None);
    let containers = after
        .samples
        .iter()
        .filter(|x| {
            x.metric == "vessel_container_memory_bytes" && x.labels.get("sandbox") == Some(sandbox)
        })
        .count();
    c.check(
        containers >= 3 && guest_memory > 0.0,
        format!(
            "monitor: the guest's cgroup memory of the pod's containers ({containers} containers, {guest_memory} bytes)"
        ),
    );
    let cpu = |s: &prometheus_parse::Scrape| value(s, "vessel_vmm_cpu_seconds_total");
    c.check(
        matches!((cpu(&before), cpu(&after)), (Some(b), Some(a)) if a > b),
        format!(
            "monitor: the VMM's CPU seconds moved with an exec ({:?} → {:?})",
            cpu(&before),
            cpu(&after)
        ),
    );
}
