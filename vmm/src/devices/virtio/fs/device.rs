//! The virtio side of the file system device: feature bits, config space, activation, reset,
//! and moving requests from the virtqueues to the FUSE server.
//!
//! Transport-visible state (features, queues, activation) lives in plain fields so it can be
//! saved and restored; the FUSE backend holds no state worth saving before the guest mounts
//! the share and is rebuilt whenever the driver starts over.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::Config;
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{new_server, passthrough_config, FsServer};
use super::error::{validate_tag, FsError};
use super::privileges;
use super::request::{handle_chain, refuse_chain, Outcome};
use super::{
    NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_MAX_SIZE, REQUESTS_PER_ROUND, TAG_LEN, VIRTIO_ID_FS,
};
use crate::devices::virtio::device::{
    read_config_bytes, ActivateError, DeviceCore, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::log_limit::LogLimiter;

/// Size of `struct virtio_fs_config`: tag[36] + le32 num_request_queues.
const CONFIG_SPACE_LEN: usize = TAG_LEN + 4;

static GUEST_ERRORS: LogLimiter = LogLimiter::new(10, Duration::from_secs(10));

macro_rules! guest_warn {
    ($($arg:tt)+) => { crate::log_limited!(GUEST_ERRORS, log::Level::Warn, $($arg)+) };
}

/// What the device has done so far (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Chains the server answered (or that needed no answer).
    pub served: u64,
    /// Served requests by FUSE opcode (the last slot counts every opcode from it on): on an
    /// emulating host each costs a round trip through the queue, so their mix says what a
    /// guest operation costs. Logged when the device goes away.
    pub served_by_opcode: [u64; OPCODE_SLOTS],
    /// Malformed requests answered with an error by the device itself.
    pub refused: u64,
    /// Chains returned unanswered (no header, descriptors outside guest memory).
    pub dropped: u64,
}

impl Drop for Fs {
    fn drop(&mut self) {
        if self.stats.served > 0 {
            log::info!(
                "virtio-fs {}: served {} requests: {}",
                self.tag,
                self.stats.served,
                self.stats.opcode_summary()
            );
        }
    }
}

/// Slots of [`FsStats::served_by_opcode`] (FUSE opcodes are below 64 but CUSE's).
pub const OPCODE_SLOTS: usize = 64;

impl Default for FsStats {
    fn default() -> Self {
        Self {
            served: 0,
            served_by_opcode: [0; OPCODE_SLOTS],
            refused: 0,
            dropped: 0,
        }
    }
}

impl FsStats {
    /// "LOOKUP 120, GETATTR 40, …", most frequent first.
    pub fn opcode_summary(&self) -> String {
        let mut counts: Vec<(usize, u64)> = self
            .served_by_opcode
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(op, n)| format!("{} {n}", opcode_name(*op)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The FUSE names of the opcodes a guest sends most (`include/uapi/linux/fuse.h`). Not
/// `fuse_backend_rs`'s `Opcode::from`: it transmutes any value below its maximum, and the
/// guest chooses the number (there are gaps in the enum).
fn opcode_name(op: usize) -> String {
    let name = match op {
        1 => "LOOKUP",
        2 => "FORGET",
        3 => "GETATTR",
        4 => "SETATTR",
        5 => "READLINK",
        6 => "SYMLINK",
        8 => "MKNOD",
        9 => "MKDIR",
        10 => "UNLINK",
        11 => "RMDIR",
        12 => "RENAME",
        14 => "OPEN",
        15 => "READ",
        16 => "WRITE",
        17 => "STATFS",
        18 => "RELEASE",
        20 => "FSYNC",
        22 => "GETXATTR",
        25 => "FLUSH",
        26 => "INIT",
        27 => "OPENDIR",
        28 => "READDIR",
        29 => "RELEASEDIR",
        35 => "CREATE",
        42 => "BATCH_FORGET",
        44 => "READDIRPLUS",
        45 => "RENAME2",
        _ => return format!("op{op}"),
    };
    name.to_string()
}

/// A virtio-fs device sharing one host directory under one tag.
pub struct Fs {
    tag: String,
    shared_dir: PathBuf,
    config_space: [u8; CONFIG_SPACE_LEN],
    backend_config: Config,
    server: FsServer,
    /// The current server has served a session: the next activation gets a fresh one.
    server_used: bool,
    /// The guest has talked FUSE to the current server (it mounted the share): its inodes
    /// and handles live in the backend, which a snapshot does not save.
    in_session: bool,
    pub(super) core: DeviceCore,
    /// Queue eventfds are registered with the event manager.
    pub(super) subscribed: bool,
    stats: FsStats,
}

impl Fs {
    /// Creates the device for `tag`, sharing `shared_dir` (which must be a directory).
    pub fn new(tag: &str, shared_dir: &Path, xattr: bool) -> Result<Self, FsError> {
        validate_tag(tag)?;
        let dir_err = |source| FsError::SharedDir {
            path: shared_dir.to_path_buf(),
            source,
        };
        // The backend opens its root without following symlinks: resolve them now.
        let shared_dir = shared_dir.canonicalize().map_err(dir_err)?;
        if !shared_dir.metadata().map_err(dir_err)?.is_dir() {
            return Err(FsError::NotADirectory(shared_dir));
        }
        let backend_config = passthrough_config(&shared_dir, xattr)?;
        let server = new_server(&backend_config)?;

        let mut config_space = [0u8; CONFIG_SPACE_LEN];
        config_space[..tag.len()].copy_from_slice(tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());

        // No notification suppression (EVENT_IDX), no indirect descriptors: the queue is
        // large enough for the biggest request.
        let core = DeviceCore::new(NUM_QUEUES, QUEUE_MAX_SIZE, VIRTIO_F_VERSION_1)
            .map_err(FsError::EventFd)?;
        Ok(Self {
            tag: tag.to_string(),
            shared_dir,
            config_space,
            backend_config,
            server,
            server_used: false,
            in_session: false,
            core,
            subscribed: false,
            stats: FsStats::default(),
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared directory, symlinks resolved.
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    pub fn stats(&self) -> FsStats {
        self.stats
    }

    pub(super) fn queue_evt(&self, index: usize) -> &EventFd {
        &self.core.queue_evts[index]
    }

    /// Called on the event thread when the driver (re)activated the device: a driver that
    /// starts over after a reset gets a fresh FUSE backend (no inodes or handles of the old
    /// session survive).
    pub(super) fn start_session(&mut self) {
        if !self.server_used {
            self.server_used = true;
            return;
        }
        match new_server(&self.backend_config) {
            Ok(server) => {
                self.server = server;
                self.in_session = false;
            }
            // Keep serving with the old backend: stale handles are the guest's own.
            Err(e) => log::error!("virtio-fs {}: new FUSE session: {e}", self.tag),
        }
    }

    /// Handles up to [`REQUESTS_PER_ROUND`] chains of queue `index`, then interrupts the
    /// guest if any were used. Returns true if the queue may have more.
    pub(super) fn process_queue(&mut self, index: usize) -> bool {
        let Some(mem) = self.core.mem.as_ref() else {
            return false;
        };
        let Some(queue) = self.core.queues.get_mut(index) else {
            return false;
        };
        // Only a thread without CAP_MKNOD/CAP_FSETID/CAP_SETFCAP may serve: the host kernel
        // is the second line of the policy (event_handler.rs drops them).
        let may_serve = privileges::dropped_here();
        let mut used = false;
        let mut handled = 0;
        while handled < REQUESTS_PER_ROUND {
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_warn!("virtio-fs {}: queue {index} unusable: {e}", self.tag);
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            handled += 1;
            let head = chain.head_index();
            let outcome = if may_serve {
                handle_chain(&self.server, mem, chain)
            } else {
                refuse_chain(
                    mem,
                    chain,
                    libc::EPERM,
                    "the serving thread still holds CAP_MKNOD/CAP_FSETID/CAP_SETFCAP",
                )
            };
            match &outcome {
                Outcome::Served { opcode, .. } => {
                    self.stats.served += 1;
                    let slot = (*opcode as usize).min(OPCODE_SLOTS - 1);
                    self.stats.served_by_opcode[slot] += 1;
                    self.in_session = true;
                }
                Outcome::Refused { errno, why, .. } => {
                    self.stats.refused += 1;
                    guest_warn!(
                        "virtio-fs {}: refused request on queue {index} (errno {errno}): {why}",
                        self.tag
                    );
                }
                Outcome::Dropped(why) => {
                    self.stats.dropped += 1;
                    guest_warn!(
                        "virtio-fs {}: dropped chain {head} on queue {index}: {why}",
                        self.tag
                    );
                }
            }
            match queue.add_used(mem, head, outcome.used_len()) {
                Ok(()) => used = true,
                Err(e) => guest_warn!(
                    "virtio-fs {}: returning chain {head} on queue {index}: {e}",
                    self.tag
                ),
            }
        }
        if used {
            if let Err(e) = self.core.signal_used() {
                guest_warn!("virtio-fs {}: raising interrupt: {e}", self.tag);
            }
        }
        handled == REQUESTS_PER_ROUND
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.stats.served),
            ("refused", self.stats.refused),
            ("dropped", self.stats.dropped),
        ]
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        guest_warn!(
            "virtio-fs {}: guest wrote the read-only config space",
            self.tag
        );
    }

    fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        // The event thread registers the queue eventfds and starts the FUSE session.
        self.core.activate(mem, "virtio-fs")
    }

    fn snapshot_blocker(&self) -> Option<String> {
        // Restore recreates the backend; a guest that mounted the share would find its inodes
        // and open files gone. Snapshots are taken before the share is mounted.
        self.in_session.then(|| {
            format!(
                "virtio-fs {}: the guest has mounted the share (FUSE session state is not saved)",
                self.tag
            )
        })
    }

    fn reset(&mut self) -> bool {
        // The transport resets the queues; requests in flight are forgotten with them. The
        // next activation starts a new FUSE session on the event thread.
        self.core.reset();
        true
    }
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("shared_dir", &self.shared_dir)
            .field("core", &self.core)
            .field("stats", &self.stats)
            .finish()
    }
}
