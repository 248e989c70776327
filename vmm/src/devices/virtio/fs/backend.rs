//! The FUSE backend: `fuse-backend-rs`'s `PassthroughFs` behind its protocol `Server`.
//!
//! Options, chosen for container root filesystems and volumes that the host side (containerd's
//! snapshotter, kubelet's volume updates) may also change:
//! * cache policy `Auto` with 1 s entry/attribute timeouts (virtiofsd's and Kata's default):
//!   metadata is cached for 1 s. On top of it [`PolicyFs`] answers every OPEN with
//!   `FOPEN_KEEP_CACHE` and negotiates `FUSE_AUTO_INVAL_DATA`: a file's cached data survives
//!   its next open and is dropped when the guest sees its mtime or size change (on the
//!   lookup or attribute refresh an open does after the 1 s). So a host-side change is seen
//!   within about a second, as with NFS's attribute cache. Plain `Auto` drops a file's pages
//!   at every open: each exec of a container's binary read it again through the queue
//!   (on KVM-PVM ~0.3 s per `/bin/true` of busybox, measured with `vm_run`). `Always` would
//!   let the guest miss host-side changes for good; `Never` makes every read a round trip.
//! * writeback caching off: with it the guest may send READs for files opened write-only and
//!   holds dirty data the host cannot see; writes go through to the host file at once, so
//!   they land in the snapshot as with runc.
//! * no DAX (`dax_file_size: None`): we have no shared-memory window; data moves through the
//!   virtqueues.
//! * xattrs off unless asked for (`SharedDirConfig::xattr`), as in virtiofsd and Kata: with
//!   them the guest kernel sends a GETXATTR(security.capability) before every write(2) (FUSE
//!   never marks inodes S_NOSEC); without them file capabilities and user xattrs are not
//!   visible in the guest (getxattr/setxattr fail with EOPNOTSUPP there).
//! * `do_import: true`: the backend opens its root at FUSE_INIT (a fresh session per INIT);
//!   it is used standalone, not under fuse-backend-rs's `Vfs`.
//! * inodes are kept as `O_PATH` fds (no file handles: no `CAP_DAC_READ_SEARCH`,
//!   no `open_by_handle_at`); inode numbers are virtual, so host inode numbers from different
//!   mounts under the shared directory cannot collide in the guest.
//! * `killpriv_v2` off: with it the guest kernel stops clearing setuid/setgid itself and asks
//!   the backend to (a flag on WRITE, SETATTR, OPEN); a compromised guest kernel just leaves
//!   the flag out. The host kernel clears them whatever the guest sends, because the serving
//!   thread has no `CAP_FSETID` ([`super::privileges`]), so the option would add nothing.
//! * `no_open`, `no_opendir`, `seal_size`: off (the defaults).
//!
//! The backend is wrapped in [`PolicyFs`] ([`super::policy`]): no device nodes, no
//! setuid/setgid files, no file capabilities, whatever the guest sends.
//!
//! Requests that create files run with the guest caller's uid/gid (the backend switches the
//! thread's effective ids with `setresuid`/`setresgid` while it creates them), so ownership in
//! the snapshot is what the container asked for. Opening a host device node, FIFO or socket is
//! refused by the backend (only regular files and directories are ever opened).

use std::path::Path;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::error::FsError;
use super::policy::PolicyFs;

/// How long the guest may cache a name lookup.
pub const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the guest may cache attributes.
pub const ATTR_TIMEOUT: Duration = Duration::from_secs(1);

/// The FUSE protocol server over the passthrough file system, under the policy.
pub(super) type FsServer = Server<PolicyFs>;

/// The passthrough options for `root` (see the module documentation for why).
pub(super) fn passthrough_config(root: &Path, xattr: bool) -> Result<Config, FsError> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| FsError::NonUtf8Path(root.to_path_buf()))?
        .to_string();
    Ok(Config {
        root_dir,
        cache_policy: CachePolicy::Auto,
        entry_timeout: ENTRY_TIMEOUT,
        attr_timeout: ATTR_TIMEOUT,
        writeback: false,
        xattr,
        do_import: true,
        dax_file_size: None,
        inode_file_handles: false,
        killpriv_v2: false,
        no_open: false,
        no_opendir: false,
        seal_size: false,
        ..Config::default()
    })
}

/// A fresh server (no FUSE session yet: the guest's FUSE_INIT opens the root).
///
/// Opens `/proc/self/fd` and `/proc/self/mountinfo`, so it runs before seccomp or on the
/// event thread (whose filter allows `openat` when a shared directory is configured).
pub(super) fn new_server(config: &Config) -> Result<FsServer, FsError> {
    let fs = PassthroughFs::<()>::new(config.clone()).map_err(|source| FsError::Backend {
        path: config.root_dir.clone().into(),
        source,
    })?;
    Ok(Server::new(PolicyFs::new(fs)))
}
