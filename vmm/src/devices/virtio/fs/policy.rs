//! The strict virtio-fs policy: the guest (up to a compromised guest kernel sending raw FUSE
//! requests) creates no device nodes and no setuid/setgid files on the host, and cannot give
//! a host file capabilities.
//!
//! [`PolicyFs`] sits between `fuse-backend-rs`'s protocol `Server` and `PassthroughFs`: the
//! server has decoded each request into host memory (no value is read twice from guest
//! memory, so the guest cannot change it after the check), the policy checks or rewrites the
//! decoded arguments, and only then does the passthrough backend make a system call. Every
//! other operation is passed through unchanged.
//!
//! | request | policy |
//! |---|---|
//! | MKNOD of a character or block device | `EPERM` (a directory: `EPERM`, an unknown file type: `EINVAL`, as `mknod(2)`) |
//! | MKNOD of a FIFO, socket or regular file | allowed, `S_ISUID`/`S_ISGID` stripped, `rdev` 0 |
//! | CREATE, MKDIR | `S_ISUID`/`S_ISGID` stripped from the mode |
//! | SETATTR with a mode (chmod) | `S_ISUID` stripped; `S_ISGID` stripped unless the inode is a directory |
//! | RENAME2 with `RENAME_WHITEOUT` (makes a 0/0 character device) | `EPERM` |
//! | SETXATTR `security.capability` | `EPERM` (REMOVEXATTR of it gets `EPERM` from the host kernel: no `CAP_SETFCAP`) |
//! | FALLOCATE | like a write: clears `S_ISUID`/`S_ISGID` of the file first |
//! | GETXATTR, LISTXATTR with a buffer over 64 KiB | `E2BIG` (the backend would allocate it) |
//! | OPEN, CREATE with `O_PATH` | `EINVAL` (a guest kernel never sends it: `O_PATH` opens do not reach FUSE) |
//! | READ, WRITE | the handle's flags from its OPEN/CREATE, not the request's; an unknown handle: `EBADF` |
//!
//! Why READ and WRITE flags are pinned: `fuse-backend-rs` 0.14 (`PassthroughFs::read`/`write`)
//! wraps the handle's fd in a `File` and, when the request's flags differ from the handle's,
//! calls `fcntl(F_SETFL)`; when that fails (an `O_PATH` fd, `O_DIRECT` on tmpfs) the early
//! return drops the `File` and closes the fd while the handle map keeps its number. The next
//! file the VMM opens reuses the number and the guest reads and writes it through its stale
//! handle (found by the `virtio_fs` fuzz target). With the open flags passed back, the backend
//! never calls `F_SETFL`; the cost is that a guest `fcntl(F_SETFL)` on an open file (say
//! `O_NONBLOCK`, meaningless for regular files) does not reach the host fd.
//!
//! Setgid directories stay possible (chmod g+s, or inherited from a setgid parent as Linux
//! does): on a directory the bit only makes new entries inherit its group, it grants nothing
//! on exec, and shared group directories rely on it.
//!
//! Writes, truncation and chown are not rewritten here: the host kernel clears setuid/setgid
//! itself for them, because the serving thread has no `CAP_FSETID` (chown clears them for any
//! caller).
//!
//! Defence in depth, for a request that got past this wrapper through a bug:
//! * the serving thread has no `CAP_MKNOD`, `CAP_FSETID`, `CAP_SETFCAP`
//!   ([`super::privileges`]): the host kernel refuses character and block devices (except
//!   0/0 whiteouts, which need no capability since Linux 5.8) and `security.capability`, and
//!   clears setuid/setgid on every write and truncation;
//! * the event thread's seccomp filter kills the VMM on a `mknodat` of any device node
//!   (whiteouts included) and on `renameat2` with `RENAME_WHITEOUT`.
//!
//! Setuid/setgid in the mode of CREATE, MKDIR and chmod have this wrapper only (root with
//! `CAP_FOWNER` may set them on any file).

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::log_limit::LogLimiter;

/// The mode bits no guest-made file gets.
const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
/// File type and permission bits; anything above is not a mode.
const MODE_BITS: u32 = libc::S_IFMT | 0o7777;
/// Largest xattr value or name list the kernel ever asks for (`XATTR_SIZE_MAX`): the backend
/// allocates the buffer size the guest asks for.
pub(super) const XATTR_SIZE_MAX: u32 = 65536;
/// The file capabilities xattr.
const FCAPS_XATTR: &[u8] = b"security.capability";

static DENIED: LogLimiter = LogLimiter::new(10, Duration::from_secs(10));

macro_rules! denied {
    ($($arg:tt)+) => { crate::log_limited!(DENIED, log::Level::Warn, $($arg)+) };
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `mode` under the guest's `umask`, which only ever clears permission bits.
pub(super) fn apply_umask(mode: u32, umask: u32) -> u32 {
    mode & !(umask & 0o777)
}

/// The mode MKNOD may create with, or the errno it is refused with.
pub(super) fn mknod_mode(mode: u32) -> Result<u32, i32> {
    match mode & libc::S_IFMT {
        libc::S_IFCHR | libc::S_IFBLK => Err(libc::EPERM),
        // mknod(2) answers EPERM for a directory.
        libc::S_IFDIR => Err(libc::EPERM),
        // 0 is a regular file for mknod(2).
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => Ok(mode & MODE_BITS & !SUID_SGID),
        _ => Err(libc::EINVAL),
    }
}

/// The mode of CREATE and MKDIR, setuid and setgid stripped.
pub(super) fn create_mode(mode: u32) -> u32 {
    mode & !SUID_SGID
}

/// The mode a chmod may set on an inode of type `file_type` (`S_IFMT` bits).
pub(super) fn chmod_mode(mode: u32, file_type: u32) -> u32 {
    if file_type == libc::S_IFDIR {
        mode & !libc::S_ISUID
    } else {
        mode & !SUID_SGID
    }
}

/// Whether the guest may set xattr `name`.
pub(super) fn xattr_settable(name: &CStr) -> bool {
    name.to_bytes() != FCAPS_XATTR
}

/// The RENAME2 flags the guest may use (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
pub(super) fn rename_flags(flags: u32) -> Result<u32, i32> {
    if flags & libc::RENAME_WHITEOUT != 0 {
        return Err(libc::EPERM);
    }
    if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
        return Err(libc::EINVAL);
    }
    Ok(flags)
}

/// Whether OPEN/CREATE flags may reach the backend (`O_PATH` may not).
pub(super) fn open_flags_allowed(flags: u32) -> bool {
    flags & libc::O_PATH as u32 == 0
}

/// `PassthroughFs` under the policy (see the module documentation).
pub(crate) struct PolicyFs {
    inner: PassthroughFs<()>,
    /// The flags each open file handle was opened with: what READ and WRITE pass on. One entry
    /// per handle the backend holds (each one a host fd, so bounded by RLIMIT_NOFILE).
    handle_flags: Mutex<HashMap<u64, u32>>,
}

impl PolicyFs {
    pub(super) fn new(inner: PassthroughFs<()>) -> Self {
        Self {
            inner,
            handle_flags: Mutex::new(HashMap::new()),
        }
    }

    fn handle_flags(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        // A panic elsewhere cannot leave the map half-written: keep serving.
        self.handle_flags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The flags `handle` was opened with; `EBADF` for a handle this wrapper did not open.
    fn pinned_flags(&self, handle: u64) -> io::Result<u32> {
        self.handle_flags()
            .get(&handle)
            .copied()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn remember(&self, handle: Option<u64>, flags: u32) {
        if let Some(h) = handle {
            self.handle_flags().insert(h, flags);
        }
    }

    /// Clears setuid/setgid of a regular file about to be modified.
    fn kill_priv(&self, ctx: &Context, inode: u64, handle: u64) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, Some(handle))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mode & SUID_SGID == 0 {
            return Ok(());
        }
        let mut attr = st;
        attr.st_mode = st.st_mode & 0o7777 & !SUID_SGID;
        self.inner
            .setattr(ctx, inode, attr, Some(handle), SetattrValid::MODE)
            .map(drop)
    }
}

impl FileSystem for PolicyFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // File data cached across opens, dropped when the guest sees a new mtime or size
        // (`super::backend`: cache policy).
        let auto_inval = capable & FsOptions::AUTO_INVAL_DATA;
        Ok(self.inner.init(capable)? | auto_inval)
    }

    fn destroy(&self) {
        // The backend drops every handle here.
        self.inner.destroy();
        self.handle_flags().clear();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if valid.contains(SetattrValid::MODE) && attr.st_mode & SUID_SGID != 0 {
            // The type of an inode never changes: no race with the guest here.
            let file_type = if attr.st_mode & libc::S_ISGID != 0 {
                self.inner.getattr(ctx, inode, handle)?.0.st_mode & libc::S_IFMT
            } else {
                0
            };
            let mode = chmod_mode(attr.st_mode, file_type);
            if mode != attr.st_mode {
                denied!(
                    "virtio-fs: guest chmod {:o}: setuid/setgid stripped",
                    attr.st_mode
                );
            }
            attr.st_mode = mode;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        // The umask is applied here, so the mode checked is the mode used (the backend
        // would mask the file type bits with a guest's bogus umask too).
        let allowed = mknod_mode(apply_umask(mode, umask)).map_err(|e| {
            denied!("virtio-fs: guest mknod {name:?} mode {mode:o} rdev {rdev:#x}: errno {e}");
            errno(e)
        })?;
        self.inner.mknod(ctx, parent, name, allowed, 0, 0)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = create_mode(apply_umask(mode, umask));
        self.inner.mkdir(ctx, parent, name, mode, 0)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let flags = rename_flags(flags).map_err(|e| {
            denied!("virtio-fs: guest rename {oldname:?} with flags {flags:#x}: errno {e}");
            errno(e)
        })?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if !open_flags_allowed(flags) {
            denied!("virtio-fs: guest open with O_PATH refused");
            return Err(errno(libc::EINVAL));
        }
        let (handle, opts, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.remember(handle, flags);
        Ok((handle, opts | OpenOptions::KEEP_CACHE, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        if !open_flags_allowed(args.flags) {
            denied!("virtio-fs: guest create with O_PATH refused");
            return Err(errno(libc::EINVAL));
        }
        args.mode = create_mode(apply_umask(args.mode, args.umask));
        args.umask = 0;
        let flags = args.flags;
        let created = self.inner.create(ctx, parent, name, args)?;
        self.remember(created.1, flags);
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.pinned_flags(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.pinned_flags(handle)?;
        // The host kernel clears setuid/setgid: this thread has no CAP_FSETID.
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        // Punching or zeroing changes the data; whether the host file system clears
        // setuid for it varies, so it is done here for every fallocate.
        self.kill_priv(ctx, inode, handle)?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let released =
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        if released.is_ok() {
            self.handle_flags().remove(&handle);
        }
        released
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if !xattr_settable(name) {
            denied!("virtio-fs: guest setxattr {name:?} refused");
            return Err(errno(libc::EPERM));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if size > XATTR_SIZE_MAX {
            return Err(errno(libc::E2BIG));
        }
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        if size > XATTR_SIZE_MAX {
            return Err(errno(libc::E2BIG));
        }
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: u64,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_allows_fifos_sockets_and_regular_files_only() {
        use libc::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK};
        assert_eq!(mknod_mode(S_IFCHR | 0o666), Err(libc::EPERM));
        assert_eq!(mknod_mode(S_IFBLK | 0o600), Err(libc::EPERM));
        assert_eq!(mknod_mode(S_IFDIR | 0o755), Err(libc::EPERM));
        assert_eq!(mknod_mode(S_IFLNK | 0o777), Err(libc::EINVAL));
        // S_IFMT with every bit set, and the unused type codes.
        assert_eq!(mknod_mode(u32::MAX), Err(libc::EINVAL));
        for t in [0o030000, 0o050000, 0o070000, 0o110000, 0o130000] {
            assert!(mknod_mode(t | 0o644).is_err(), "{t:o}");
        }
        assert_eq!(mknod_mode(S_IFIFO | 0o6666), Ok(S_IFIFO | 0o666));
        assert_eq!(mknod_mode(S_IFSOCK | 0o1777), Ok(S_IFSOCK | 0o1777));
        assert_eq!(mknod_mode(S_IFREG | 0o4755), Ok(S_IFREG | 0o755));
        assert_eq!(mknod_mode(0o2755), Ok(0o755));
        // Bits above the file type are dropped.
        assert_eq!(
            mknod_mode(0xffff_0000 | S_IFIFO | 0o644),
            Ok(S_IFIFO | 0o644)
        );
    }

    #[test]
    fn a_umask_cannot_change_the_file_type() {
        assert_eq!(
            apply_umask(libc::S_IFSOCK | 0o777, 0o022),
            libc::S_IFSOCK | 0o755
        );
        assert_eq!(
            apply_umask(libc::S_IFSOCK | 0o777, u32::MAX),
            libc::S_IFSOCK
        );
        assert_eq!(
            apply_umask(libc::S_IFCHR | 0o4777, u32::MAX),
            libc::S_IFCHR | 0o4000
        );
    }

    #[test]
    fn modes_lose_setuid_and_setgid_except_setgid_on_directories() {
        assert_eq!(create_mode(libc::S_IFREG | 0o7777), libc::S_IFREG | 0o1777);
        assert_eq!(create_mode(0o755), 0o755);
        assert_eq!(chmod_mode(0o6755, libc::S_IFREG), 0o755);
        assert_eq!(chmod_mode(0o6755, 0), 0o755);
        assert_eq!(chmod_mode(0o2755, libc::S_IFLNK), 0o755);
        assert_eq!(chmod_mode(0o7775, libc::S_IFDIR), 0o3775);
        assert_eq!(chmod_mode(0o2775, libc::S_IFDIR), 0o2775);
    }

    #[test]
    fn file_capabilities_and_whiteouts_are_refused() {
        assert!(!xattr_settable(c"security.capability"));
        assert!(xattr_settable(c"security.capabilityx"));
        assert!(xattr_settable(c"Security.capability"));
        assert!(xattr_settable(c"user.vessel"));
        assert!(xattr_settable(c"security.selinux"));
        assert_eq!(rename_flags(0), Ok(0));
        assert_eq!(
            rename_flags(libc::RENAME_NOREPLACE),
            Ok(libc::RENAME_NOREPLACE)
        );
        assert_eq!(
            rename_flags(libc::RENAME_EXCHANGE),
            Ok(libc::RENAME_EXCHANGE)
        );
        assert_eq!(rename_flags(libc::RENAME_WHITEOUT), Err(libc::EPERM));
        assert_eq!(rename_flags(u32::MAX), Err(libc::EPERM));
        assert_eq!(rename_flags(1 << 10), Err(libc::EINVAL));
    }
}
