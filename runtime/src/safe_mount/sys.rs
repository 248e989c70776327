//! Thin wrappers over the syscalls [`super`] needs: openat2 and mkdirat (from nix), and the new
//! mount API (open_tree, mount_setattr, move_mount), statx and an fd-based umount (raw `libc`,
//! because nix 0.31 has none of them). No policy lives here: every function does one syscall
//! and returns its `io::Error`; the caller decides what an errno means.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The empty path that, with `AT_EMPTY_PATH` (or the `*_EMPTY_PATH` flags), names the fd itself.
const EMPTY: &CStr = c"";

/// Resolution for every walk beneath a root: never above it, never through a symlink or a
/// magic link (`/proc/*/fd/*`-style jumps).
pub(super) const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// `mount_attr.propagation` value for private (`MS_PRIVATE` is a `c_ulong`, 32-bit on some targets).
#[allow(clippy::unnecessary_cast)]
pub(super) const PROPAGATION_PRIVATE: u64 = libc::MS_PRIVATE as u64;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Turns a syscall's return value into a fd we own.
fn owned_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `raw` as a new descriptor of this process; nothing else
    // owns it, so the OwnedFd becomes its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`: a trusted directory.
pub(super) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::open(path, flags, Mode::empty())?)
}

/// `openat2(dir, path, {flags | O_CLOEXEC, mode, resolve})`.
pub(super) fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    mode: u32,
    resolve: ResolveFlag,
) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(resolve);
    Ok(nix::fcntl::openat2(dir, path, how)?)
}

/// `mkdirat(dir, name, mode)`.
pub(super) fn mkdirat(dir: BorrowedFd<'_>, name: &Path, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::mkdirat(
        dir,
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)`: a detached
/// copy of the mount tree at `path` (the mount and every submount below it).
pub(super) fn open_tree_clone_recursive(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; open_tree only reads it and
    // returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    owned_fd(ret)
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {attr_set, attr_clr, propagation})`:
/// changes the mount `tree` refers to and every mount below it.
pub(super) fn mount_setattr_recursive(
    tree: BorrowedFd<'_>,
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation,
        userns_fd: 0,
    };
    let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint;
    // SAFETY: `EMPTY` is a static NUL-terminated string; `attr` is a live, initialised
    // mount_attr whose exact size is passed, and the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            flags,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(ret)
}

/// `move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`:
/// attaches the detached tree onto the object `target` refers to; no path is resolved.
pub(super) fn move_mount_fd(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are the static empty string; the fds are borrowed for the call; the
    // kernel reads nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            target.as_raw_fd(),
            EMPTY.as_ptr(),
            flags,
        )
    };
    check(ret)
}

/// What [`statx_fd`] reports about the object a fd refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// `S_IFMT` bits of the mode.
    pub file_type: u32,
    pub dev: u64,
    pub ino: u64,
    /// Id of the mount the fd is on (as in /proc/self/mountinfo); `None` on kernels < 5.8.
    pub mnt_id: Option<u64>,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.file_type == libc::S_IFREG
    }
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_INO | STATX_MNT_ID)`.
pub(super) fn statx_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: `statx` is a plain C struct of integers, for which all-zero bytes are valid.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let mask = libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID;
    // SAFETY: `EMPTY` is a static NUL-terminated string; `buf` is a live, writable statx that
    // the kernel fills in and nothing else aliases during the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::AT_EMPTY_PATH,
            mask,
            &mut buf as *mut libc::statx,
        )
    };
    check(ret)?;
    Ok(Stat {
        file_type: u32::from(buf.stx_mode) & libc::S_IFMT,
        dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
        ino: buf.stx_ino,
        mnt_id: (buf.stx_mask & libc::STATX_MNT_ID != 0).then_some(buf.stx_mnt_id),
    })
}

/// The `/proc/self/fd/N` magic link of a fd.
fn proc_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `umount2("/proc/self/fd/N", MNT_DETACH)`. The magic link jumps straight to the fd's
/// (mount, dentry) — no name is looked up — so when `fd` is the root of a mount, exactly that
/// mount (and everything mounted below it) is detached. Lazy because our own fd keeps the mount
/// busy (and the VMM may hold files open); it is freed once the last reference goes.
pub(super) fn umount_detach_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(nix::mount::umount2(
        &proc_fd(fd),
        nix::mount::MntFlags::MNT_DETACH,
    )?)
}

/// The path the kernel has for the object a fd refers to (readlink of its magic link); in the
/// same form as the mount points of /proc/self/mountinfo.
pub(super) fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(proc_fd(fd))
}
