//! PID 1 duties in the guest: the base filesystems, cgroup controllers, hostname, loopback,
//! and powering off. Every step logs its error and goes on: PID 1 must never exit (that is a
//! kernel panic), and a partly set-up guest that answers Check is easier to diagnose.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, MsFlags};

/// (source, target, fstype, flags, data)
const BASE_MOUNTS: &[(&str, &str, &str, u64, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    ),
    (
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        CGROUP2_OPTIONS,
    ),
];

/// The guest's cgroup2 mount options. `favordynmods` keeps the threadgroup rwsem that
/// serialises task migrations in its slow mode, so moving a process into a container's cgroup
/// no longer waits for an RCU grace period (on KVM-PVM, with the guest kernel emulated, the
/// move cost ~150 ms); forks and exits pay an uncontended rwsem instead of a per-CPU counter,
/// which on one vCPU is the same work. Linux 6.0+; without it the mount is retried bare.
pub const CGROUP2_OPTIONS: &str = "favordynmods";
const NOSUID_NODEV_NOEXEC: u64 = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Mounts the base filesystems and prepares cgroups. Returns the number of failed steps.
pub fn setup_pid1() -> usize {
    let mut failures = 0;
    if let Err(e) = leave_initramfs() {
        log::error!("moving off the initramfs (containers cannot pivot_root): {e}");
        failures += 1;
    }
    for (src, target, fstype, flags, data) in BASE_MOUNTS {
        if let Err(e) = fs::create_dir_all(target) {
            log::error!("mkdir {target}: {e}");
        }
        let data = (!data.is_empty()).then_some(*data);
        let flags = MsFlags::from_bits_truncate(*flags);
        let mount_with =
            |data: Option<&str>| mount(Some(*src), *target, Some(*fstype), flags, data);
        let mut result = mount_with(data);
        if result == Err(nix::errno::Errno::EINVAL) && data == Some(CGROUP2_OPTIONS) {
            log::warn!("cgroup2 without {CGROUP2_OPTIONS}: the kernel refused it");
            result = mount_with(None);
        }
        match result {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => {
                log::error!("mount {fstype} on {target}: {e}");
                failures += 1;
            }
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    if let Err(e) = nix::unistd::sethostname(
        cmdline_value("vessel.hostname")
            .as_deref()
            .unwrap_or("vessel"),
    ) {
        log::error!("sethostname: {e}");
        failures += 1;
    }
    if let Err(e) = crate::network::loopback_up() {
        log::error!("bringing up lo: {e}");
        failures += 1;
    }
    for (key, value) in GUEST_SYSCTLS {
        if let Err(e) = fs::write(Path::new("/proc/sys").join(key), value) {
            log::warn!("sysctl {key}={value}: {e}");
        }
    }
    failures
}

/// Kernel settings of the guest, which is the pod's network namespace too (set before a
/// snapshot is taken, so every restored pod has them):
///
/// * `tcp_min_tso_segs` 44 (~64 KiB, default 2): TCP sizes its TSO frames by its pacing rate
///   (about 1 ms of data each), but no smaller than this. On KVM-PVM each frame costs the
///   emulated guest kernel ~20 ms (build, queue, interrupt, the ACK), which held a stream at
///   two segments a frame and ~0.15 MB/s; with the NIC's TSO (the host kernel segments) a
///   frame can carry 64 KiB. On hardware KVM the only change is that a slow stream leaves in
///   bursts of up to 64 KiB into the host's stack instead of 2 896 bytes.
const GUEST_SYSCTLS: &[(&str, &str)] = &[("net/ipv4/tcp_min_tso_segs", "44")];

/// The initramfs is the kernel's "rootfs" mount, which pivot_root refuses to move (EINVAL),
/// so no container could pivot into its root from there. As every initramfs does before
/// `switch_root`, move onto a fresh tmpfs: mount it on /newroot, move it over / and chroot.
/// The agent's own binary stays behind in the old root; re-executing it as a container's
/// child goes through /proc/self/exe, which does not need a path to it. A root that is not
/// ramfs/tmpfs (the agent as PID 1 of a pid namespace on a host) is left alone.
fn leave_initramfs() -> nix::Result<()> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // linux/magic.h; nix has no constant for ramfs.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let kind = statfs("/")?.filesystem_type();
    if kind != RAMFS_MAGIC && kind != TMPFS_MAGIC {
        return Ok(());
    }
    match nix::unistd::mkdir("/newroot", nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    mount(
        Some("tmpfs"),
        "/newroot",
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    nix::unistd::chdir("/newroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")
}

/// Enables every available controller for child cgroups but `cpu`, which the pod's rule
/// enables when its containers need it (`container::cgroup_cpu`).
pub fn enable_cgroup_controllers(root: &Path) {
    let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| *c != crate::container::cgroup_cpu::V2_CPU_CONTROLLER)
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Err(e) = fs::write(root.join("cgroup.subtree_control"), wanted.join(" ")) {
        log::error!("enabling cgroup controllers {wanted:?}: {e}");
    }
}

/// A `key=value` from the kernel command line.
pub fn cmdline_value(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    parse_cmdline(&cmdline, key)
}

fn parse_cmdline(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().rev().find_map(|w| {
        w.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_string)
    })
}

/// After DestroySandbox: let the reply go out, flush filesystems, and reboot — which the
/// VMM treats as power-off.
pub fn power_off_soon() {
    let spawned = std::thread::Builder::new()
        .name("poweroff".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            nix::unistd::sync();
            let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            log::error!("reboot: {e}");
        });
    if let Err(e) = spawned {
        log::error!("starting power-off thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cmdline_values() {
        let c = "console=ttyS0 vessel.log=debug quiet vessel.log=info vessel.hostname=pod1";
        assert_eq!(
            super::parse_cmdline(c, "vessel.log").as_deref(),
            Some("info")
        );
        assert_eq!(
            super::parse_cmdline(c, "vessel.hostname").as_deref(),
            Some("pod1")
        );
        assert_eq!(super::parse_cmdline(c, "vessel.missing"), None);
    }
}
