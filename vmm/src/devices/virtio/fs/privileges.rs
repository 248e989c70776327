//! The capabilities the thread serving virtio-fs gives up, so that the host kernel itself
//! refuses what the policy ([`super::policy`]) forbids, whatever request reaches the backend.
//!
//! Linux keeps capabilities per thread (`capset(2)` with pid 0 changes only the calling
//! thread), so the event thread can drop them without touching the vCPU threads, the main
//! thread, or a program that runs the VMM as a library. They are removed from the permitted
//! set (and effective and inheritable), so they never come back: when the backend switches
//! the thread's effective uid to a guest caller's and back to 0 (`setresuid`), the kernel
//! refills the effective set from the permitted one.
//!
//! * `CAP_MKNOD`: `mknodat` of a character or block device fails with `EPERM`. FIFOs and
//!   sockets need no capability; neither, since Linux 5.8, does a 0/0 character device (an
//!   overlayfs whiteout, also what `RENAME_WHITEOUT` leaves behind): those are refused by
//!   the policy and the seccomp filter only.
//! * `CAP_FSETID`: the kernel clears `S_ISUID` (and `S_ISGID` with group-exec) when this
//!   thread writes to or truncates a file, and `chmod` cannot set `S_ISGID` on a file whose
//!   group the caller is not in: the killpriv semantics a guest kernel may skip.
//! * `CAP_SETFCAP`: `security.capability` (file capabilities) cannot be set.
//!
//! Nothing the event thread does needs them: the backend's `chown`/`chmod` on guest files
//! use `CAP_CHOWN`/`CAP_FOWNER`, its uid switches `CAP_SETUID`/`CAP_SETGID`, and overlayfs
//! (a container rootfs on the host) makes its whiteouts with the mounter's credentials.
//!
//! The raw `capget`/`capset` system calls are wrapped here (the only unsafe code of the
//! policy).

use std::cell::Cell;
use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// `CAP_FSETID` (linux/capability.h).
pub(super) const CAP_FSETID: u32 = 4;
/// `CAP_MKNOD`.
pub(super) const CAP_MKNOD: u32 = 27;
/// `CAP_SETFCAP`.
pub(super) const CAP_SETFCAP: u32 = 31;

/// What the serving thread gives up (see the module documentation).
pub(super) const DROPPED: [u32; 3] = [CAP_MKNOD, CAP_FSETID, CAP_SETFCAP];

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A thread's capability sets, as 64-bit masks (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl CapSets {
    fn from_data(d: [CapData; 2]) -> Self {
        let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        Self {
            effective: join(d[0].effective, d[1].effective),
            permitted: join(d[0].permitted, d[1].permitted),
            inheritable: join(d[0].inheritable, d[1].inheritable),
        }
    }

    fn to_data(self) -> [CapData; 2] {
        let word = |v: u64, i: u32| (v >> (32 * i)) as u32;
        [0, 1].map(|i| CapData {
            effective: word(self.effective, i),
            permitted: word(self.permitted, i),
            inheritable: word(self.inheritable, i),
        })
    }

    /// Whether capability `cap` is in any of the three sets.
    pub fn holds(&self, cap: u32) -> bool {
        let bit = 1u64 << cap;
        (self.effective | self.permitted | self.inheritable) & bit != 0
    }
}

/// The calling thread's capability sets.
pub(super) fn current() -> io::Result<CapSets> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and, for version 3, two data structs, which is what
    // we pass; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CapSets::from_data(data))
}

fn set(sets: CapSets) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = sets.to_data();
    // SAFETY: capset reads one header and two data structs, which is what we pass; pid 0
    // changes the calling thread only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

thread_local! {
    /// This thread has dropped [`DROPPED`] (and checked that they are gone).
    static DROPPED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Removes [`DROPPED`] from the calling thread's effective, permitted and inheritable sets,
/// and checks they are gone. Idempotent; a thread without them (an unprivileged VMM) only
/// records that it checked.
pub(super) fn drop_for_serving() -> io::Result<()> {
    let mask = DROPPED.iter().fold(0u64, |m, &c| m | (1u64 << c));
    let now = current()?;
    if (now.effective | now.permitted | now.inheritable) & mask != 0 {
        set(CapSets {
            effective: now.effective & !mask,
            permitted: now.permitted & !mask,
            inheritable: now.inheritable & !mask,
        })?;
    }
    let after = current()?;
    if let Some(cap) = DROPPED.iter().find(|&&c| after.holds(c)) {
        return Err(io::Error::other(format!(
            "capability {cap} still held after capset"
        )));
    }
    DROPPED_HERE.with(|d| d.set(true));
    Ok(())
}

/// Whether the calling thread went through [`drop_for_serving`] successfully.
pub(super) fn dropped_here() -> bool {
    DROPPED_HERE.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn cpath(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn mknod(p: &Path, mode: u32, dev: u64) -> Result<(), i32> {
        let c = cpath(p);
        // SAFETY: valid NUL-terminated path; creates a node in the test's temp dir.
        let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    fn set_fcap(p: &Path) -> Result<(), i32> {
        let c = cpath(p);
        let name = c"security.capability";
        // A VFS_CAP_REVISION_2 value granting CAP_NET_RAW (bit 13), permitted + effective.
        let mut value = Vec::new();
        for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            value.extend_from_slice(&word.to_le_bytes());
        }
        // SAFETY: valid NUL-terminated path and name; value points at value.len() bytes.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    /// Without the policy in front: the host kernel itself refuses device nodes and file
    /// capabilities, and clears setuid on write, for a root thread that dropped them.
    #[test]
    fn a_thread_without_them_cannot_make_devices_or_keep_setuid() {
        crate::devices::virtio::fs::tests::require_root("the capabilities to drop");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // Made while this test thread still has every capability.
        let suid = d.join("suid");
        std::fs::write(&suid, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o6755)).unwrap();

        let before = current().unwrap();
        std::thread::spawn(move || {
            assert!(!dropped_here());
            drop_for_serving().expect("drop");
            assert!(dropped_here());
            drop_for_serving().expect("dropping again is a no-op");
            let now = current().unwrap();
            for cap in DROPPED {
                assert!(!now.holds(cap), "capability {cap} left: {now:x?}");
            }
            // Other capabilities stay (the backend needs CAP_CHOWN, CAP_FOWNER, ...).
            assert!(now.effective & 1 != 0, "CAP_CHOWN (0) kept");
            assert_eq!(
                mknod(&d.join("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
                Err(libc::EPERM)
            );
            assert_eq!(
                mknod(&d.join("sda"), libc::S_IFBLK | 0o600, libc::makedev(8, 0)),
                Err(libc::EPERM)
            );
            assert!(!d.join("null").exists() && !d.join("sda").exists());
            assert_eq!(mknod(&d.join("fifo"), libc::S_IFIFO | 0o600, 0), Ok(()));
            assert_eq!(mknod(&d.join("sock"), libc::S_IFSOCK | 0o600, 0), Ok(()));
            // A root writer without CAP_FSETID: the kernel clears setuid and setgid.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&suid)
                .unwrap();
            f.write_all(b"exit 0\n").unwrap();
            let mode = std::fs::metadata(&suid).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o755, "setuid/setgid cleared by the write");
            let plain = d.join("plain");
            std::fs::write(&plain, b"x").unwrap();
            assert_eq!(set_fcap(&plain), Err(libc::EPERM));
        })
        .join()
        .expect("the dropping thread");
        assert_eq!(current().unwrap(), before, "other threads keep theirs");
        assert!(!dropped_here());
    }

    #[test]
    fn sets_round_trip_through_the_kernel_layout() {
        let s = CapSets {
            effective: 0x1_8000_0001,
            permitted: 0xff_ffff_ffff,
            inheritable: 1 << 40,
        };
        assert_eq!(CapSets::from_data(s.to_data()), s);
        assert!(s.holds(0) && s.holds(32) && s.holds(40) && !s.holds(41 + 20));
    }
}
