//! virtio-fs served inline by the VMM: the guest mounts a host directory with
//! `mount -t virtiofs <tag> <dir>`; its FUSE requests arrive on the virtqueues and are answered
//! by `fuse-backend-rs` (`Server` over `PassthroughFs` rooted at the shared directory) on the
//! event-loop thread. No virtiofsd, no vhost-user, no DAX window.
//!
//! Layout: [`backend`] builds the passthrough file system (and documents its options),
//! [`policy`] wraps it so the guest makes no device nodes, setuid/setgid files or file
//! capabilities on the host, [`privileges`] drops the capabilities that would let the host
//! kernel do those things from the serving thread, [`request`] turns one descriptor chain
//! into one FUSE reply and is where hostile input is checked, [`device`] is the virtio side
//! (config space, queues, activation), and [`event_handler`] plugs it into the event loop.
//!
//! The guest is not trusted: every chain is bounded by guest memory and by the queue size
//! (a looping chain ends after `QUEUE_MAX_SIZE` descriptors), a malformed request gets an error
//! reply or is returned unanswered (used length 0), and nothing a guest sends can panic the
//! VMM. The passthrough root cannot be left: `..` at the root resolves to the root, names with
//! `/` are refused, lookups never follow symlinks (the guest resolves them in its own
//! namespace), and device nodes, FIFOs and sockets are never opened on the host.
//!
//! Strict by default, with no option to relax it: MKNOD of a character or block device is
//! refused with `EPERM`, setuid/setgid bits are stripped from the modes the guest asks for
//! (setgid on directories excepted), writes, truncation, chown and fallocate clear them, and
//! `security.capability` cannot be set ([`policy`] has the table). The thread that serves
//! the device holds no `CAP_MKNOD`, `CAP_FSETID` or `CAP_SETFCAP`, so the host kernel
//! enforces the same even if a request got past the policy; a thread that could not drop
//! them answers every request with `EPERM`.

mod backend;
mod device;
mod error;
mod event_handler;
mod policy;
mod privileges;
mod request;

#[cfg(test)]
mod tests;

pub use backend::{ATTR_TIMEOUT, ENTRY_TIMEOUT};
pub use device::{Fs, FsStats};
pub use error::{validate_tag, FsError};

/// Virtio device ID of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// The high-priority queue (FORGET, INTERRUPT: requests the guest never waits on).
pub const HIPRIO_QUEUE: usize = 0;
/// The one request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Number of virtqueues: hiprio + one request queue.
pub const NUM_QUEUES: usize = 2;
/// `num_request_queues` in the config space.
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Largest queue size the device accepts. Linux uses the maximum it is offered; a 1 MiB
/// READ or WRITE takes 256 page descriptors plus headers, which must fit in one chain.
pub const QUEUE_MAX_SIZE: u16 = 1024;
/// Length of the tag field of the config space (NUL-padded, no terminator when full).
pub const TAG_LEN: usize = 36;
/// Chains handled per queue notification before the event loop serves other devices (the
/// rest are handled on the next round: the queue's eventfd is signalled again).
pub const REQUESTS_PER_ROUND: usize = 64;
