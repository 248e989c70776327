//! CPU resources of a container's cgroup, and when cgroup v2's `cpu` controller is on.
//!
//! On v2 the controller is not enabled for containers by default (`cgroups::V2_CONTROLLERS`):
//! each cgroup with it is a scheduling entity whose load the kernel tracks at every tick,
//! wake-up and sleep, and on KVM-PVM, where the guest kernel is emulated, a container without
//! it ran measurably faster (`agent/README.md`, fourth and fifth rounds). Usage figures
//! (`cpu.stat`) exist either way. Two rules say when it is turned on:
//!
//! * **A cgroup's own** ([`asks_for_cpu`], the host agent's rule): a CPU quota, or shares
//!   other than unset (0) or cgroup v1's default (1024, which `ctr run` always sets).
//! * **The pod's** ([`PodCpuRule`], the guest's): a quota, or two containers that run with
//!   different weights. The VM is the pod: the host already gives the whole VM the pod's
//!   CPU share and limit in the pod's cgroup (`runtime/src/host_cgroup.rs`), so in the guest
//!   a weight only divides the CPU among the pod's containers, and equal weights divide it
//!   as the scheduler does without the controller (per thread rather than per container).
//!   A CRI pod's BestEffort containers all carry shares of 2, others shares of their CPU
//!   request, so most pods without a CPU limit never need it. The built-in pause never
//!   runs: its weight and quota count for nothing. When the controller turns on late, the
//!   earlier containers' weights are written then.

use std::path::PathBuf;
use std::sync::Mutex;

use oci_spec::runtime::{LinuxCpu, LinuxResources};
use vessel_protocol::errors::chain;

use super::cgroups::{enable_v2_controllers_of, write_in, Cgroup, CgroupError};

/// The v2 controller that is enabled only on demand.
pub const V2_CPU_CONTROLLER: &str = "cpu";
/// cgroup v1's default `cpu.shares`.
const V1_DEFAULT_SHARES: u64 = 1024;
/// cgroup v2's default `cpu.weight`, what a container without shares has.
const V2_DEFAULT_WEIGHT: u64 = 100;

/// Whether `cpu` asks for the controller by itself: a quota, or shares other than unset (0)
/// or v1's default. An unlimited quota or a period alone ask for nothing: a cgroup without
/// the controller behaves as they say.
pub fn asks_for_cpu(cpu: &LinuxCpu) -> bool {
    sets_quota(cpu)
        || cpu
            .shares()
            .is_some_and(|s| s != 0 && s != V1_DEFAULT_SHARES)
}

/// Whether `cpu` sets a quota, which only the controller can enforce.
fn sets_quota(cpu: &LinuxCpu) -> bool {
    cpu.quota().is_some_and(|q| q > 0)
}

/// Converts cgroup v1 cpu.shares to v2 cpu.weight (runc's formula).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return V2_DEFAULT_WEIGHT;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroup {
    /// Enables the `cpu` controller from the hierarchy's root down to this cgroup's parent,
    /// so its `cpu.weight` and `cpu.max` exist (every sibling gets them too, at their
    /// defaults). A level that refuses is left as it is (and logged); the write of a limit
    /// then fails and names the file.
    fn enable_v2_cpu_controller(&self) {
        for (parent, _) in self.v2_levels() {
            enable_v2_controllers_of(&parent, &[V2_CPU_CONTROLLER]);
        }
    }

    /// Writes `cpu`'s weight, quota and cpuset. `needed`: whether the v2 controller must be
    /// on for this cgroup (the caller's rule decided). Needed, the limits are written even
    /// if enabling failed: the write fails and names the file rather than a limit going
    /// missing. Not needed, they are written only if the controller is on anyway.
    pub(super) fn apply_cpu(&self, cpu: &LinuxCpu, needed: bool) -> Result<(), CgroupError> {
        let v2 = self.is_v2();
        let cpu_on = match (v2, needed) {
            (false, _) => true,
            (true, true) => {
                self.enable_v2_cpu_controller();
                true
            }
            (true, false) => self.dir("").is_some_and(|d| d.join("cpu.weight").exists()),
        };
        if let Some(shares) = cpu.shares().filter(|_| cpu_on) {
            match v2 {
                true => write_in(
                    self.dir(""),
                    "cpu.weight",
                    &shares_to_weight(shares).to_string(),
                )?,
                false => write_in(self.dir("cpu"), "cpu.shares", &shares.to_string())?,
            }
        }
        if cpu_on && (cpu.quota().is_some() || cpu.period().is_some()) {
            let period = cpu.period().unwrap_or(100_000);
            let quota = cpu.quota().unwrap_or(-1);
            if v2 {
                let q = if quota > 0 {
                    quota.to_string()
                } else {
                    "max".into()
                };
                write_in(self.dir(""), "cpu.max", &format!("{q} {period}"))?;
            } else {
                write_in(self.dir("cpu"), "cpu.cfs_period_us", &period.to_string())?;
                write_in(
                    self.dir("cpu"),
                    "cpu.cfs_quota_us",
                    &(if quota > 0 { quota } else { -1 }).to_string(),
                )?;
            }
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            write_in(self.dir("cpuset"), "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            write_in(self.dir("cpuset"), "cpuset.mems", mems)?;
        }
        Ok(())
    }
}

/// The pod's rule for the `cpu` controller (module docs), over the containers of one pod
/// whose cgroups are siblings on cgroup v2.
#[derive(Debug, Default)]
pub struct PodCpuRule {
    state: Mutex<PodCpu>,
}

#[derive(Debug, Default)]
struct PodCpu {
    /// The controller was turned on for the pod's containers.
    on: bool,
    /// Containers that run, by cgroup directory, with their shares (None: unset).
    members: Vec<(Cgroup, Option<u64>)>,
}

fn weight_of(shares: Option<u64>) -> u64 {
    shares.map_or(V2_DEFAULT_WEIGHT, shares_to_weight)
}

fn key(cgroup: &Cgroup) -> Option<PathBuf> {
    cgroup.procs_dir().map(PathBuf::from)
}

impl PodCpuRule {
    /// Applies `res` to the cgroup of one of the pod's containers, at its create or an
    /// update. `runs`: whether the container runs a program (the built-in pause does not).
    pub fn apply(
        &self,
        cgroup: &Cgroup,
        res: &LinuxResources,
        runs: bool,
    ) -> Result<(), CgroupError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Forget containers that are gone (their cgroup with them) and this one's old entry.
        let me = key(cgroup);
        let mut shares = None;
        st.members.retain(|(c, s)| {
            if key(c) == me {
                shares = *s;
                return false;
            }
            c.exists()
        });
        if let Some(s) = res.cpu().as_ref().and_then(|cpu| cpu.shares()) {
            shares = Some(s).filter(|s| *s != 0);
        }
        let differs = runs
            && st
                .members
                .iter()
                .any(|(_, s)| weight_of(*s) != weight_of(shares));
        let quota = runs && res.cpu().as_ref().is_some_and(sets_quota);
        let needed = st.on || quota || differs;
        if needed && !st.on {
            cgroup.enable_v2_cpu_controller();
            // The others' weights, which were not written while the controller was off. One
            // that cannot be written belongs to a container being removed.
            for (other, s) in &st.members {
                if let Some(s) = s {
                    let weight = shares_to_weight(*s).to_string();
                    if let Err(e) = write_in(other.dir(""), "cpu.weight", &weight) {
                        log::warn!("{}", chain(&e));
                    }
                }
            }
            st.on = true;
            log::info!("cgroup cpu controller on for the pod's containers");
        }
        cgroup.apply_without_cpu(res)?;
        if let Some(cpu) = res.cpu() {
            cgroup.apply_cpu(cpu, needed)?;
        }
        if runs {
            st.members.push((cgroup.clone(), shares));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroups::{fake_v2_root, v2_layout};
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};
    use std::path::Path;

    fn shares(s: u64) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().shares(s).build().unwrap())
            .build()
            .unwrap()
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn weight_conversion_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), V2_DEFAULT_WEIGHT);
    }

    /// The fake root offers `cpu` and enabled the rest; its `subtree_control` holds the last
    /// write (`+cpu`).
    #[test]
    fn the_pod_turns_cpu_on_when_weights_differ_and_writes_the_earlier_ones() {
        let root = fake_v2_root("cpuset cpu io memory pids", "cpuset io memory pids");
        let control = root.path().join("cgroup.subtree_control");
        let layout = v2_layout(root.path());
        let cgroup = |name: &str| {
            let c = layout
                .container_cgroup(Some(Path::new(name)), name)
                .unwrap();
            c.create().unwrap();
            c
        };
        let weight = |name: &str| read(&root.path().join(name).join("cpu.weight"));
        let rule = PodCpuRule::default();

        // The built-in pause's shares (2) and then an app container's (1024) differ, and it
        // has a quota, but the pause never runs; a second app container with equal shares
        // changes nothing.
        let pause = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(2u64)
                    .quota(50_000i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        rule.apply(&cgroup("pause"), &pause, false).unwrap();
        rule.apply(&cgroup("web"), &shares(1024), true).unwrap();
        rule.apply(&cgroup("idle"), &shares(1024), true).unwrap();
        assert_eq!(read(&control).unwrap(), "cpuset io memory pids");
        assert_eq!(weight("web"), None);

        // A container that is gone does not count: `idle`'s cgroup is removed and the
        // update of `web` to other shares leaves it alone in the pod.
        std::fs::remove_dir(root.path().join("idle")).unwrap();
        rule.apply(&cgroup("web"), &shares(2), true).unwrap();
        assert_eq!(read(&control).unwrap(), "cpuset io memory pids");

        // Different weights: on, and the earlier container gets its weight now.
        rule.apply(&cgroup("client"), &shares(512), true).unwrap();
        assert_eq!(read(&control).unwrap(), "+cpu");
        assert_eq!(weight("web").as_deref(), Some("1"));
        assert_eq!(weight("client").as_deref(), Some("20"));
        assert_eq!(weight("pause"), None);

        // Once on, it stays on: equal shares are written too.
        std::fs::write(&control, "cpuset cpu io memory pids").unwrap();
        rule.apply(&cgroup("late"), &shares(2), true).unwrap();
        assert_eq!(weight("late").as_deref(), Some("1"));
    }

    #[test]
    fn a_quota_alone_turns_cpu_on() {
        let root = fake_v2_root("cpu memory", "memory");
        let control = root.path().join("cgroup.subtree_control");
        let layout = v2_layout(root.path());
        let only = layout.container_cgroup(None, "only").unwrap();
        only.create().unwrap();
        let quota = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(50_000i64).build().unwrap())
            .build()
            .unwrap();
        PodCpuRule::default().apply(&only, &quota, true).unwrap();
        assert_eq!(read(&control).unwrap(), "+cpu");
        let dir = only.procs_dir().unwrap();
        assert_eq!(read(&dir.join("cpu.max")).as_deref(), Some("50000 100000"));
        assert_eq!(read(&dir.join("cpu.weight")), None);
    }
}
