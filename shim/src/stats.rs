//! Agent container stats → the cgroup v2 `Metrics` containerd decodes
//! (`io.containerd.cgroups.v2.Metrics`; the guest runs cgroup v2 whatever the host uses).

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use vessel_protocol::agent::StatsContainerResponse;

pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(cpu) = s.cpu.as_ref() {
        m.cpu = protobuf::MessageField::some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        m.memory = protobuf::MessageField::some(MemoryStat {
            usage: mem.usage_bytes,
            // cgroup v2 reports "max" as a huge number; 0 from the agent means no limit.
            usage_limit: if mem.limit_bytes == 0 {
                u64::MAX
            } else {
                mem.limit_bytes
            },
            max_usage: mem.max_usage_bytes,
            anon: mem.anon_bytes,
            file: mem.file_bytes,
            ..Default::default()
        });
        m.memory_events = protobuf::MessageField::some(MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill_events,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = protobuf::MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::MessageFull;
    use vessel_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn converts_and_has_containerds_type_name() {
        let s = StatsContainerResponse {
            cpu: protobuf::MessageField::some(CpuStats {
                usage_usec: 1500,
                user_usec: 1000,
                system_usec: 500,
                ..Default::default()
            }),
            memory: protobuf::MessageField::some(MemoryStats {
                usage_bytes: 4096,
                limit_bytes: 0,
                oom_kill_events: 2,
                ..Default::default()
            }),
            pids: protobuf::MessageField::some(PidsStats {
                current: 3,
                limit: 100,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = to_metrics(&s);
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!((m.pids.current, m.pids.limit), (3, 100));
        assert_eq!(
            Metrics::descriptor().full_name(),
            "io.containerd.cgroups.v2.Metrics"
        );
        let any = containerd_shim::util::convert_to_any(Box::new(m)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }
}
