//! The host end of the NIC: a tap device's fd, handed to the VMM by the runtime (which made
//! the tap in the pod's network namespace; the jailed VMM has a network namespace of its own
//! and could not open it). One `read` is one frame from the host, one `write` one frame to it,
//! each behind its 12-byte `virtio_net_hdr_v1` (`IFF_VNET_HDR`, see [`super::offload`]).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// `TUNGETIFF`: `_IOR('T', 210, unsigned int)` (the kernel writes a whole `struct ifreq`).
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `sizeof(struct ifreq)` on x86_64.
const IFREQ_LEN: usize = 40;
use vessel_protocol::vmm_launch::tap_flags::{IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, REQUIRED};
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)` (the flags are the argument itself).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The tap may hand over frames whose checksum is still to be filled in; never GSO frames
/// (`TUN_F_TSO4/6` stay off: the guest's buffers take one MTU-sized frame).
const TUN_F_CSUM: libc::c_ulong = 0x01;

/// The fd given for the NIC is not a usable tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap fd {fd} is not open")]
    NotOpen { fd: RawFd },
    #[error("duplicating tap fd {fd}")]
    Dup {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not a tun/tap device (TUNGETIFF)")]
    NotTun {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("tap {name} (fd {fd}) has flags {flags:#x}: it must be a tap (IFF_TAP) with IFF_NO_PI and IFF_VNET_HDR")]
    Flags { fd: RawFd, name: String, flags: u16 },
    #[error("setting tap {name} (fd {fd}) up for the virtio-net header ({what})")]
    Offload {
        fd: RawFd,
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("making tap fd {fd} non-blocking")]
    Nonblocking {
        fd: RawFd,
        #[source]
        source: nix::Error,
    },
}

/// A tap queue the device reads frames from and writes frames to (non-blocking).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Takes a copy of the inherited fd `fd`, checked to be a tap with `IFF_NO_PI` and
    /// `IFF_VNET_HDR` (what the runtime makes), set to a 12-byte header and checksum
    /// offload, made non-blocking.
    pub fn from_inherited(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only reads the fd flags of whatever `fd` is; a closed number gives
        // EBADF and nothing else happens.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return Err(TapError::NotOpen { fd });
        }
        // SAFETY: `fd` is open (checked above; the VMM's startup is single-threaded, so
        // nothing closes it meanwhile) and the borrow ends within this statement.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|source| TapError::Dup { fd, source })?;
        let mut ifr = [0u8; IFREQ_LEN];
        // SAFETY: TUNGETIFF writes one `struct ifreq` (IFREQ_LEN bytes) into `ifr`, which
        // we own and which outlives the call.
        let rc = unsafe { libc::ioctl(owned.as_raw_fd(), TUNGETIFF, ifr.as_mut_ptr()) };
        if rc != 0 {
            return Err(TapError::NotTun {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name_len = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&ifr[..name_len]).into_owned();
        let flags = u16::from_ne_bytes([ifr[16], ifr[17]]);
        if flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) != REQUIRED {
            return Err(TapError::Flags { fd, name, flags });
        }
        // Reads errno right after the call it follows.
        let checked = |rc: libc::c_int, what: &'static str| {
            if rc == 0 {
                return Ok(());
            }
            let source = io::Error::last_os_error();
            let name = name.clone();
            Err(TapError::Offload {
                fd,
                name,
                what,
                source,
            })
        };
        let hdr_len: libc::c_int = super::NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at
        // `hdr_len` for the whole call.
        let rc = unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
        checked(rc, "TUNSETVNETHDRSZ")?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory of ours.
        let rc = unsafe { libc::ioctl(owned.as_raw_fd(), TUNSETOFFLOAD, TUN_F_CSUM) };
        checked(rc, "TUNSETOFFLOAD")?;
        Self::nonblocking(owned, name)
    }

    /// Any frame-per-read fd (a datagram socket in tests and the fuzz harness).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_fd_unchecked(fd: OwnedFd) -> Tap {
        Self::nonblocking(fd, "test".into()).expect("non-blocking test fd")
    }

    fn nonblocking(fd: OwnedFd, name: String) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let flags = fcntl(&fd, FcntlArg::F_GETFL)
            .map_err(|source| TapError::Nonblocking { fd: raw, source })?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags))
            .map_err(|source| TapError::Nonblocking { fd: raw, source })?;
        Ok(Tap { fd, name })
    }

    /// The tap's interface name on the host.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one header + frame into `buf` (a frame longer than `buf` is cut: the caller
    /// sizes `buf` one byte past the largest it takes, so a cut frame shows).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    /// Writes one header + frame.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, frame).map_err(io::Error::from)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
