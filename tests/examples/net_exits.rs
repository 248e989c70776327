//! What a packet costs the guest NIC in VM exits: one vessel pod through containerd's CRI
//! (the test harness's containerd and CNI bridge), a web container, and a known amount of
//! host→pod traffic between two counter lines of the NIC in the VMM's log (virtio-net logs
//! its counters at most once a minute while traffic flows). Prints the deltas: frames each
//! way, TX and RX queue notifies (each one a VM exit), interrupts injected (each costs the
//! guest at least its InterruptStatus read and InterruptACK write, two more exits).
//!
//!     cargo build --workspace --bins && set -a && . build/vessel.env && set +a
//!     cargo run -p vessel-tests --example net_exits -- [SMALL_GETS]     # default 200

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vessel_tests::cri::{
    http_fetch, CriContainerd, VesselConfigSpec, VesselTestConfig, VESSEL_HANDLER,
};

const WEB: &str = "mkdir -p /dev/shm/www && echo ok > /dev/shm/www/i && \
    head -c 1048576 /dev/zero > /dev/shm/www/blob && exec httpd -f -p 8080 -h /dev/shm/www";

/// The numbers of the NIC's last counter line in `log`, and how many lines there are.
fn counters(log: &Path) -> (usize, Vec<u64>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("virtio-net: tx "))
        .collect();
    let last = lines.last().map_or_else(Vec::new, |l| {
        let tail = l.split("virtio-net: ").nth(1).unwrap_or("");
        tail.split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .filter_map(|w| w.parse().ok())
            .collect()
    });
    (lines.len(), last)
}

fn get(ip: &str, path: &str) -> Result<Vec<u8>> {
    http_fetch(ip, 8080, path, Duration::from_secs(30), 1 << 22)
}

/// GETs `/i` every few seconds until the NIC has logged `n` counter lines.
fn wait_for_line(ip: &str, log: &Path, n: usize) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (count, last) = counters(log);
        if count >= n {
            return Ok(last);
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            bail!(
                "no counter line {n} in {}; its tail: {tail:#?}",
                log.display()
            );
        }
        let _ = get(ip, "/i");
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn main() -> Result<()> {
    let small: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let cfg = VesselTestConfig::write(&VesselConfigSpec::from_env()?)?;
    let cri = CriContainerd::start(Some(cfg.path()))?;
    cri.client().set_timeout(Duration::from_secs(600));
    let pod = cri.run_pod("net-exits", VESSEL_HANDLER)?;
    cri.create_and_start(&pod, "web", &["sh", "-c", WEB])?;
    let ip = cri
        .client()
        .pod_sandbox_status(&pod.id, false)?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("pod IP")?;
    cri.check_route(&ip)?;
    let log = cfg
        .state_root()
        .join("k8s.io")
        .join(&pod.id)
        .join("vmm.log");
    let (before_lines, _) = counters(&log);
    let a = wait_for_line(&ip, &log, before_lines + 1)?;
    let t = Instant::now();
    for _ in 0..small {
        get(&ip, "/i")?;
    }
    let small_took = t.elapsed();
    let t = Instant::now();
    let blob = get(&ip, "/blob")?;
    let blob_took = t.elapsed();
    // The first line after the traffic (a minute after the last one, with a request).
    let (after_lines, _) = counters(&log);
    let b = wait_for_line(&ip, &log, after_lines + 1)?;
    if a.len() < 11 || b.len() < 11 {
        bail!("counter lines {a:?} {b:?}");
    }
    let d: Vec<u64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| y.saturating_sub(*x))
        .collect();
    let (tx, tx_bytes, tx_kicks, rx, rx_bytes, rx_kicks, irqs) =
        (d[0], d[1], d[2], d[5], d[6], d[7], d[10]);
    let frames = (tx + rx).max(1) as f64;
    println!(
        "{small} GETs of a 3-byte page in {:.2} s ({:.2} ms each), 1 GET of {} B in {:.2} s",
        small_took.as_secs_f64(),
        small_took.as_secs_f64() * 1e3 / small.max(1) as f64,
        blob.len(),
        blob_took.as_secs_f64()
    );
    println!("between the last counter line before and the first after (+ the requests that triggered it):");
    println!("  guest→host: {tx} frames, {tx_bytes} B, {tx_kicks} TX notifies");
    println!("  host→guest: {rx} frames, {rx_bytes} B, {rx_kicks} RX notifies");
    println!("  interrupts: {irqs}");
    println!(
        "  per frame: {:.2} notifies, {:.2} interrupts; exits per frame ≥ {:.2} (a notify is one exit, an interrupt at least two: status read + ACK)",
        (tx_kicks + rx_kicks) as f64 / frames,
        irqs as f64 / frames,
        (tx_kicks + rx_kicks + 2 * irqs) as f64 / frames
    );
    for e in cri.remove_all_pods() {
        eprintln!("cleanup: {e}");
    }
    Ok(())
}
