//! Well-formed FUSE requests: replies and their effects in the shared directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_backend_rs::abi::fuse_abi::{FsOptions, OpenOptions, SetattrIn};

use super::Harness;
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::fs::{ATTR_TIMEOUT, NUM_REQUEST_QUEUES, TAG_LEN, VIRTIO_ID_FS};

const ROOT: u64 = 1;

#[test]
fn device_identity_and_config_space() {
    let h = Harness::new();
    let dev = h.dev();
    assert_eq!(dev.device_type(), VIRTIO_ID_FS);
    assert_eq!(dev.avail_features(), 1 << 32, "VIRTIO_F_VERSION_1 only");
    assert_eq!(dev.queues().len(), 2);
    assert!(dev.queues().iter().all(|q| {
        use virtio_queue::QueueT;
        q.max_size() == 1024
    }));
    let mut config = [0xffu8; TAG_LEN + 4];
    dev.read_config(0, &mut config);
    assert_eq!(&config[..6], b"vessel");
    assert!(config[6..TAG_LEN].iter().all(|&b| b == 0), "tag NUL-padded");
    assert_eq!(
        u32::from_le_bytes(config[TAG_LEN..].try_into().unwrap()),
        NUM_REQUEST_QUEUES
    );
    // Partial and out-of-range reads.
    let mut four = [0u8; 4];
    dev.read_config(TAG_LEN as u64, &mut four);
    assert_eq!(u32::from_le_bytes(four), 1);
    let mut untouched = [7u8; 4];
    dev.read_config(TAG_LEN as u64 + 2, &mut untouched);
    assert_eq!(untouched, [7; 4], "a read past the end leaves data alone");
}

#[test]
fn bad_tags_and_dirs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for tag in ["", "has space", "a=b", &"x".repeat(TAG_LEN + 1), "tab\t"] {
        let err = super::super::Fs::new(tag, dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("tag"), "{tag:?}: {err}");
    }
    assert!(super::super::Fs::new(&"x".repeat(TAG_LEN), dir.path(), false).is_ok());
    let missing = dir.path().join("missing");
    let err = super::super::Fs::new("t", &missing, false).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = super::super::Fs::new("t", &file, false).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn init_negotiates_without_writeback_or_dax() {
    let mut h = Harness::new();
    h.activate();
    let out = h.client().init();
    assert_eq!(out.major, 7);
    assert!(out.minor >= 31, "minor {}", out.minor);
    let flags = u64::from(out.flags) | (u64::from(out.flags2) << 32);
    let enabled = FsOptions::from_bits_truncate(flags);
    assert!(!enabled.contains(FsOptions::WRITEBACK_CACHE), "{enabled:?}");
    assert!(
        !enabled.contains(FsOptions::ZERO_MESSAGE_OPEN),
        "{enabled:?}"
    );
    assert!(enabled.contains(FsOptions::DO_READDIRPLUS), "{enabled:?}");
    assert!(enabled.contains(FsOptions::AUTO_INVAL_DATA), "{enabled:?}");
    assert_eq!(h.dev().stats().served, 1);
}

#[test]
fn file_data_is_kept_across_opens() {
    let mut h = Harness::new();
    std::fs::write(h.shared().join("bin"), b"an executable").unwrap();
    h.activate();
    let mut c = h.client();
    c.init();
    let entry = c.lookup(ROOT, "bin").expect("lookup");
    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        let out = c.open_out(entry.nodeid, flags).expect("open");
        assert_ne!(
            OpenOptions::from_bits_truncate(out.open_flags) & OpenOptions::KEEP_CACHE,
            OpenOptions::empty(),
            "open flags {:#x}",
            out.open_flags
        );
        c.release(entry.nodeid, out.fh, false).expect("release");
    }
}

#[test]
fn lookup_getattr_and_read_a_host_file() {
    let mut h = Harness::new();
    let content = b"written on the host\n";
    std::fs::write(h.shared().join("hello.txt"), content).unwrap();
    let host_ino = std::fs::metadata(h.shared().join("hello.txt"))
        .unwrap()
        .ino();
    h.activate();
    let mut c = h.client();
    c.init();
    let entry = c.lookup(ROOT, "hello.txt").expect("lookup");
    assert!(entry.nodeid > ROOT);
    assert_eq!(entry.attr.size, content.len() as u64);
    assert_eq!(entry.attr.ino, host_ino);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(entry.entry_valid, ATTR_TIMEOUT.as_secs());
    let attr = c.getattr(entry.nodeid).expect("getattr");
    assert_eq!(attr.attr.size, content.len() as u64);
    assert_eq!(c.lookup(ROOT, "nope").err(), Some(libc::ENOENT));

    let fh = c.open(entry.nodeid, libc::O_RDONLY).expect("open");
    assert_eq!(c.read(entry.nodeid, fh, 0, 4096).unwrap(), content);
    assert_eq!(c.read(entry.nodeid, fh, 8, 2).unwrap(), b"on");
    assert_eq!(c.read(entry.nodeid, fh, 1000, 10).unwrap(), b"", "past EOF");
    c.release(entry.nodeid, fh, false).expect("release");
    // The handle is gone.
    assert_eq!(c.read(entry.nodeid, fh, 0, 10), Err(libc::EBADF));
    // FORGET has no reply (and comes on the high-priority queue).
    assert_eq!(c.forget(entry.nodeid, 1), 0);
    // What was served, by opcode (the READ of the released handle got its EBADF reply).
    let stats = h.dev().stats();
    assert_eq!(stats.served_by_opcode[1], 2, "LOOKUPs");
    assert_eq!(
        stats.opcode_summary(),
        "READ 4, LOOKUP 2, FORGET 1, GETATTR 1, OPEN 1, RELEASE 1, INIT 1"
    );
    assert_eq!(stats.served, stats.served_by_opcode.iter().sum::<u64>());
}

#[test]
fn create_and_write_land_in_the_host_directory() {
    let mut h = Harness::new();
    h.activate();
    let mut c = h.client();
    c.init();
    let (entry, open) = c
        .create(ROOT, "new.txt", 0o640, libc::O_WRONLY | libc::O_CREAT)
        .expect("create");
    assert_eq!(entry.attr.mode & 0o7777, 0o640);
    assert_eq!(c.write(entry.nodeid, open.fh, 0, b"hello ").unwrap(), 6);
    assert_eq!(c.write(entry.nodeid, open.fh, 6, b"guest").unwrap(), 5);
    c.fsync(entry.nodeid, open.fh).expect("fsync");
    c.release(entry.nodeid, open.fh, false).unwrap();
    // A second create of the same name with O_EXCL fails.
    assert_eq!(
        c.create(
            ROOT,
            "new.txt",
            0o640,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL
        )
        .map(drop),
        Err(libc::EEXIST)
    );
    let path = h.shared().join("new.txt");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello guest");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
}

#[test]
fn mkdir_readdir_rename_unlink() {
    let mut h = Harness::new();
    std::fs::write(h.shared().join("a.txt"), b"a").unwrap();
    h.activate();
    let mut c = h.client();
    c.init();
    let dir = c.mkdir(ROOT, "sub", 0o755).expect("mkdir");
    assert_eq!(dir.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let (f, open) = c.create(dir.nodeid, "inner", 0o600, libc::O_RDWR).unwrap();
    c.release(f.nodeid, open.fh, false).unwrap();

    let fh = c.opendir(ROOT).expect("opendir");
    let mut names = c.readdir(ROOT, fh).expect("readdir");
    names.sort();
    // The backend leaves out "." and ".." (the guest kernel adds its own).
    assert_eq!(names, ["a.txt", "sub"]);
    c.release(ROOT, fh, true).unwrap();

    c.rename(ROOT, "a.txt", dir.nodeid, "b.txt")
        .expect("rename");
    assert!(h.shared().join("sub/b.txt").is_file());
    assert!(!h.shared().join("a.txt").exists());
    let mut c = h.client();
    c.unlink(dir.nodeid, "b.txt", false).unwrap();
    c.unlink(dir.nodeid, "inner", false).unwrap();
    assert_eq!(c.unlink(ROOT, "sub", false), Err(libc::EISDIR));
    c.unlink(ROOT, "sub", true).expect("rmdir");
    assert!(!h.shared().join("sub").exists());
}

#[test]
fn symlinks_links_setattr_statfs_fallocate() {
    let mut h = Harness::new();
    let shared = h.shared();
    std::fs::write(shared.join("f"), b"0123456789").unwrap();
    h.activate();
    let mut c = h.client();
    c.init();
    let f = c.lookup(ROOT, "f").unwrap();
    let link = c.symlink(ROOT, "l", "f").expect("symlink");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(c.readlink(link.nodeid).unwrap(), b"f");
    let hard = c.link(f.nodeid, ROOT, "hard").expect("link");
    assert_eq!(hard.attr.nlink, 2);

    // chmod + truncate + times in one SETATTR, as `truncate`/`touch` send them.
    let args = SetattrIn {
        valid: (1 << 0) | (1 << 3) | (1 << 4) | (1 << 5), // MODE | SIZE | ATIME | MTIME
        mode: 0o600,
        size: 4,
        atime: 1_000_000,
        mtime: 2_000_000,
        ..Default::default()
    };
    let attr = c.setattr(f.nodeid, args).expect("setattr");
    assert_eq!(attr.attr.size, 4);
    assert_eq!(attr.attr.mode & 0o7777, 0o600);
    let meta = std::fs::metadata(shared.join("f")).unwrap();
    assert_eq!((meta.len(), meta.mtime()), (4, 2_000_000));

    let fh = c.open(f.nodeid, libc::O_RDWR).unwrap();
    c.fallocate(f.nodeid, fh, 0, 8192).expect("fallocate");
    c.release(f.nodeid, fh, false).unwrap();
    assert_eq!(std::fs::metadata(shared.join("f")).unwrap().len(), 8192);
    let st = c.statfs(ROOT).expect("statfs");
    assert!(st.st.bsize > 0 && st.st.namelen > 0, "{st:?}");
    // xattrs are off: the guest learns that once and stops asking.
    assert_eq!(c.getxattr(f.nodeid, "user.x", 64), Err(libc::ENOSYS));
}

#[test]
fn files_are_created_with_the_callers_ids() {
    super::require_root("the device switches to the guest caller's uid/gid");
    let mut h = Harness::new();
    // The caller needs write permission in the directory, as on any host.
    std::fs::set_permissions(h.shared(), std::fs::Permissions::from_mode(0o777)).unwrap();
    h.activate();
    let mut c = h.client();
    c.init();
    c.uid = 1234;
    c.gid = 2345;
    let (entry, open) = c.create(ROOT, "owned", 0o644, libc::O_WRONLY).unwrap();
    c.release(entry.nodeid, open.fh, false).unwrap();
    let d = c.mkdir(ROOT, "owned-dir", 0o755).unwrap();
    assert_eq!((entry.attr.uid, entry.attr.gid), (1234, 2345));
    assert_eq!((d.attr.uid, d.attr.gid), (1234, 2345));
    let meta = std::fs::metadata(h.shared().join("owned")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
    // The event thread (here: the test's) is root again afterwards.
    super::require_root("the event thread switched back");
}
