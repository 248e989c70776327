//! The guest cannot reach outside the shared directory, nor make the VMM open host devices.
//! Each test puts a secret beside the shared directory (in its parent) and tries to get at it.

use std::os::unix::fs::MetadataExt;

use super::Harness;

const ROOT: u64 = 1;
const SECRET: &[u8] = b"host secret, outside the share";

/// A harness with `<parent>/outside.txt` beside `<parent>/shared`.
fn harness() -> Harness {
    let mut h = Harness::new();
    std::fs::write(h.dir.as_path().join("outside.txt"), SECRET).unwrap();
    std::fs::write(h.shared().join("inside.txt"), b"inside").unwrap();
    std::fs::create_dir(h.shared().join("sub")).unwrap();
    h.activate();
    h.client().init();
    h
}

#[test]
fn dotdot_at_the_root_is_the_root() {
    let mut h = harness();
    let root_ino = std::fs::metadata(h.shared()).unwrap().ino();
    let parent_ino = std::fs::metadata(h.dir.as_path()).unwrap().ino();
    let mut c = h.client();
    let up = c.lookup(ROOT, "..").expect("lookup ..");
    assert_eq!(up.nodeid, ROOT, "'..' of the root is the root inode");
    assert_eq!(up.attr.ino, root_ino);
    assert_ne!(up.attr.ino, parent_ino);
    let sub = c.lookup(ROOT, "sub").unwrap();
    let up = c.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(up.nodeid, ROOT);
    let up2 = c.lookup(up.nodeid, "..").unwrap();
    assert_eq!(up2.nodeid, ROOT);
    // From "the root's parent" (= the root) the secret is not there.
    assert_eq!(
        c.lookup(up2.nodeid, "outside.txt").err(),
        Some(libc::ENOENT)
    );
    let fh = c.opendir(up2.nodeid).unwrap();
    let names = c.readdir(up2.nodeid, fh).unwrap();
    assert!(names.iter().any(|n| n == "inside.txt"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "outside.txt" || n == "shared"),
        "{names:?}"
    );
}

#[test]
fn names_with_slashes_or_dots_are_refused() {
    let mut h = harness();
    let mut c = h.client();
    assert_eq!(c.lookup(ROOT, "../outside.txt").err(), Some(libc::EINVAL));
    assert_eq!(c.lookup(ROOT, "/etc").err(), Some(libc::EINVAL));
    assert_eq!(
        c.lookup(ROOT, "sub/../../outside.txt").err(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        c.create(ROOT, "../planted", 0o644, libc::O_WRONLY)
            .map(drop),
        Err(libc::EINVAL)
    );
    assert_eq!(c.mkdir(ROOT, "..", 0o755).map(drop), Err(libc::EINVAL));
    assert_eq!(c.mkdir(ROOT, ".", 0o755).map(drop), Err(libc::EINVAL));
    assert_eq!(c.symlink(ROOT, "a/b", "x").map(drop), Err(libc::EINVAL));
    assert_eq!(
        c.rename(ROOT, "inside.txt", ROOT, "../moved"),
        Err(libc::EINVAL)
    );
    assert_eq!(c.unlink(ROOT, "../outside.txt", false), Err(libc::EINVAL));
    let entries: Vec<_> = std::fs::read_dir(h.dir.as_path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        2,
        "nothing planted beside the share: {entries:?}"
    );
    assert_eq!(
        std::fs::read(h.dir.as_path().join("outside.txt")).unwrap(),
        SECRET
    );
}

#[test]
fn symlinks_to_the_outside_are_never_followed_on_the_host() {
    let mut h = Harness::new();
    let outside = h.dir.as_path().join("outside.txt");
    std::fs::write(&outside, SECRET).unwrap();
    let shared = h.shared();
    std::os::unix::fs::symlink(&outside, shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside.txt", shared.join("rel")).unwrap();
    std::os::unix::fs::symlink(h.dir.as_path(), shared.join("dirlink")).unwrap();
    h.activate();
    let mut c = h.client();
    c.init();

    for name in ["abs", "rel"] {
        let link = c.lookup(ROOT, name).unwrap();
        assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        // The target is only text for the guest to resolve in its own namespace.
        let target = c.readlink(link.nodeid).unwrap();
        assert!(target.ends_with(b"outside.txt"), "{name}");
        let opened = c.open(link.nodeid, libc::O_RDONLY);
        assert!(opened.is_err(), "{name}: opening a symlink inode must fail");
        assert!(c.read(link.nodeid, 1, 0, 100).is_err(), "{name}");
    }
    let dirlink = c.lookup(ROOT, "dirlink").unwrap();
    assert_eq!(dirlink.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(c.lookup(dirlink.nodeid, "outside.txt").is_err());
    assert!(c
        .create(dirlink.nodeid, "planted", 0o644, libc::O_WRONLY)
        .is_err());
    assert!(c.mkdir(dirlink.nodeid, "planted-dir", 0o755).is_err());
    assert!(c.opendir(dirlink.nodeid).is_err());
    assert!(!h.dir.as_path().join("planted").exists());
    assert!(!h.dir.as_path().join("planted-dir").exists());
}

#[test]
fn device_nodes_and_fifos_are_never_opened() {
    let mut h = harness();
    let fifo = std::ffi::CString::new(h.shared().join("host-fifo").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path; creates a FIFO in our temp dir.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let mut c = h.client();
    // A FIFO made on the host: opening it would block the event thread forever.
    let node = c.lookup(ROOT, "host-fifo").unwrap();
    assert!(c.open(node.nodeid, libc::O_RDONLY).is_err());
    assert!(c.open(node.nodeid, libc::O_WRONLY).is_err());
    // Device nodes cannot be made by the guest at all (this one would be the host's
    // /dev/null; the same would hold for its disks): see policy.rs.
    assert_eq!(
        c.mknod(ROOT, "null", libc::S_IFCHR | 0o666, (1 << 8) | 3)
            .map(drop),
        Err(libc::EPERM),
        "mknod of a char device"
    );
    assert!(std::fs::symlink_metadata(h.shared().join("null")).is_err());
    // FIFOs can: creating them is the guest's business, opening them on the host is not.
    let mut c = h.client();
    let fifo = c
        .mknod(ROOT, "guest-fifo", libc::S_IFIFO | 0o666, 0)
        .expect("mknod fifo");
    assert!(c.open(fifo.nodeid, libc::O_RDWR).is_err());
    assert!(c.open(fifo.nodeid, libc::O_RDONLY).is_err());
}
