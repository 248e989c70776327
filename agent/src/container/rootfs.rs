//! The container's filesystem view: propagation, the rootfs bind, the spec's mounts,
//! devices, pivot_root, masked and read-only paths, sysctls and a read-only root.
//! Runs in the container's new mount namespace (in the child, before exec).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::Spec;

use super::devices;
use super::mounts::{
    ensure_mountpoint, mount_one, propagation_flag, secure_join, CgroupMountStyle,
};
use super::ChildError;

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
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(|e| ChildError::sys("make / slave/private", e))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| ChildError::sys(format!("bind rootfs {}", rootfs.display()), e))?;

    step("rootfs: propagation, bind");
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_one(rootfs, m, extras.cgroup_style)?;
    }
    step("rootfs: the spec's mounts");
    let mounted = |p: &str| mounts.iter().any(|m| m.destination() == Path::new(p));
    if let Some(resolv) = extras.resolv_conf.filter(|_| !mounted("/etc/resolv.conf")) {
        let etc = secure_join(rootfs, Path::new("/etc"))?;
        if etc.is_dir() {
            let dest = secure_join(rootfs, Path::new("/etc/resolv.conf"))?;
            ensure_mountpoint(&dest, true)?;
            mount(
                Some(resolv),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ChildError::sys("bind resolv.conf", e))?;
            let _ = mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    let no_devices = Vec::new();
    devices::create_devices(
        rootfs,
        linux
            .and_then(|l| l.devices().as_ref())
            .unwrap_or(&no_devices),
    )?;
    devices::create_symlinks(rootfs, mounted("/dev/pts"))?;
    step("rootfs: resolv.conf, devices");

    pivot(rootfs)?;
    step("rootfs: pivot_root");
    // Before any read-only remount: /dev/console is bound over.
    let console = if extras.terminal {
        Some(super::console::open_console(true)?)
    } else {
        None
    };

    if let Some(linux) = linux {
        for p in linux.masked_paths().iter().flatten() {
            mask_path(p)?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            readonly_path(p)?;
        }
        for (key, value) in linux.sysctl().iter().flatten() {
            write_sysctl(key, value)?;
        }
        step("rootfs: masked and read-only paths, sysctls");
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| ChildError::sys("remount / read-only", e))?;
    }
    Ok(console)
}

/// pivot_root(".", ".") then detach the old root (runc's way: no temporary directory).
fn pivot(rootfs: &Path) -> Result<(), ChildError> {
    chdir(rootfs).map_err(|e| ChildError::sys("chdir rootfs", e))?;
    pivot_root(".", ".").map_err(|e| ChildError::sys("pivot_root", e))?;
    // The old root is stacked on "."; make it private so the detach does not propagate.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| ChildError::sys("make old root slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| ChildError::sys("detach old root", e))?;
    chdir("/").map_err(|e| ChildError::sys("chdir /", e))
}

fn mask_path(path: &str) -> Result<(), ChildError> {
    let p = PathBuf::from(path);
    let meta = match fs::metadata(&p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let res = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            &p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0k"),
        )
    } else {
        mount(
            Some("/dev/null"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    match res {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(ChildError::sys(format!("mask {path}"), e)),
    }
}

fn readonly_path(path: &str) -> Result<(), ChildError> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
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
    mount(Some(path), path, None::<&str>, flags, None::<&str>)
        .map_err(|e| ChildError::sys(format!("read-only {path}"), e))
}

fn write_sysctl(key: &str, value: &str) -> Result<(), ChildError> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(ChildError::Invalid(format!("bad sysctl name {key:?}")));
    }
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(|e| ChildError::io(format!("sysctl {key}"), e))
}
