//! The spec's mounts: option parsing, safe destination resolution inside the rootfs, and
//! mounting (proc, sysfs, tmpfs, devpts, mqueue, cgroup/cgroup2, bind with ro/rbind/
//! propagation options).

use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::ChildError;
use crate::syscall::Syscall;

pub use vessel_protocol::mount_options::{parse as parse_options, propagation_flag, MountOptions};

/// Resolves `path` inside `root` as if `root` were `/`: symlinks (absolute or relative) and
/// `..` never leave `root`. Missing components are appended as they are.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, ChildError> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&comp);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(ChildError::Invalid(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = fs::read_link(&full)
                    .map_err(|e| ChildError::io(format!("readlink {}", full.display()), e))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// A mount destination pinned by an fd: opened with `openat2(RESOLVE_IN_ROOT)` from the
/// rootfs, so the kernel resolves every symlink and `..` inside it atomically, and mounted on
/// through `/proc/self/fd/N`, so a container that swaps a path component for a symlink
/// between resolution and mount (runc's CVE-2021-30465: a volume shared with another
/// container) cannot redirect the mount out of its rootfs.
pub struct PinnedDest {
    _fd: std::os::fd::OwnedFd,
    proc_path: PathBuf,
}

/// How often `openat2(RESOLVE_IN_ROOT)` is retried on EAGAIN.
const OPENAT2_TRIES: usize = 16;

impl PinnedDest {
    /// Pins `dest` (absolute in the container) inside `rootfs`; it must exist.
    pub fn open(rootfs: &Path, dest: &Path) -> Result<PinnedDest, ChildError> {
        use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
        use std::os::fd::AsRawFd;
        let root = open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| ChildError::sys(format!("open rootfs {}", rootfs.display()), e))?;
        let rel = dest.strip_prefix("/").unwrap_or(dest);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // With RESOLVE_IN_ROOT the kernel answers EAGAIN when a `..` met a rename or mount
        // anywhere on the system meanwhile (another container's setup): try again, a few
        // times, as openat2(2) says.
        let mut tries = 0;
        let fd = loop {
            match openat2(&root, rel, how) {
                Err(nix::errno::Errno::EAGAIN) if tries < OPENAT2_TRIES => tries += 1,
                other => break other,
            }
        }
        .map_err(|e| {
            ChildError::sys(
                format!("open mount point {} in the rootfs", dest.display()),
                e,
            )
        })?;
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(PinnedDest { _fd: fd, proc_path })
    }

    /// The path to hand to mount(2): the pinned directory or file, whatever the path now says.
    pub fn path(&self) -> &Path {
        &self.proc_path
    }
}

/// Creates a mount point: a directory, or an empty file when the source is not a directory.
pub fn ensure_mountpoint(dest: &Path, file: bool) -> Result<(), ChildError> {
    if dest.symlink_metadata().is_ok() {
        return Ok(());
    }
    if file {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| ChildError::io(format!("mkdir {}", parent.display()), e))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(dest)
            .map_err(|e| ChildError::io(format!("create {}", dest.display()), e))?;
    } else {
        fs::create_dir_all(dest)
            .map_err(|e| ChildError::io(format!("mkdir {}", dest.display()), e))?;
    }
    Ok(())
}

/// How to mount an OCI `cgroup` type on this host.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum CgroupMountStyle {
    /// cgroup2 everywhere, mounted with the hierarchy's root flags (`CgroupLayout::V2`).
    V2 { root_flags: String },
    /// A tmpfs with one v1 hierarchy per entry (directory name, mount options).
    V1(Vec<(String, String)>),
}

/// Mounts one spec mount under `rootfs` (before pivot_root).
pub fn mount_one(
    sys: &dyn Syscall,
    rootfs: &Path,
    m: &Mount,
    cgroup: &CgroupMountStyle,
) -> Result<(), ChildError> {
    if !m.destination().is_absolute() {
        return Err(ChildError::Invalid(format!(
            "mount destination {} is not absolute",
            m.destination().display()
        )));
    }
    let joined = secure_join(rootfs, m.destination())?;
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let data = opts.data_string();
    let ctx = |what: &str| format!("mount {what} on {}", m.destination().display());
    if is_bind {
        let src = m
            .source()
            .as_ref()
            .ok_or_else(|| ChildError::Invalid(ctx("bind without source")))?;
        let src_meta = fs::metadata(src)
            .map_err(|e| ChildError::io(ctx(&format!("bind source {}", src.display())), e))?;
        ensure_mountpoint(&joined, !src_meta.is_dir())?;
        let rec = opts.flags & MsFlags::MS_REC;
        let pinned = PinnedDest::open(rootfs, m.destination())?;
        sys.mount(
            Some(src.as_path()),
            pinned.path(),
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(|e| ChildError::sys(ctx("bind"), e))?;
        // Bind mounts ignore other flags until a remount (of the new mount: pinned again,
        // now resolving to its root).
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let pinned = PinnedDest::open(rootfs, m.destination())?;
            sys.mount(
                None,
                pinned.path(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | extra,
                None::<&str>,
            )
            .map_err(|e| ChildError::sys(ctx("bind remount"), e))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        ensure_mountpoint(&joined, false)?;
        mount_cgroup(sys, rootfs, m.destination(), opts.flags, cgroup)?;
    } else {
        ensure_mountpoint(&joined, false)?;
        let pinned = PinnedDest::open(rootfs, m.destination())?;
        let dest = pinned.path();
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let data = if data.is_empty() {
            None
        } else {
            Some(data.as_str())
        };
        let fstype = if typ.is_empty() { None } else { Some(typ) };
        let flags = opts.flags & !MsFlags::MS_REMOUNT;
        match sys.mount(Some(src.as_path()), dest, fstype, flags, data) {
            Ok(()) => {}
            // mqueue and sysfs cannot be mounted from a container sharing the agent's ipc/net
            // namespace on some kernels; runc falls back to a bind mount of the host's.
            Err(nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY)
                if matches!(typ, "sysfs" | "mqueue") =>
            {
                let host = if typ == "sysfs" {
                    "/sys"
                } else {
                    "/dev/mqueue"
                };
                sys.mount(
                    Some(Path::new(host)),
                    dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| ChildError::sys(ctx(typ), e))?;
            }
            Err(e) => return Err(ChildError::sys(ctx(typ), e)),
        }
    }
    if !opts.propagation.is_empty() {
        let pinned = PinnedDest::open(rootfs, m.destination())?;
        for p in &opts.propagation {
            sys.mount(None, pinned.path(), None::<&str>, *p, None::<&str>)
                .map_err(|e| ChildError::sys(ctx("propagation"), e))?;
        }
    }
    Ok(())
}

fn mount_cgroup(
    sys: &dyn Syscall,
    rootfs: &Path,
    destination: &Path,
    flags: MsFlags,
    style: &CgroupMountStyle,
) -> Result<(), ChildError> {
    let fail = |e| ChildError::sys(format!("mount cgroup on {}", destination.display()), e);
    let flags = flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    let pinned = PinnedDest::open(rootfs, destination)?;
    match style {
        CgroupMountStyle::V2 { root_flags } => sys
            .mount(
                Some(Path::new("cgroup2")),
                pinned.path(),
                Some("cgroup2"),
                flags,
                (!root_flags.is_empty()).then_some(root_flags.as_str()),
            )
            .map_err(fail),
        CgroupMountStyle::V1(hierarchies) => {
            let base = flags & !MsFlags::MS_RDONLY;
            sys.mount(
                Some(Path::new("tmpfs")),
                pinned.path(),
                Some("tmpfs"),
                base,
                Some("mode=755"),
            )
            .map_err(fail)?;
            // The hierarchies go into the new tmpfs: pinned again, now resolving to its root.
            let tmpfs = PinnedDest::open(rootfs, destination)?;
            let dest = tmpfs.path();
            for (name, options) in hierarchies {
                let sub = dest.join(name);
                let _ = fs::create_dir_all(&sub);
                sys.mount(
                    Some(Path::new("cgroup")),
                    &sub,
                    Some("cgroup"),
                    flags,
                    Some(options.as_str()),
                )
                .map_err(fail)?;
                // cpu,cpuacct style joint mounts also get one symlink per controller.
                if name.contains(',') {
                    for part in name.split(',') {
                        let _ = symlink(name, dest.join(part));
                    }
                }
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                sys.mount(
                    None,
                    dest,
                    None,
                    base | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                )
                .map_err(fail)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the pinned fd really is, from its magic link.
    fn pinned_target(p: &PinnedDest) -> PathBuf {
        fs::read_link(p.path()).unwrap()
    }

    #[test]
    fn pinned_destinations_never_leave_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(outside.join("etc")).unwrap();
        // Absolute and relative symlinks resolve inside the rootfs, as if it were /.
        symlink(&outside, rootfs.join("abs")).unwrap();
        symlink("../../../outside", rootfs.join("rel")).unwrap();
        for link in ["/abs", "/rel"] {
            match PinnedDest::open(&rootfs, Path::new(link)) {
                Ok(p) => assert!(
                    pinned_target(&p).starts_with(&rootfs),
                    "{link} pinned {}",
                    pinned_target(&p).display()
                ),
                // The target does not exist inside the rootfs: refused, never followed out.
                Err(e) => assert!(e.to_string().contains("mount point"), "{e}"),
            }
        }
        let p = PinnedDest::open(&rootfs, Path::new("/etc")).unwrap();
        assert_eq!(pinned_target(&p), rootfs.join("etc"));

        // The race of CVE-2021-30465: another container keeps swapping a directory for a
        // symlink to "/" while the mount point is resolved. Every pin stays in the rootfs.
        let swap = rootfs.join("vol");
        fs::create_dir_all(swap.join("etc")).unwrap();
        // The racer counts its swaps; the pinning loop runs until enough swaps happened
        // beside it (a busy CI machine may schedule the racer late), with a time bound.
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let swaps = std::sync::Arc::new(AtomicU32::new(0));
        let racer = {
            let (swap, stop, swaps, outside) =
                (swap.clone(), stop.clone(), swaps.clone(), outside.clone());
            std::thread::spawn(move || {
                let real = swap.with_extension("real");
                let evil = swap.with_extension("evil");
                fs::rename(&swap, &real).unwrap();
                symlink(&outside, &evil).unwrap();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let from = if n.is_multiple_of(2) { &evil } else { &real };
                    let _ = fs::rename(from, &swap);
                    let _ = fs::rename(&swap, from);
                    n += 1;
                    swaps.store(n, Ordering::Relaxed);
                }
            })
        };
        let (mut tries, mut pinned) = (0u32, 0u32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (tries < 3000 || swaps.load(Ordering::Relaxed) < 1000 || pinned == 0)
            && std::time::Instant::now() < deadline
        {
            tries += 1;
            if let Ok(p) = PinnedDest::open(&rootfs, Path::new("/vol/etc")) {
                let t = pinned_target(&p);
                assert!(
                    t.starts_with(&rootfs),
                    "pinned outside the rootfs: {}",
                    t.display()
                );
                pinned += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        let swaps = swaps.load(Ordering::Relaxed);
        assert!(
            swaps >= 1000 && pinned > 0,
            "no race happened within 60 s: {swaps} swaps, {pinned} pins in {tries} tries"
        );
    }

    #[test]
    fn secure_join_stays_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../../../..", r.join("a/up")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/a/b/c")).unwrap(),
            r.join("a/b/c")
        );
        assert_eq!(
            secure_join(r, Path::new("/a/abs/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("/a/up/x")).unwrap(), r.join("x"));
        assert_eq!(secure_join(r, Path::new("/../../x")).unwrap(), r.join("x"));
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert!(secure_join(r, Path::new("/loop1/x")).is_err());
    }
}
