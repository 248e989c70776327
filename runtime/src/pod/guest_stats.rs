//! The guest's own view of a pod's containers (cgroup memory, CPU and pids, from the agent's
//! `StatsContainer`), sampled every [`PERIOD`] by the process that owns the pod and left in the
//! sandbox's `guest-stats.json` for `vessel monitor`. Sampling here, on the agent connection
//! the owner already has, keeps scrapes free of guest work: each sample costs the guest a few
//! cgroup file reads per container, [`PERIOD`] apart, whoever scrapes how often.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lifecycle::Pod;

/// How often the owner asks the guest.
pub const PERIOD: Duration = Duration::from_secs(10);
/// The file in the sandbox's state directory.
pub const FILE_NAME: &str = "guest-stats.json";
/// The largest file the monitor reads.
pub const MAX_FILE_LEN: u64 = 1 << 20;

/// One container's numbers, as its cgroup in the guest says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerGuestStats {
    pub memory_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub cpu_usage_usec: u64,
    pub pids: u64,
}

/// What `guest-stats.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    pub containers: BTreeMap<String, ContainerGuestStats>,
}

impl GuestStats {
    /// Reads `path` (bounded); None if absent or not ours.
    pub fn read(path: &Path) -> Option<GuestStats> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .ok()?
            .take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Samples `pod` every [`PERIOD`] until it is gone or stopped.
pub(super) fn start_sampler(pod: &Arc<Pod>) {
    let weak: Weak<Pod> = Arc::downgrade(pod);
    let id = pod.id().to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("stats-{id}"))
        .spawn(move || loop {
            std::thread::sleep(PERIOD);
            let Some(pod) = weak.upgrade() else { return };
            if !pod.sample_guest_stats() {
                return;
            }
        });
    if let Err(e) = spawned {
        log::error!("pod {id}: spawning the guest stats sampler: {e}");
    }
}

/// The record of one sample from the agent's answers.
pub(super) fn from_responses<'a>(
    answers: impl Iterator<Item = (&'a str, &'a vessel_protocol::agent::StatsContainerResponse)>,
) -> GuestStats {
    let containers = answers
        .map(|(id, r)| {
            let s = ContainerGuestStats {
                memory_bytes: r.memory.usage_bytes,
                memory_limit_bytes: r.memory.limit_bytes,
                cpu_usage_usec: r.cpu.usage_usec,
                pids: r.pids.current,
            };
            (id.to_string(), s)
        })
        .collect();
    GuestStats { containers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_protocol::agent as pb;

    #[test]
    fn a_sample_round_trips_through_its_file() {
        let mut r = pb::StatsContainerResponse::new();
        r.memory.mut_or_insert_default().usage_bytes = 3 << 20;
        r.memory.mut_or_insert_default().limit_bytes = 64 << 20;
        r.cpu.mut_or_insert_default().usage_usec = 1_500_000;
        r.pids.mut_or_insert_default().current = 2;
        let stats = from_responses([("c1", &r)].into_iter());
        assert_eq!(
            stats.containers["c1"],
            ContainerGuestStats {
                memory_bytes: 3 << 20,
                memory_limit_bytes: 64 << 20,
                cpu_usage_usec: 1_500_000,
                pids: 2
            }
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        assert_eq!(GuestStats::read(&path), None);
        std::fs::write(&path, serde_json::to_vec(&stats).unwrap()).unwrap();
        assert_eq!(GuestStats::read(&path), Some(stats));
        std::fs::write(&path, b"{oops").unwrap();
        assert_eq!(GuestStats::read(&path), None);
    }
}
