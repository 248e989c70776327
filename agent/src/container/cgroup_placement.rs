//! Where a container's cgroup goes.
//!
//! * **On the host** (the host-agent backend, `vessel_runtime::vm::host_agent`) at the spec's
//!   `cgroupsPath`, as runc does: the host's tools look for it there.
//! * **In the guest** (the agent is PID 1) flat, one level below the agent's own cgroup (the
//!   root): `vessel-<id>`, whatever the spec's `cgroupsPath`. The VM is the pod, and the
//!   host already accounts and limits it in the pod's cgroup (`runtime/src/host_cgroup.rs`);
//!   in the guest the path only places the container. A CRI pod's paths
//!   (`/kubepods/besteffort/pod<uid>/<id>`) would make three parent cgroups for the sandbox
//!   and put every container four levels deep, and on KVM-PVM, where the guest kernel is
//!   emulated, both cost: each cgroup `mkdir` makes a css per controller and ~70 kernfs files
//!   (0.25–0.35 s), and every level is one more scheduling entity whose load the kernel
//!   tracks at each tick, wake-up and sleep. The parents would carry nothing: the agent sets
//!   limits on the container's own cgroup only. Inside a container the path shows only in
//!   `/proc/self/cgroup`, and there as `/` when it has a cgroup namespace (CRI's default on
//!   cgroup v2).
//! * **Spares.** Before a snapshot (`crate::warmup`) the agent makes a few empty cgroups
//!   (`spare-<n>`), so a restored pod's first containers take one instead of paying the
//!   `mkdir`. A spare is used once: it goes with its container.
//! * **CPU.** In the guest the pod's rule decides when the `cpu` controller is on
//!   ([`PodCpuRule`]); on the host each cgroup's own request does, as before.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::LinuxResources;

use super::cgroup_cpu::PodCpuRule;
use super::cgroups::{Cgroup, CgroupError, CgroupLayout};

/// Name prefix of a container's cgroup in the guest. Container ids never hold `/` and never
/// start with `.` ([`vessel_protocol::ids::check_id`]), so the name is one directory; spares'
/// names lack the prefix and so never meet a container's.
const FLAT_PREFIX: &str = "vessel-";
const SPARE_PREFIX: &str = "spare-";

/// How containers' cgroups are placed: the layout, the rule and the spares.
#[derive(Debug)]
pub struct CgroupPlacement {
    layout: CgroupLayout,
    flat: bool,
    spares: Mutex<Vec<Cgroup>>,
    cpu: PodCpuRule,
}

impl CgroupPlacement {
    /// `flat`: the guest's rule (one level below the agent's cgroup); otherwise the spec's
    /// `cgroupsPath`.
    pub fn new(layout: CgroupLayout, flat: bool) -> Self {
        CgroupPlacement {
            layout,
            flat,
            spares: Mutex::new(Vec::new()),
            cpu: PodCpuRule::default(),
        }
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// The cgroup a new container `id` gets (nothing is created). A `cgroupsPath` with `..`
    /// is refused under either rule.
    pub fn cgroup_for(&self, cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup, CgroupError> {
        let checked = self.layout.container_cgroup(cgroups_path, id)?;
        if !self.flat {
            return Ok(checked);
        }
        self.layout
            .container_cgroup(Some(&PathBuf::from(format!("{FLAT_PREFIX}{id}"))), id)
    }

    /// Makes `count` spare cgroups (cgroup v2 only: a v1 container needs one directory per
    /// hierarchy, and only the guest, which is v2, takes snapshots). Returns how many exist.
    pub fn make_spares(&self, count: usize) -> Result<usize, CgroupError> {
        if !self.layout.is_v2() {
            return Ok(0);
        }
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while spares.len() < count {
            let name = PathBuf::from(format!("{SPARE_PREFIX}{n}"));
            n += 1;
            let cgroup = self.layout.container_cgroup(Some(&name), "spare")?;
            if cgroup.exists() {
                continue;
            }
            cgroup.create()?;
            spares.push(cgroup);
        }
        Ok(spares.len())
    }

    /// Applies a container's resources to its cgroup, at its create or an update. `runs`:
    /// whether the container runs a program (the built-in pause does not).
    pub fn apply(
        &self,
        cgroup: &Cgroup,
        res: &LinuxResources,
        runs: bool,
    ) -> Result<(), CgroupError> {
        match self.flat && self.layout.is_v2() {
            true => self.cpu.apply(cgroup, res, runs),
            false => cgroup.apply(res),
        }
    }

    /// A spare cgroup, if one is left; it is the caller's from now on.
    pub fn claim_spare(&self) -> Option<Cgroup> {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        if spares.is_empty() {
            None
        } else {
            Some(spares.remove(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroups::{fake_v2_root, v2_layout as v2};

    #[test]
    fn the_guest_is_flat_and_the_host_follows_the_spec() {
        let layout = v2(Path::new("/sys/fs/cgroup"));
        let guest = CgroupPlacement::new(layout.clone(), true);
        let host = CgroupPlacement::new(layout, false);
        let cri = Path::new("/kubepods/besteffort/pod1/abc");
        let flat = guest.cgroup_for(Some(cri), "abc").unwrap();
        assert_eq!(
            flat.procs_dir(),
            Some(Path::new("/sys/fs/cgroup/vessel-abc"))
        );
        let flat = guest.cgroup_for(None, "abc").unwrap();
        assert_eq!(
            flat.procs_dir(),
            Some(Path::new("/sys/fs/cgroup/vessel-abc"))
        );
        let spec = host.cgroup_for(Some(cri), "abc").unwrap();
        assert_eq!(
            spec.procs_dir(),
            Some(Path::new("/sys/fs/cgroup/kubepods/besteffort/pod1/abc"))
        );
        for placement in [&guest, &host] {
            assert!(matches!(
                placement.cgroup_for(Some(Path::new("/a/../../etc")), "abc"),
                Err(CgroupError::BadPath(_))
            ));
        }
    }

    #[test]
    fn spares_are_made_once_and_claimed_in_order() {
        // A plain directory stands in for a cgroup2 mount: `create` is `mkdir`.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("spare-1")).unwrap();
        let placement = CgroupPlacement::new(v2(root.path()), true);
        assert_eq!(placement.make_spares(2).unwrap(), 2);
        // spare-1 was taken: it is skipped, not shared.
        let first = placement.claim_spare().unwrap();
        let second = placement.claim_spare().unwrap();
        assert_eq!(
            first.procs_dir(),
            Some(root.path().join("spare-0").as_path())
        );
        assert_eq!(
            second.procs_dir(),
            Some(root.path().join("spare-2").as_path())
        );
        assert!(root.path().join("spare-2").is_dir());
        assert!(placement.claim_spare().is_none());

        let v1 = CgroupLayout::V1 {
            hierarchies: Default::default(),
        };
        assert_eq!(CgroupPlacement::new(v1, true).make_spares(2).unwrap(), 0);
    }

    #[test]
    fn on_the_host_the_cpu_controller_is_enabled_only_for_a_container_that_asks() {
        use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
        // The root offers `cpu` and enabled the rest.
        let root = fake_v2_root("cpuset cpu io memory pids", "cpuset io memory pids");
        let control = root.path().join("cgroup.subtree_control");
        let placement = CgroupPlacement::new(v2(root.path()), false);

        let plain = placement.cgroup_for(None, "plain").unwrap();
        plain.create().unwrap();
        let memory_only = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        placement.apply(&plain, &memory_only, true).unwrap();
        // `ctr run`'s shares: v1's default, no request.
        let v1_default = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().shares(1024u64).build().unwrap())
            .build()
            .unwrap();
        placement.apply(&plain, &v1_default, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&control).unwrap(),
            "cpuset io memory pids"
        );
        assert!(!root.path().join("vessel/plain/cpu.weight").exists());

        let weighted = placement.cgroup_for(None, "weighted").unwrap();
        weighted.create().unwrap();
        let cpu = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        placement.apply(&weighted, &cpu, true).unwrap();
        // What the kernel is asked (the file takes the last write), then the limits.
        assert_eq!(std::fs::read_to_string(&control).unwrap(), "+cpu");
        let dir = root.path().join("vessel/weighted");
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.weight")).unwrap(),
            "39"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
    }
}
