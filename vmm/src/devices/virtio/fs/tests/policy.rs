//! The strict policy (policy.rs, privileges.rs) through the device: what the guest asks for,
//! what the host directory ends up with.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, SetattrIn};
use vm_memory::ByteValued;

use super::{raw_request, require_root, Harness, Part, REQUEST_QUEUE};
use crate::devices::virtio::fs::privileges;
use crate::devices::virtio::fs::Fs;

const ROOT: u64 = 1;
const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
/// FATTR_* bits of SETATTR.
const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 2;
const FATTR_GID: u32 = 4;
const FATTR_SIZE: u32 = 8;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(self::mode(p) & 0o7777, mode, "{}", p.display());
}

/// A shared dir prepared by `prepare` while this thread still has every capability, then a
/// device serving it, activated and initialised.
fn harness_with(xattr: bool, prepare: impl FnOnce(&Path)) -> (tempfile::TempDir, Harness) {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    prepare(&shared);
    let mut h = Harness::in_dir(tmp.path(), xattr);
    h.activate();
    h.client().init();
    (tmp, h)
}

fn host_xattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated path and name; buf has buf.len() writable bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// A `security.capability` value (VFS_CAP_REVISION_2) granting CAP_NET_RAW.
fn fcaps_value() -> Vec<u8> {
    [0x0200_0001u32, 1 << 13, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

#[test]
fn device_nodes_are_refused_and_nothing_reaches_the_host() {
    require_root("a root guest caller is served as root on the host");
    let (_tmp, mut h) = harness_with(false, |_| {});
    let shared = h.shared();
    let cases: [(&str, u32, u32, i32); 8] = [
        ("null", libc::S_IFCHR | 0o666, (1 << 8) | 3, libc::EPERM),
        ("sda", libc::S_IFBLK | 0o660, 8 << 8, libc::EPERM),
        ("kvm", libc::S_IFCHR | 0o666, (10 << 8) | 232, libc::EPERM),
        // A 0/0 character device is an overlayfs whiteout.
        ("whiteout", libc::S_IFCHR, 0, libc::EPERM),
        (
            "suid-chr",
            libc::S_IFCHR | 0o4755,
            (1 << 8) | 3,
            libc::EPERM,
        ),
        ("dir", libc::S_IFDIR | 0o755, 0, libc::EPERM),
        ("symlink", libc::S_IFLNK | 0o777, 0, libc::EINVAL),
        ("garbage", u32::MAX, u32::MAX, libc::EINVAL),
    ];
    for uid in [0, 1234] {
        let mut c = h.client();
        c.uid = uid;
        c.gid = uid;
        for (name, mode, rdev, errno) in cases {
            let got = c.mknod(ROOT, name, mode, rdev).map(drop);
            assert_eq!(got, Err(errno), "uid {uid}: mknod {name} {mode:o}");
            assert_eq!(c.lookup(ROOT, name).err(), Some(libc::ENOENT), "{name}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(&shared).unwrap().collect();
    assert!(left.is_empty(), "nothing made on the host: {left:?}");
}

#[test]
fn fifos_sockets_and_regular_files_can_be_made() {
    let (_tmp, mut h) = harness_with(false, |_| {});
    let shared = h.shared();
    let mut c = h.client();
    let fifo = c
        .mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0)
        .expect("fifo");
    assert_eq!(fifo.attr.mode, libc::S_IFIFO | 0o644);
    // rdev means nothing for a FIFO: whatever the guest sends, the host node has none.
    c.mknod(ROOT, "fifo-rdev", libc::S_IFIFO | 0o600, 0xffff_ffff)
        .expect("fifo with rdev");
    let sock = c
        .mknod(ROOT, "sock", libc::S_IFSOCK | 0o6755, 0)
        .expect("socket");
    assert_eq!(sock.attr.mode, libc::S_IFSOCK | 0o755);
    let reg = c
        .mknod(ROOT, "reg", libc::S_IFREG | 0o6755, 0)
        .expect("regular file");
    assert_eq!(
        reg.attr.mode,
        libc::S_IFREG | 0o755,
        "setuid/setgid stripped"
    );
    // File type 0 is a regular file for mknod(2).
    c.mknod(ROOT, "type0", 0o4640, 0).expect("type 0");

    let meta = |n: &str| std::fs::symlink_metadata(shared.join(n)).unwrap();
    assert!(meta("fifo").file_type().is_fifo());
    assert_eq!(meta("fifo-rdev").rdev(), 0);
    assert!(meta("sock").file_type().is_socket());
    assert!(meta("reg").file_type().is_file());
    assert!(meta("type0").file_type().is_file());
    assert_eq!(meta("reg").mode() & 0o7777, 0o755);
    assert_eq!(meta("type0").mode() & 0o7777, 0o640);
}

#[test]
fn host_device_nodes_in_the_share_are_never_opened() {
    require_root("mknod of a device node on the host");
    let (_tmp, mut h) = harness_with(false, |shared| {
        let path = CString::new(shared.join("null").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path; the host's /dev/null, in our temp dir.
        let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    });
    let mut c = h.client();
    let node = c.lookup(ROOT, "null").expect("the guest sees it");
    assert_eq!(node.attr.mode & libc::S_IFMT, libc::S_IFCHR);
    assert!(c.open(node.nodeid, libc::O_RDWR).is_err());
    assert!(c.open(node.nodeid, libc::O_RDONLY).is_err());
}

#[test]
fn modes_the_guest_asks_for_lose_setuid_and_setgid() {
    let (_tmp, mut h) = harness_with(false, |_| {});
    let shared = h.shared();
    let mut c = h.client();
    let (file, open) = c
        .create(ROOT, "created", 0o6755, libc::O_WRONLY)
        .expect("create");
    assert_eq!(file.attr.mode & 0o7777, 0o755);
    c.release(file.nodeid, open.fh, false).unwrap();
    let dir = c.mkdir(ROOT, "dir", 0o7777).expect("mkdir");
    assert_eq!(dir.attr.mode & SUID_SGID, 0);

    let chmod = |c: &mut super::Client<'_>, node: u64, mode: u32| {
        let args = SetattrIn {
            valid: FATTR_MODE,
            mode,
            ..Default::default()
        };
        c.setattr(node, args).expect("setattr").attr.mode & 0o7777
    };
    assert_eq!(chmod(&mut c, file.nodeid, 0o4755), 0o755);
    assert_eq!(
        std::fs::metadata(shared.join("created")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(chmod(&mut c, file.nodeid, 0o2755), 0o755);
    assert_eq!(chmod(&mut c, file.nodeid, 0o6777), 0o777);
    assert_eq!(
        chmod(&mut c, file.nodeid, 0o1644),
        0o1644,
        "other bits stay"
    );
    // Directories may be setgid (group inheritance), never setuid.
    assert_eq!(chmod(&mut c, dir.nodeid, 0o2775), 0o2775);
    assert_eq!(chmod(&mut c, dir.nodeid, 0o4775), 0o775);
    assert_eq!(chmod(&mut c, dir.nodeid, 0o6775), 0o2775);
    // A mode together with an owner in one SETATTR.
    let both = SetattrIn {
        valid: FATTR_MODE | FATTR_UID | FATTR_GID,
        mode: 0o6755,
        uid: 0,
        gid: 0,
        ..Default::default()
    };
    assert_eq!(
        c.setattr(file.nodeid, both).unwrap().attr.mode & SUID_SGID,
        0
    );

    assert_eq!(mode(&shared.join("created")) & SUID_SGID, 0);
    assert_eq!(mode(&shared.join("dir")) & 0o7777, 0o2775);
    // A file made in the setgid directory takes its group but is not setgid itself.
    let (inner, open) = c
        .create(dir.nodeid, "inner", 0o2755, libc::O_WRONLY)
        .expect("create in a setgid dir");
    c.release(inner.nodeid, open.fh, false).unwrap();
    assert_eq!(mode(&shared.join("dir/inner")) & SUID_SGID, 0);
}

#[test]
fn writes_truncation_chown_and_fallocate_clear_setuid_on_host_files() {
    require_root("setuid-root files made by the test, chown");
    let names = ["write", "truncate", "chown", "fallocate", "user-owned"];
    let (_tmp, mut h) = harness_with(false, |shared| {
        for name in names {
            let p = shared.join(name);
            std::fs::write(&p, b"#!/bin/sh\necho host\n").unwrap();
            if name == "user-owned" {
                std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
            }
            chmod(&p, 0o6755);
        }
        std::fs::write(shared.join("plain"), b"plain").unwrap();
        chmod(&shared.join("plain"), 0o644);
    });
    let shared = h.shared();
    let mut c = h.client();
    let node = |c: &mut super::Client<'_>, n: &str| c.lookup(ROOT, n).unwrap().nodeid;

    // A WRITE without any kill-priv flag, as a compromised guest kernel would send it.
    for name in ["write", "user-owned", "plain"] {
        let n = node(&mut c, name);
        let fh = c.open(n, libc::O_WRONLY).unwrap();
        assert_eq!(c.write(n, fh, 0, b"#!/bin/false\n"), Ok(13));
        c.release(n, fh, false).unwrap();
    }
    let n = node(&mut c, "truncate");
    let size = SetattrIn {
        valid: FATTR_SIZE,
        size: 2,
        ..Default::default()
    };
    c.setattr(n, size).unwrap();
    let n = node(&mut c, "chown");
    let owner = SetattrIn {
        valid: FATTR_UID | FATTR_GID,
        uid: 1000,
        gid: 1000,
        ..Default::default()
    };
    c.setattr(n, owner).unwrap();
    let n = node(&mut c, "fallocate");
    let fh = c.open(n, libc::O_RDWR).unwrap();
    c.fallocate(n, fh, 0, 8192).unwrap();
    c.release(n, fh, false).unwrap();

    for name in names {
        let m = mode(&shared.join(name));
        assert_eq!(m & 0o7777, 0o755, "{name}: {m:o}");
    }
    assert_eq!(
        mode(&shared.join("plain")) & 0o7777,
        0o644,
        "no other change"
    );
    assert_eq!(
        std::fs::read(shared.join("write")).unwrap()[..12],
        *b"#!/bin/false"
    );
}

#[test]
fn file_capabilities_cannot_be_set() {
    for xattr in [true, false] {
        let (_tmp, mut h) = harness_with(xattr, |shared| {
            std::fs::write(shared.join("bin"), b"\x7fELF").unwrap();
        });
        let shared = h.shared();
        let mut c = h.client();
        let n = c.lookup(ROOT, "bin").unwrap().nodeid;
        assert_eq!(
            c.setxattr(n, "security.capability", &fcaps_value()),
            Err(libc::EPERM),
            "xattr {xattr}"
        );
        assert!(host_xattr(&shared.join("bin"), "security.capability").is_err());
        if xattr {
            // Other xattrs still work.
            c.setxattr(n, "user.vessel", b"v").unwrap();
            assert_eq!(
                host_xattr(&shared.join("bin"), "user.vessel"),
                Ok(b"v".to_vec())
            );
            // Removing them needs CAP_SETFCAP too: the host kernel refuses.
            assert_eq!(c.removexattr(n, "security.capability"), Err(libc::EPERM));
        }
    }
}

#[test]
fn whiteouts_cannot_be_made_by_rename() {
    let (_tmp, mut h) = harness_with(false, |shared| {
        std::fs::write(shared.join("a"), b"a").unwrap();
    });
    let shared = h.shared();
    let mut c = h.client();
    // RENAME_WHITEOUT leaves a 0/0 character device where the source was.
    assert_eq!(
        c.rename2(ROOT, "a", ROOT, "b", libc::RENAME_WHITEOUT),
        Err(libc::EPERM)
    );
    assert!(std::fs::symlink_metadata(shared.join("a"))
        .unwrap()
        .is_file());
    assert!(!shared.join("b").exists());
    assert_eq!(
        c.rename2(ROOT, "a", ROOT, "b", libc::RENAME_NOREPLACE),
        Ok(())
    );
    assert!(std::fs::symlink_metadata(shared.join("b"))
        .unwrap()
        .is_file());
    assert!(std::fs::symlink_metadata(shared.join("a")).is_err());
}

#[test]
fn the_serving_thread_has_given_up_the_capabilities() {
    let _h = Harness::new();
    // The harness runs the event manager on this thread, as the VMM's event thread does.
    assert!(privileges::dropped_here());
    let caps = privileges::current().unwrap();
    for cap in privileges::DROPPED {
        assert!(!caps.holds(cap), "capability {cap}: {caps:x?}");
    }
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let field = |name: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/thread-self/status"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    // CAP_MKNOD, CAP_FSETID, CAP_SETFCAP.
    let mask = (1u64 << 27) | (1 << 4) | (1 << 31);
    for name in ["CapEff:", "CapPrm:", "CapInh:"] {
        assert_eq!(field(name) & mask, 0, "{name}");
    }
}

#[test]
fn a_thread_that_kept_the_capabilities_serves_nothing() {
    // Started before the harness: it has not been through drop_for_serving.
    let (tx, rx) = mpsc::channel::<Arc<Mutex<Fs>>>();
    let other = std::thread::spawn(move || {
        let fs = rx.recv().unwrap();
        let mut dev = fs.lock().unwrap();
        (privileges::dropped_here(), dev.process_queue(REQUEST_QUEUE))
    });
    let mut h = Harness::new();
    std::fs::write(h.shared().join("file"), b"x").unwrap();
    h.activate();
    h.client().init();
    let hdr = std::mem::size_of::<InHeader>();
    let req = raw_request((hdr + 5) as u32, Opcode::Lookup as u32, 77, ROOT, b"file\0");
    h.add(REQUEST_QUEUE, &[Part::In(req), Part::Out(4096)]);
    let refused_before = h.dev().stats().refused;
    tx.send(h.fs.clone()).unwrap();
    assert_eq!(other.join().unwrap(), (false, false));
    let used = h.wait_used(REQUEST_QUEUE, 1);
    let out = OutHeader::from_slice(&used[0].1.data[..std::mem::size_of::<OutHeader>()])
        .copied()
        .unwrap();
    assert_eq!((out.unique, out.error), (77, -libc::EPERM));
    assert_eq!(h.dev().stats().refused, refused_before + 1);
    // Served from the thread that dropped them, the same request works.
    assert!(h.client().lookup(ROOT, "file").is_ok());
}
