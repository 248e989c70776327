//! Root tests: the test plays the compromised guest — symlinks planted at every level, renames,
//! a thread swapping a directory for a symlink while binds run — against the real kernel. They
//! need CAP_SYS_ADMIN and fail loudly without it (never skip). Every mount a test makes has a
//! tmpfs source named with a unique tag, or lies below the test's temp dir, so "did anything
//! get mounted where it should not" is asked of exactly those mounts (robust against mounts
//! other processes make meanwhile).

use std::collections::HashSet;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::*;

/// Root tests share one mount namespace: one at a time, whatever --test-threads says (the
/// crate's other mount tests take it too: [`crate::safe_mount::serial_mount_tests`]).
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());
static TAGS: AtomicUsize = AtomicUsize::new(0);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the safe_mount root tests mount and unmount for real and need root (CAP_SYS_ADMIN): run \
         them as root; they never skip"
    );
}

fn ids_now() -> HashSet<u64> {
    mountinfo::read()
        .unwrap()
        .iter()
        .map(|m| m.mnt_id)
        .collect()
}

fn entry(id: u64) -> Option<MountEntry> {
    mountinfo::read()
        .unwrap()
        .into_iter()
        .find(|m| m.mnt_id == id)
}

fn erofs(r: std::io::Result<()>) -> bool {
    r.is_err_and(|e| e.raw_os_error() == Some(libc::EROFS))
}

/// A temp dir laid out like a sandbox: `sb/shared` (the root), `host/` (host paths outside the
/// root the "guest" points symlinks at) and `src/` (a tmpfs: bind source).
struct Fx {
    base: PathBuf,
    root: PathBuf,
    host: PathBuf,
    src: PathBuf,
    tag: String,
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Fx {
    fn new() -> Fx {
        require_root();
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("vessel-safe-mount-")
            .tempdir()
            .unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        let tag = format!(
            "vsm{}-{}",
            std::process::id(),
            TAGS.fetch_add(1, Ordering::Relaxed)
        );
        let fx = Fx {
            root: base.join("sb/shared"),
            host: base.join("host"),
            src: base.join("src"),
            base,
            tag,
            _dir: dir,
            _serial: serial,
        };
        fs::create_dir_all(&fx.root).unwrap();
        fs::create_dir_all(fx.host.join("volumes/0")).unwrap();
        fs::create_dir_all(fx.host.join("d")).unwrap();
        fs::write(fx.host.join("f"), "host file").unwrap();
        fs::create_dir(&fx.src).unwrap();
        fx.tmpfs(&fx.src);
        fs::write(fx.src.join("hello"), "hi").unwrap();
        fs::write(fx.src.join("file.txt"), "file").unwrap();
        fs::create_dir(fx.src.join("sub")).unwrap();
        fx
    }

    /// Mounts a tmpfs tagged with this fixture's tag (path-based: the test is trusted).
    fn tmpfs(&self, at: &Path) -> u64 {
        mount(
            Some(self.tag.as_str()),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap_or_else(|e| panic!("mounting tmpfs on {}: {e}", at.display()));
        let st = std::fs::metadata(at).unwrap();
        mountinfo::read()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_point == at && m.dev() == st.dev())
            .map(|m| m.mnt_id)
            .max()
            .unwrap()
    }

    /// Gives `src/sub` a tmpfs submount holding `inner`.
    fn submount(&self) -> u64 {
        let id = self.tmpfs(&self.src.join("sub"));
        fs::write(self.src.join("sub/inner"), "inner").unwrap();
        id
    }

    /// Mounts not in `before` that are this test's: below its temp dir, or of its tmpfs source
    /// (wherever they are).
    fn new_mounts(&self, before: &HashSet<u64>) -> Vec<MountEntry> {
        mountinfo::read()
            .unwrap()
            .into_iter()
            .filter(|m| !before.contains(&m.mnt_id))
            .filter(|m| {
                m.mount_point.starts_with(&self.base) || m.source.as_bytes() == self.tag.as_bytes()
            })
            .collect()
    }

    fn rel(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    fn assert_sources_intact(&self) {
        assert_eq!(fs::read_to_string(self.src.join("hello")).unwrap(), "hi");
        assert_eq!(
            fs::read_to_string(self.src.join("file.txt")).unwrap(),
            "file"
        );
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        // Detach whatever a failed test left below the temp dir before TempDir deletes it (it
        // would otherwise delete through the binds).
        for _ in 0..64 {
            // Below the temp dir, or anywhere if its source is ours (a bind gone astray).
            let table = mountinfo::read().unwrap();
            let mut left = mountinfo::entries_beneath(&table, &self.base);
            left.extend(table.into_iter().filter(|m| {
                m.source.as_bytes() == self.tag.as_bytes() && !m.mount_point.starts_with(&self.base)
            }));
            if left.is_empty() {
                return;
            }
            for m in left {
                let _ = umount2(
                    &m.mount_point,
                    MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
                );
            }
        }
        if !std::thread::panicking() {
            panic!("mounts left below {}", self.base.display());
        }
    }
}

const VOL0: &str = "c1/volumes/0";

fn default() -> BindOptions {
    BindOptions::default()
}

#[test]
fn missing_root_has_no_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nope");
    assert!(mounts_beneath(&gone).unwrap().is_empty());
    assert_eq!(unmount_all_beneath(&gone).unwrap(), 0);
    let rec = MountRecord {
        target: gone.join("x"),
        mnt_id: 1,
        root_dev: 0,
        root_ino: 0,
    };
    assert_eq!(unmount_record(&gone, &rec).unwrap(), Unmounted::AlreadyGone);
}

#[test]
fn symlink_at_any_level_is_refused_and_nothing_is_mounted() {
    let fx = Fx::new();
    let host = fx.host.clone();
    // (what the guest plants: link, its target; what is bound: rel, source)
    let cases: Vec<(&str, PathBuf, &str, PathBuf)> = vec![
        ("c1", host.clone(), VOL0, fx.src.clone()),
        ("c1", PathBuf::from("../../host"), VOL0, fx.src.clone()),
        ("c1", PathBuf::from("c1-real"), VOL0, fx.src.clone()),
        ("c1/volumes", host.join("volumes"), VOL0, fx.src.clone()),
        (VOL0, host.join("d"), VOL0, fx.src.clone()),
        (
            "c1/volumes/1",
            host.join("f"),
            "c1/volumes/1",
            fx.src.join("file.txt"),
        ),
        // A relative link to a file outside the root.
        (
            "c1/volumes/1",
            PathBuf::from("../../../../host/f"),
            "c1/volumes/1",
            fx.src.join("file.txt"),
        ),
    ];
    for (link, link_target, rel, source) in cases {
        fs::remove_dir_all(&fx.root).unwrap();
        fs::create_dir_all(fx.rel("c1-real/volumes/0")).unwrap();
        let link_path = fx.rel(link);
        fs::create_dir_all(link_path.parent().unwrap()).unwrap();
        symlink(&link_target, &link_path).unwrap();
        let before = ids_now();

        let err = bind_beneath(&fx.root, Path::new(rel), &source, default()).unwrap_err();
        match &err {
            SafeMountError::Symlink { path } => assert_eq!(path, &link_path, "{link}"),
            other => panic!("{link} -> {}: {other}", link_target.display()),
        }
        assert_eq!(fx.new_mounts(&before), vec![], "{link}: mounted something");
        assert!(mounts_beneath(&fx.root).unwrap().is_empty());
        assert_eq!(
            fs::read_link(&link_path).unwrap(),
            link_target,
            "{link}: symlink changed"
        );
        assert_eq!(fs::read_dir(host.join("volumes/0")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(host.join("d")).unwrap().count(), 0);
        assert_eq!(fs::read_to_string(host.join("f")).unwrap(), "host file");
    }
}

/// Keeps exchanging `dir/name` (a real directory) with `dir/name.alt` (a symlink out of the
/// root) until stopped.
struct Swapper {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Swapper {
    fn start(dir: &Path, name: &str) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let (s, p) = (stop.clone(), pause.clone());
        let dir_fd = super::sys::open_dir_path(dir).unwrap();
        let (a, b) = (PathBuf::from(name), PathBuf::from(format!("{name}.alt")));
        let thread = std::thread::spawn(move || {
            let mut swaps = 0;
            while !s.load(Ordering::Relaxed) {
                if p.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                    continue;
                }
                let flags = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
                // EBUSY while the real directory is a mount point: fine, try again.
                if nix::fcntl::renameat2(dir_fd.as_fd(), &a, dir_fd.as_fd(), &b, flags).is_ok() {
                    swaps += 1;
                }
            }
            swaps
        });
        Swapper {
            stop,
            pause,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn racing_symlink_swaps_never_get_a_mount_outside_root() {
    let fx = Fx::new();
    // (the component swapped, where its symlink twin points: a host copy of the same layout)
    let levels = [
        ("c1", fx.host.clone()),
        ("c1/volumes", fx.host.join("volumes")),
        (VOL0, fx.host.join("volumes/0")),
    ];
    for (level, outside) in levels {
        fs::remove_dir_all(&fx.root).unwrap();
        fs::create_dir_all(fx.rel(VOL0)).unwrap();
        let swapped = fx.rel(level);
        symlink(&outside, format!("{}.alt", swapped.display())).unwrap();
        let before = ids_now();
        let swapper = Swapper::start(swapped.parent().unwrap(), level.rsplit('/').next().unwrap());
        let (mut ok, mut refused, mut paused) = (0, 0, 0);
        for i in 0..3000 {
            match bind_beneath(&fx.root, Path::new(VOL0), &fx.src, default()) {
                Ok(rec) => {
                    let m = entry(rec.mnt_id).expect("a bind that succeeded is mounted");
                    assert!(m.mount_point.starts_with(&fx.root), "{level}: {m:?}");
                    let mut res = unmount_record(&fx.root, &rec);
                    if let Err(SafeMountError::Unreachable { .. }) = res {
                        // The guest may keep a mount out of reach while it races; not once it stops.
                        paused += 1;
                        swapper.pause.store(true, Ordering::Relaxed);
                        res = unmount_record(&fx.root, &rec);
                        swapper.pause.store(false, Ordering::Relaxed);
                    }
                    match res.unwrap() {
                        Unmounted::Detached {
                            mount_point,
                            count: 1,
                        } => {
                            // Wherever the racing guest has moved it meanwhile, beneath root.
                            assert!(mount_point.starts_with(&fx.root), "{mount_point:?}")
                        }
                        other => panic!("{level}: {other:?}"),
                    }
                    ok += 1;
                }
                Err(SafeMountError::Symlink { path }) => {
                    assert!(path.starts_with(&fx.root), "{}", path.display());
                    refused += 1;
                }
                Err(e) => panic!("{level}: iteration {i}: {e}"),
            }
            for m in fx.new_mounts(&before) {
                assert!(
                    m.mount_point.starts_with(&fx.root),
                    "{level}: iteration {i}: mount outside root: {m:?}"
                );
            }
            if ok >= 20 && refused >= 20 {
                break;
            }
        }
        let swaps = swapper.finish();
        eprintln!("{level}: {ok} binds ({paused} unmounts waited for a pause), {refused} refused, {swaps} swaps");
        assert!(
            ok > 0 && refused > 0,
            "{level}: the race never went both ways"
        );
        assert_eq!(fx.new_mounts(&before), vec![], "{level}: left mounted");
        assert_eq!(fs::read_dir(fx.host.join("volumes/0")).unwrap().count(), 0);
    }
}

#[test]
fn readonly_is_readonly_all_the_way_down_and_the_source_stays_writable() {
    let fx = Fx::new();
    fx.submount();
    let opts = BindOptions {
        readonly: true,
        ..default()
    };
    let rec = bind_beneath(&fx.root, Path::new(VOL0), &fx.src, opts).unwrap();
    let target = fx.rel(VOL0);
    assert_eq!(
        fs::read_to_string(target.join("sub/inner")).unwrap(),
        "inner"
    );
    assert!(erofs(fs::write(target.join("new"), "x")));
    assert!(erofs(fs::write(target.join("sub/new"), "x")));
    assert!(erofs(fs::write(target.join("hello"), "x")));
    assert!(erofs(fs::create_dir(target.join("dir"))));
    fs::write(fx.src.join("new"), "x").unwrap();
    fs::write(fx.src.join("sub/new"), "x").unwrap();

    let table = mountinfo::read().unwrap();
    let top = table.iter().find(|m| m.mnt_id == rec.mnt_id).unwrap();
    let sub = table.iter().find(|m| m.parent_id == rec.mnt_id).unwrap();
    assert_eq!(sub.mount_point, target.join("sub"));
    for m in [top, sub] {
        for o in ["ro", "nosuid", "nodev"] {
            assert!(m.has_option(o), "{o} missing: {m:?}");
        }
    }
    let source_mount = table.iter().find(|m| m.mount_point == fx.src).unwrap();
    assert!(source_mount.has_option("rw") && !source_mount.has_option("nosuid"));

    let done = unmount_record(&fx.root, &rec).unwrap();
    assert_eq!(
        done,
        Unmounted::Detached {
            mount_point: target,
            count: 2
        }
    );
    assert!(mounts_beneath(&fx.root).unwrap().is_empty());
    assert_eq!(
        fs::read_to_string(fx.src.join("sub/inner")).unwrap(),
        "inner"
    );
}

#[test]
fn binds_are_nosuid_nodev_and_private_even_below_a_shared_mount() {
    let fx = Fx::new();
    fx.submount();
    // The share itself on a shared mount: attaching below it makes a tree shared again.
    let root_mount = fx.tmpfs(&fx.root);
    mount(
        None::<&str>,
        &fx.root,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    assert!(entry(root_mount).unwrap().is_shared());

    let rec = bind_beneath(&fx.root, Path::new("c1/rootfs"), &fx.src, default()).unwrap();
    let devs = BindOptions {
        allow_devices: true,
        ..default()
    };
    let rec_dev = bind_beneath(&fx.root, Path::new("c1/dev"), &fx.src, devs).unwrap();
    let table = mountinfo::read().unwrap();
    for (rec, nodev) in [(&rec, true), (&rec_dev, false)] {
        let top = table.iter().find(|m| m.mnt_id == rec.mnt_id).unwrap();
        let sub = table.iter().find(|m| m.parent_id == rec.mnt_id).unwrap();
        for m in [top, sub] {
            assert!(m.has_option("rw") && m.has_option("nosuid"), "{m:?}");
            assert_eq!(m.has_option("nodev"), nodev, "{m:?}");
            assert!(!m.is_shared(), "propagates: {m:?}");
        }
    }
    // Writable binds write through to the source.
    fs::write(fx.rel("c1/rootfs/w"), "w").unwrap();
    assert_eq!(fs::read_to_string(fx.src.join("w")).unwrap(), "w");

    assert_eq!(unmount_all_beneath(&fx.root).unwrap(), 5);
    assert!(mounts_beneath(&fx.root).unwrap().is_empty());
    fx.assert_sources_intact();
}

#[test]
fn file_binds_work_and_kind_mismatches_are_errors() {
    let fx = Fx::new();
    let file = fx.src.join("file.txt");
    let rec = bind_beneath(&fx.root, Path::new("c1/volumes/1"), &file, default()).unwrap();
    let target = fx.rel("c1/volumes/1");
    assert!(fs::metadata(&target).unwrap().is_file());
    assert_eq!(fs::read_to_string(&target).unwrap(), "file");
    fs::write(&target, "changed").unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "changed");
    assert_eq!(entry(rec.mnt_id).unwrap().mount_point, target);
    let before = ids_now();

    fs::create_dir(fx.rel("c1/volumes/2")).unwrap();
    fs::write(fx.rel("c1/volumes/3"), "").unwrap();
    nix::unistd::mkfifo(&fx.rel("c1/volumes/4"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::write(fx.rel("c2"), "").unwrap();
    let cases = [
        ("c1/volumes/2", &file, Kind::File, Kind::Directory),
        ("c1/volumes/3", &fx.src, Kind::Directory, Kind::File),
        ("c1/volumes/4", &file, Kind::File, Kind::Other),
    ];
    for (rel, source, want, got) in cases {
        match bind_beneath(&fx.root, Path::new(rel), source, default()) {
            Err(SafeMountError::KindMismatch {
                path,
                expected,
                found,
            }) => assert_eq!((path, expected, found), (fx.rel(rel), want, got)),
            other => panic!("{rel}: {other:?}"),
        }
    }
    match bind_beneath(&fx.root, Path::new("c2/rootfs"), &fx.src, default()) {
        Err(SafeMountError::NotADirectory { path }) => assert_eq!(path, fx.rel("c2")),
        other => panic!("{other:?}"),
    }
    match bind_beneath(
        &fx.root,
        Path::new("c3/x"),
        &fx.base.join("missing"),
        default(),
    ) {
        Err(SafeMountError::Op {
            step: Step::CloneSource,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!fx.rel("c3").exists(), "a missing source creates nothing");
    assert_eq!(fx.new_mounts(&before), vec![]);
    assert!(matches!(
        unmount_record(&fx.root, &rec).unwrap(),
        Unmounted::Detached { count: 1, .. }
    ));
}

#[test]
fn refuses_to_stack_on_or_mount_through_a_mount() {
    let fx = Fx::new();
    let rec = bind_beneath(&fx.root, Path::new("c1/rootfs"), &fx.src, default()).unwrap();
    let before = ids_now();
    for rel in ["c1/rootfs", "c1/rootfs/sub", "c1/rootfs/new/x"] {
        match bind_beneath(&fx.root, Path::new(rel), &fx.src, default()) {
            Err(SafeMountError::CrossesMount { path }) => assert_eq!(path, fx.rel("c1/rootfs")),
            other => panic!("{rel}: {other:?}"),
        }
    }
    assert_eq!(fx.new_mounts(&before), vec![]);
    assert!(!fx.src.join("new").exists());
    unmount_record(&fx.root, &rec).unwrap();
}

#[test]
fn a_prepared_bind_has_its_id_before_it_is_attached() {
    let fx = Fx::new();
    let prepared = prepare_bind(&fx.root, Path::new("c1/rootfs"), &fx.src, default()).unwrap();
    let recorded = prepared.record().clone();
    assert_eq!(recorded.target, fx.rel("c1/rootfs"));
    assert!(fx.rel("c1/rootfs").is_dir(), "target prepared");
    assert!(entry(recorded.mnt_id).is_none(), "not attached yet");
    let json = serde_json::to_string(&recorded).unwrap();
    assert_eq!(
        serde_json::from_str::<MountRecord>(&json).unwrap(),
        recorded
    );

    let rec = prepared.attach().unwrap();
    assert_eq!(rec, recorded);
    assert_eq!(entry(rec.mnt_id).unwrap().mount_point, fx.rel("c1/rootfs"));
    let st = fs::metadata(fx.rel("c1/rootfs")).unwrap();
    assert_eq!((st.dev(), st.ino()), (rec.root_dev, rec.root_ino));

    // A crash between recording and attaching: the record names a mount that never existed.
    let dropped = prepare_bind(&fx.root, Path::new(VOL0), &fx.src, default()).unwrap();
    let orphan = dropped.record().clone();
    drop(dropped);
    assert_eq!(
        unmount_record(&fx.root, &orphan).unwrap(),
        Unmounted::AlreadyGone
    );
    assert_eq!(mounts_beneath(&fx.root).unwrap().len(), 1);
    unmount_record(&fx.root, &rec).unwrap();
}

#[test]
fn unmount_finds_the_mount_after_the_guest_renamed_its_parent() {
    let fx = Fx::new();
    let rec = bind_beneath(&fx.root, Path::new(VOL0), &fx.src, default()).unwrap();
    fs::rename(fx.rel("c1"), fx.rel("c1-moved")).unwrap();
    let moved = fx.rel("c1-moved/volumes/0");
    assert_eq!(entry(rec.mnt_id).unwrap().mount_point, moved);
    let done = unmount_record(&fx.root, &rec).unwrap();
    assert_eq!(
        done,
        Unmounted::Detached {
            mount_point: moved,
            count: 1
        }
    );
    assert!(entry(rec.mnt_id).is_none());
    assert_eq!(
        unmount_record(&fx.root, &rec).unwrap(),
        Unmounted::AlreadyGone
    );
    fx.assert_sources_intact();
}

#[test]
fn unmount_never_follows_a_parent_the_guest_replaced_with_a_symlink() {
    let fx = Fx::new();
    // A host mount where the symlink points: it must survive.
    let decoy = fx.tmpfs(&fx.host.join("volumes/0"));
    let rec = bind_beneath(&fx.root, Path::new(VOL0), &fx.src, default()).unwrap();
    fs::rename(fx.rel("c1/volumes"), fx.rel("c1/hidden")).unwrap();
    symlink(fx.host.join("volumes"), fx.rel("c1/volumes")).unwrap();

    let done = unmount_record(&fx.root, &rec).unwrap();
    let real = fx.rel("c1/hidden/0");
    assert_eq!(
        done,
        Unmounted::Detached {
            mount_point: real,
            count: 1
        }
    );
    assert_eq!(entry(decoy).unwrap().mount_point, fx.host.join("volumes/0"));
    assert_eq!(unmount_all_beneath(&fx.root).unwrap(), 0);
    assert!(entry(decoy).is_some(), "cleanup followed the symlink");
    assert_eq!(
        fs::read_link(fx.rel("c1/volumes")).unwrap(),
        fx.host.join("volumes")
    );
}

#[test]
fn refuses_records_whose_id_now_names_another_mount() {
    let fx = Fx::new();
    // Outside root: refused, untouched.
    let decoy = fx.tmpfs(&fx.host.join("d"));
    let st = fs::metadata(fx.host.join("d")).unwrap();
    let forged = MountRecord {
        target: fx.rel(VOL0),
        mnt_id: decoy,
        root_dev: st.dev(),
        root_ino: st.ino(),
    };
    match unmount_record(&fx.root, &forged) {
        Err(SafeMountError::NotBeneathRoot {
            mnt_id,
            mount_point,
            ..
        }) => {
            assert_eq!((mnt_id, mount_point), (decoy, fx.host.join("d")))
        }
        other => panic!("{other:?}"),
    }
    assert!(entry(decoy).is_some());

    // Beneath root but another mount (a different root inode): left alone.
    let a = bind_beneath(&fx.root, Path::new(VOL0), &fx.src, default()).unwrap();
    let b = bind_beneath(
        &fx.root,
        Path::new("c1/volumes/1"),
        &fx.src.join("sub"),
        default(),
    )
    .unwrap();
    let reused = MountRecord {
        root_ino: b.root_ino,
        ..a.clone()
    };
    assert_ne!(a.root_ino, b.root_ino);
    let got = unmount_record(&fx.root, &reused).unwrap();
    assert_eq!(
        got,
        Unmounted::IdReused {
            mount_point: fx.rel(VOL0)
        }
    );
    assert!(entry(a.mnt_id).is_some());

    // The mount at root itself is never a record's.
    let root_mount = fx.tmpfs(&fx.root);
    let at_root = MountRecord {
        mnt_id: root_mount,
        ..a.clone()
    };
    assert!(matches!(
        unmount_record(&fx.root, &at_root),
        Err(SafeMountError::NotBeneathRoot { .. })
    ));
    assert!(entry(root_mount).is_some());
}

#[test]
fn unmount_takes_what_is_stacked_on_it_below_it_and_its_submounts() {
    let fx = Fx::new();
    fx.submount();
    let rec = bind_beneath(&fx.root, Path::new("c1/rootfs"), &fx.src, default()).unwrap();
    // Something stacked on top of it, hiding its submount at rootfs/sub.
    let top = fx.tmpfs(&fx.rel("c1/rootfs"));
    let done = unmount_record(&fx.root, &rec).unwrap();
    assert_eq!(
        done,
        Unmounted::Detached {
            mount_point: fx.rel("c1/rootfs"),
            count: 3
        }
    );
    assert!(entry(top).is_none());

    // A record of a mount that is itself stacked on another at the same mount point (as the old
    // path-based bind left them): both go.
    let vol = fx.rel("c1/volumes/1");
    fs::create_dir_all(&vol).unwrap();
    let below = fx.tmpfs(&vol);
    let above = fx.tmpfs(&vol);
    let st = fs::metadata(&vol).unwrap();
    let rec = MountRecord {
        target: vol.clone(),
        mnt_id: above,
        root_dev: st.dev(),
        root_ino: st.ino(),
    };
    assert_ne!(below, above);
    let done = unmount_record(&fx.root, &rec).unwrap();
    assert_eq!(
        done,
        Unmounted::Detached {
            mount_point: vol,
            count: 2
        }
    );
    assert!(mounts_beneath(&fx.root).unwrap().is_empty());
    assert_eq!(
        fs::read_to_string(fx.src.join("sub/inner")).unwrap(),
        "inner"
    );
}

#[test]
fn unmount_all_beneath_leaves_nothing_and_keeps_the_sources() {
    let fx = Fx::new();
    fx.submount();
    let ro = BindOptions {
        readonly: true,
        ..default()
    };
    bind_beneath(&fx.root, Path::new("c1/rootfs"), &fx.src, default()).unwrap();
    bind_beneath(&fx.root, Path::new(VOL0), &fx.src.join("sub"), default()).unwrap();
    bind_beneath(
        &fx.root,
        Path::new("c1/volumes/1"),
        &fx.src.join("file.txt"),
        ro,
    )
    .unwrap();
    bind_beneath(&fx.root, Path::new("c2/rootfs"), &fx.src, ro).unwrap();
    fx.tmpfs(&fx.rel("c1/rootfs")); // hides c1/rootfs/sub
    fs::rename(fx.rel("c2"), fx.rel("c2-moved")).unwrap(); // the guest renames

    let listed = mounts_beneath(&fx.root).unwrap();
    assert_eq!(listed.len(), 7, "{listed:#?}");
    // Deepest first: no mount is listed before one of its descendants.
    for (i, m) in listed.iter().enumerate() {
        assert!(
            !listed[..i]
                .iter()
                .any(|earlier| earlier.mnt_id == m.parent_id),
            "{m:?} listed after its parent"
        );
    }
    assert_eq!(unmount_all_beneath(&fx.root).unwrap(), 7);
    assert!(mounts_beneath(&fx.root).unwrap().is_empty());
    assert_eq!(unmount_all_beneath(&fx.root).unwrap(), 0);
    fx.assert_sources_intact();
    assert_eq!(
        fs::read_to_string(fx.src.join("sub/inner")).unwrap(),
        "inner"
    );
    assert!(fx.rel("c1/rootfs").is_dir() && fx.rel("c2-moved/rootfs").is_dir());
    assert_eq!(fs::read_dir(fx.rel("c1/rootfs")).unwrap().count(), 0);
}
