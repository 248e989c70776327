//! Mount points made on the host, in a container's rootfs, before the rootfs is shared with
//! the guest.
//!
//! Why: images rarely hold `/etc/hostname`, `/etc/hosts` or `/etc/resolv.conf` (CRI binds all
//! three) and often lack `/proc` or `/sys`. The agent creates what is missing, but in the guest
//! each create goes over virtio-fs and cost 0.3–1.2 s of emulated guest kernel per file on a
//! KVM-PVM host (the agent's per-mount setup steps, `vessel.log=debug`). Here it costs
//! microseconds, and runc makes its mount points on the host too.
//!
//! Safety: this runs before `share::apply_share` binds the rootfs into the guest-visible share,
//! so nothing in the guest can race it; what it walks is the image's own content, whose
//! symlinks are resolved inside the rootfs (`openat2(RESOLVE_IN_ROOT)`), as the agent resolves
//! them. Components are created relative to the resolved parent's fd, and the last one with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` or `mkdirat`, so an existing entry (a dangling symlink
//! included) is never followed nor replaced. It is best effort: whatever cannot be made here
//! the agent still makes, or refuses with its own error.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use oci_spec::runtime::Spec;

/// What [`precreate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// Destinations it created (directories and empty files), in the spec's order.
    pub created: Vec<PathBuf>,
    /// Destinations it left to the agent, with why.
    pub skipped: Vec<(PathBuf, Errno)>,
}

/// Creates the missing mount points of `spec`'s mounts under `rootfs` (a host path the
/// runtime mounted or was given; not yet shared with the guest). A mount point below an
/// earlier mount's destination is left alone: the guest mounts over it first (`/dev/pts` on
/// the `/dev` tmpfs). A bind whose host source is not a directory gets an empty file.
pub fn precreate(rootfs: &Path, spec: &Spec) -> Result<Made, Errno> {
    let root = open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut made = Made::default();
    let mut mounted: Vec<&Path> = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().as_path();
        let below_earlier = mounted.iter().any(|d| dest.starts_with(d) && dest != *d);
        mounted.push(dest);
        let Some(components) = normal_components(dest) else {
            continue;
        };
        if below_earlier || components.is_empty() {
            continue;
        }
        let options = m.options().clone().unwrap_or_default();
        let file = if crate::share::is_bind(m.typ().as_deref(), &options) {
            // A bind's mount point has its source's kind; a missing source is the share's
            // error to report (`share::apply_share`), not a directory to make.
            match m.source().as_ref().map(std::fs::metadata) {
                Some(Ok(meta)) => !meta.is_dir(),
                _ => {
                    made.skipped.push((dest.to_path_buf(), Errno::ENOENT));
                    continue;
                }
            }
        } else {
            false
        };
        match ensure(&root, &components, file) {
            Ok(true) => made.created.push(dest.to_path_buf()),
            Ok(false) => {}
            Err(e) => made.skipped.push((dest.to_path_buf(), e)),
        }
    }
    Ok(made)
}

/// The path's components if it is absolute and has no `..` (the agent refuses the others).
fn normal_components(dest: &Path) -> Option<Vec<&OsStr>> {
    if !dest.is_absolute() {
        return None;
    }
    let mut out = Vec::new();
    for c in dest.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// How often `openat2(RESOLVE_IN_ROOT)` is retried on EAGAIN.
const OPENAT2_TRIES: usize = 16;

/// With RESOLVE_IN_ROOT the kernel answers EAGAIN when a `..` met a rename or mount anywhere
/// on the system meanwhile: tried again, a few times, as openat2(2) says.
fn resolve_in_root(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root, rel, how) {
            Err(Errno::EAGAIN) if tries < OPENAT2_TRIES => tries += 1,
            other => return other,
        }
    }
}

/// Makes `components` exist under `root` (directories, the last one a file if `file`);
/// whether it created the last one.
fn ensure(root: &OwnedFd, components: &[&OsStr], file: bool) -> Result<bool, Errno> {
    let mut prefix = PathBuf::new();
    let mut parent: Option<OwnedFd> = None;
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        prefix.push(name);
        match resolve_in_root(root, &prefix) {
            Ok(_) if last => return Ok(false),
            Ok(fd) => {
                parent = Some(fd);
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let dir = parent.as_ref().unwrap_or(root).as_fd();
        if last && file {
            openat(
                dir,
                *name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            return Ok(true);
        }
        mkdirat(dir, *name, Mode::from_bits_truncate(0o755))?;
        if last {
            return Ok(true);
        }
        parent = Some(resolve_in_root(root, &prefix)?);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, SpecBuilder};
    use std::os::unix::fs::symlink;

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        SpecBuilder::default().mounts(mounts).build().unwrap()
    }

    fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn makes_missing_dirs_and_files_inside_the_rootfs_only() {
        let host = tempfile::tempdir().unwrap();
        let rootfs = host.path().join("rootfs");
        let outside = host.path().join("outside");
        std::fs::create_dir_all(rootfs.join("real-etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // The image's /etc is an absolute symlink: it must resolve inside the rootfs.
        symlink("/real-etc", rootfs.join("etc")).unwrap();
        // A dangling symlink where a mount point goes: never followed, never replaced.
        symlink("/../outside/planted", rootfs.join("real-etc/hosts")).unwrap();
        let file_src = host.path().join("hostname");
        std::fs::write(&file_src, "pod\n").unwrap();
        let dir_src = host.path().join("vol");
        std::fs::create_dir(&dir_src).unwrap();
        let spec = spec_with(vec![
            mount("/proc", "proc", Path::new("proc"), &[]),
            mount("/dev", "tmpfs", Path::new("tmpfs"), &[]),
            mount("/dev/pts", "devpts", Path::new("devpts"), &[]),
            mount("/etc/hostname", "bind", &file_src, &["rbind", "ro"]),
            mount("/etc/hosts", "bind", &file_src, &["rbind"]),
            mount("/data/vol", "none", &dir_src, &["bind"]),
            mount("/missing", "bind", &host.path().join("nosuch"), &["rbind"]),
            mount("/x/../y", "tmpfs", Path::new("tmpfs"), &[]),
        ]);
        let made = precreate(&rootfs, &spec).unwrap();
        assert_eq!(
            made.created,
            ["/proc", "/dev", "/etc/hostname", "/data/vol"]
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        assert!(rootfs.join("proc").is_dir());
        assert!(!rootfs.join("dev/pts").exists(), "below /dev: the guest's");
        let hostname = rootfs.join("real-etc/hostname");
        assert!(hostname.is_file() && std::fs::read(&hostname).unwrap().is_empty());
        assert!(rootfs.join("data/vol").is_dir());
        assert!(
            !rootfs.join("y").exists(),
            "a path with .. is the agent's to refuse"
        );
        assert_eq!(
            made.skipped,
            vec![
                (PathBuf::from("/etc/hosts"), Errno::EEXIST),
                (PathBuf::from("/missing"), Errno::ENOENT)
            ]
        );
        assert!(
            !rootfs.join("missing").exists(),
            "no mount point for a missing source"
        );
        assert!(
            std::fs::symlink_metadata(rootfs.join("real-etc/hosts"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "the planted symlink is left as it was"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Again: everything exists, nothing is made.
        let again = precreate(&rootfs, &spec).unwrap();
        assert!(again.created.is_empty(), "{again:?}");
        assert_eq!(again.skipped, made.skipped);
    }
}
