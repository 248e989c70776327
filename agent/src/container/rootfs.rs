//! The container's filesystem view: propagation, the rootfs bind, the spec's mounts,
//! devices, pivot_root, masked and read-only paths, sysctls and a read-only root.
//! Runs in the container's new mount namespace (in the child, before exec).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::devices;
use super::mounts::{
    ensure_mountpoint, mount_one, propagation_flag, secure_join, CgroupMountStyle, PinnedDest,
};
use super::ChildError;
use crate::syscall::Syscall;

/// What the agent adds to the spec's view of the filesystem.
pub struct RootfsExtras<'a> {
    /// Sandbox-wide resolv.conf to bind at /etc/resolv.conf when the spec does not mount one.
    pub resolv_conf: Option<&'a Path>,
    pub cgroup_style: &'a CgroupMountStyle,
    pub terminal: bool,
}

/// Builds the root filesystem and pivots into it. With a terminal, returns the master of the
/// pty opened inside the container (see `console::open_console`).
pub fn setup(
    sys: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    extras: &RootfsExtras<'_>,
    step: &mut dyn FnMut(&str),
) -> Result<Option<OwnedFd>, ChildError> {
    let linux = spec.linux().as_ref();
    // Nothing we mount may propagate back to the agent's namespace.
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    sys.mount(None, Path::new("/"), None, prop, None)
        .map_err(|e| ChildError::sys("make / slave/private", e))?;
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| ChildError::sys(format!("bind rootfs {}", rootfs.display()), e))?;

    step("rootfs: propagation, bind");
    let mounts = spec.mounts().clone().unwrap_or_default();
    // One step per mount: their costs differ by an order of magnitude on an emulating host.
    for m in &mounts {
        mount_one(sys, rootfs, m, extras.cgroup_style)?;
        step(&format!("mount {}", m.destination().display()));
    }
    let mounted = |p: &str| mounts.iter().any(|m| m.destination() == Path::new(p));
    if let Some(resolv) = extras.resolv_conf.filter(|_| !mounted("/etc/resolv.conf")) {
        let etc = secure_join(rootfs, Path::new("/etc"))?;
        if etc.is_dir() {
            let dest = Path::new("/etc/resolv.conf");
            ensure_mountpoint(&secure_join(rootfs, dest)?, true)?;
            let pinned = PinnedDest::open(rootfs, dest)?;
            sys.mount(Some(resolv), pinned.path(), None, MsFlags::MS_BIND, None)
                .map_err(|e| ChildError::sys("bind resolv.conf", e))?;
            // Read-only like the rest of the sandbox's files (pinned again: the new mount).
            let pinned = PinnedDest::open(rootfs, dest)?;
            let _ = sys.mount(
                None,
                pinned.path(),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            );
        }
    }
    let no_devices = Vec::new();
    devices::create_devices(
        sys,
        rootfs,
        linux
            .and_then(|l| l.devices().as_ref())
            .unwrap_or(&no_devices),
    )?;
    devices::create_symlinks(rootfs, mounted("/dev/pts"))?;
    step("rootfs: resolv.conf, devices");

    pivot(sys, rootfs)?;
    step("rootfs: pivot_root");
    let root = sys.container_root(rootfs);
    // Before any read-only remount: /dev/console is bound over.
    let console = if extras.terminal {
        Some(super::console::open_console(sys, true)?)
    } else {
        None
    };

    if let Some(linux) = linux {
        // Sysctls first, as runc does: /proc/sys is among the read-only paths (podman names
        // it, and sets net.ipv4.ping_group_range).
        for (key, value) in linux.sysctl().iter().flatten() {
            write_sysctl(sys, &root, key, value)?;
        }
        for p in linux.masked_paths().iter().flatten() {
            mask_path(sys, &root, p)?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            readonly_path(sys, &root, p)?;
        }
        step("rootfs: sysctls, masked and read-only paths");
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        sys.mount(
            None,
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .map_err(|e| ChildError::sys("remount / read-only", e))?;
    }
    Ok(console)
}

/// pivot_root(".", ".") then detach the old root (runc's way: no temporary directory).
fn pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<(), ChildError> {
    sys.chdir(rootfs)
        .map_err(|e| ChildError::sys("chdir rootfs", e))?;
    sys.pivot_root_here()
        .map_err(|e| ChildError::sys("pivot_root", e))?;
    // The old root is stacked on "."; make it private so the detach does not propagate.
    let here = Path::new(".");
    sys.mount(None, here, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(|e| ChildError::sys("make old root slave", e))?;
    sys.umount2(here, MntFlags::MNT_DETACH)
        .map_err(|e| ChildError::sys("detach old root", e))?;
    sys.chdir(Path::new("/"))
        .map_err(|e| ChildError::sys("chdir /", e))
}

/// `path`, absolute in the container, seen from this process (`root`: see
/// `Syscall::container_root`).
fn at(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A masked path: an empty read-only tmpfs over a directory, /dev/null over a file; a path
/// that does not exist is left alone (runc's rule).
fn mask_path(sys: &dyn Syscall, root: &Path, path: &str) -> Result<(), ChildError> {
    let p = at(root, path);
    let meta = match fs::metadata(&p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let res = if meta.is_dir() {
        sys.mount(
            Some(Path::new("tmpfs")),
            &p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0k"),
        )
    } else {
        let null = at(root, "/dev/null");
        sys.mount(Some(&null), &p, None, MsFlags::MS_BIND, None)
    };
    match res {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(ChildError::sys(format!("mask {path}"), e)),
    }
}

/// A read-only path: bound onto itself, then remounted read-only, nosuid, nodev, noexec.
fn readonly_path(sys: &dyn Syscall, root: &Path, path: &str) -> Result<(), ChildError> {
    let p = at(root, path);
    match sys.mount(Some(&p), &p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(ChildError::sys(format!("bind {path}"), e)),
    }
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_REC
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    sys.mount(Some(&p), &p, None, flags, None)
        .map_err(|e| ChildError::sys(format!("read-only {path}"), e))
}

pub(super) fn write_sysctl(
    sys: &dyn Syscall,
    root: &Path,
    key: &str,
    value: &str,
) -> Result<(), ChildError> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(ChildError::Invalid(format!("bad sysctl name {key:?}")));
    }
    let path = at(root, "/proc/sys").join(key.replace('.', "/"));
    sys.write_sysctl(&path, value)
        .map_err(|e| ChildError::io(format!("sysctl {key}"), e))
}
