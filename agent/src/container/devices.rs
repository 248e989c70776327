//! Device nodes in the container's /dev: the OCI default set (null, zero, full, random,
//! urandom, tty), the spec's `linux.devices`, and the standard symlinks.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::{fchmodat, makedev, FchmodatFlags, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::{ensure_mountpoint, secure_join, PinnedDest};
use super::ChildError;
use crate::syscall::Syscall;

/// (name in /dev, major, minor) of the devices every container gets.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The container's /dev, opened once (resolved inside the rootfs, no symlink followed at its
/// last step): the default nodes and the symlinks are made relative to it. On an emulating
/// host every path walk through the rootfs share costs tens of ms; this makes a node two
/// calls (`mknodat`, `fchmodat`) instead of seven path-based ones.
fn open_dev(rootfs: &Path) -> Result<OwnedFd, ChildError> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    fs::create_dir_all(&dev).map_err(|e| ChildError::io(format!("mkdir {}", dev.display()), e))?;
    nix::fcntl::open(
        &dev,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| ChildError::sys(format!("open {}", dev.display()), e))
}

/// A default node `name` in `dev` (0666, root-owned); `false` when the node cannot be made
/// here (no CAP_MKNOD, a nodev mount): the caller binds the host's instead.
fn default_node(
    sys: &dyn Syscall,
    dev: &OwnedFd,
    name: &str,
    major: u64,
    minor: u64,
) -> Result<bool, ChildError> {
    let make = || {
        sys.mknodat(
            dev.as_fd(),
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
    };
    match make() {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => {
            unlinkat(dev, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| ChildError::sys(format!("unlink /dev/{name}"), e))?;
            make().map_err(|e| ChildError::sys(format!("mknod /dev/{name}"), e))?;
        }
        Err(nix::errno::Errno::EPERM) => return Ok(false),
        Err(e) => return Err(ChildError::sys(format!("mknod /dev/{name}"), e)),
    }
    // mknod applies the umask; set the exact mode.
    fchmodat(
        dev,
        name,
        Mode::from_bits_truncate(0o666),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| ChildError::sys(format!("chmod /dev/{name}"), e))?;
    Ok(true)
}

/// Creates the default devices and the spec's devices under `rootfs` (before pivot_root).
pub fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    extra: &[LinuxDevice],
) -> Result<(), ChildError> {
    let dev = open_dev(rootfs)?;
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = Path::new("/dev").join(name);
        if extra.iter().any(|d| *d.path() == path) {
            continue;
        }
        if !default_node(sys, &dev, name, *major, *minor)? {
            create_node(
                sys,
                rootfs,
                &path,
                SFlag::S_IFCHR,
                *major,
                *minor,
                0o666,
                None,
                None,
            )?;
        }
    }
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(ChildError::Invalid(format!(
                    "device {}: type 'a' is not a node",
                    d.path().display()
                )))
            }
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        create_node(
            sys,
            rootfs,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
            d.uid(),
            d.gid(),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn create_node(
    sys: &dyn Syscall,
    rootfs: &Path,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), ChildError> {
    let dest = secure_join(rootfs, path)?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ChildError::io(format!("mkdir {}", parent.display()), e))?;
    }
    let _ = fs::remove_file(&dest);
    match sys.mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    ) {
        Ok(()) => {
            // mknod applies the umask; set the exact mode.
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &dest,
                Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| ChildError::sys(format!("chmod {}", dest.display()), e))?;
            sys.chown(&dest, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                .map_err(|e| ChildError::sys(format!("chown {}", dest.display()), e))?;
        }
        // Without CAP_MKNOD (or on a nodev filesystem), bind the host's node instead.
        Err(nix::errno::Errno::EPERM) if kind != SFlag::S_IFIFO => {
            ensure_mountpoint(&dest, true)?;
            let pinned = PinnedDest::open(rootfs, path)?;
            sys.mount(Some(path), pinned.path(), None, MsFlags::MS_BIND, None)
                .map_err(|e| ChildError::sys(format!("bind device {}", path.display()), e))?;
        }
        Err(e) => return Err(ChildError::sys(format!("mknod {}", dest.display()), e)),
    }
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx → pts/ptmx (if the spec mounts /dev/pts).
pub fn create_symlinks(rootfs: &Path, has_devpts: bool) -> Result<(), ChildError> {
    let dev = open_dev(rootfs)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if has_devpts {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        if name == "ptmx" {
            let _ = unlinkat(&dev, name, UnlinkatFlags::NoRemoveDir);
        }
        match symlinkat(target, &dev, name) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(ChildError::sys(format!("symlink /dev/{name}"), e)),
        }
    }
    Ok(())
}

/// Binds the container's pty slave (a path in the container's /dev/pts) onto /dev/console,
/// as runc does for `terminal: true`. Runs after pivot_root.
pub fn bind_console(sys: &dyn Syscall, slave: &Path) -> Result<(), ChildError> {
    let dest = Path::new("/dev/console");
    ensure_mountpoint(dest, true)?;
    sys.mount(Some(slave), dest, None, MsFlags::MS_BIND, None)
        .map_err(|e| ChildError::sys("bind /dev/console", e))
}
