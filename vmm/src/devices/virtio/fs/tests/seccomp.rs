//! Every kind of request the device serves, run under the event thread's production seccomp
//! filter (a disallowed syscall kills the process). The workload runs in a forked child, so
//! a missing syscall fails this test (the child dies of SIGSYS) instead of the test binary.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{Opcode, SetattrIn};

use super::{Client, Harness};
use crate::seccomp::{filters_for, install, ThreadNeeds};

const ROOT: u64 = 1;

/// Requests of every opcode the passthrough backend implements. Returns the failed step.
fn workload(c: &mut Client<'_>, xattr: bool) -> Result<(), String> {
    let step = |what: &str, r: Result<(), i32>| r.map_err(|e| format!("{what}: errno {e}"));
    c.init();
    let file = c
        .lookup(ROOT, "host.txt")
        .map_err(|e| format!("lookup {e}"))?;
    let fh = c
        .open(file.nodeid, libc::O_RDWR)
        .map_err(|e| format!("open {e}"))?;
    let data = c
        .read(file.nodeid, fh, 0, 100)
        .map_err(|e| format!("read {e}"))?;
    if data != b"from the host" {
        return Err(format!("read {data:?}"));
    }
    step("write", c.write(file.nodeid, fh, 0, b"FROM").map(drop))?;
    step("fsync", c.fsync(file.nodeid, fh))?;
    step("fdatasync", c.fsync_with(Opcode::Fsync, file.nodeid, fh, 1))?;
    step(
        "lseek",
        c.lseek(file.nodeid, fh, 0, libc::SEEK_END).map(drop),
    )?;
    step("access", c.access(file.nodeid, libc::R_OK | libc::W_OK))?;
    step("fallocate", c.fallocate(file.nodeid, fh, 0, 4096))?;
    step("flush", c.flush(file.nodeid, fh))?;
    step("release", c.release(file.nodeid, fh, false))?;

    // As a non-root guest user: the backend switches the thread's uid/gid.
    c.uid = 1234;
    c.gid = 2345;
    let (new, open) = c
        .create(ROOT, "guest.txt", 0o644, libc::O_WRONLY)
        .map_err(|e| format!("create {e}"))?;
    step(
        "write new",
        c.write(new.nodeid, open.fh, 0, b"from the guest").map(drop),
    )?;
    step("release new", c.release(new.nodeid, open.fh, false))?;
    let dir = c
        .mkdir(ROOT, "dir", 0o755)
        .map_err(|e| format!("mkdir {e}"))?;
    c.uid = 0;
    c.gid = 0;
    step(
        "mknod",
        c.mknod(dir.nodeid, "fifo", libc::S_IFIFO | 0o600, 0)
            .map(drop),
    )?;
    // Refused by the policy before the backend's mknodat (which the filter would punish
    // with SIGSYS), whatever the guest sends.
    for (mode, rdev) in [(libc::S_IFCHR | 0o600, (1 << 8) | 3), (libc::S_IFCHR, 0)] {
        if c.mknod(dir.nodeid, "dev", mode, rdev).map(drop) != Err(libc::EPERM) {
            return Err(format!("mknod {mode:o} {rdev:#x} not refused"));
        }
    }
    if c.rename2(ROOT, "guest.txt", ROOT, "x", libc::RENAME_WHITEOUT) != Err(libc::EPERM) {
        return Err("rename with RENAME_WHITEOUT not refused".into());
    }
    let suid = SetattrIn {
        valid: 1, // MODE
        mode: 0o4755,
        ..Default::default()
    };
    match c.setattr(new.nodeid, suid) {
        Ok(a) if a.attr.mode & 0o7777 == 0o755 => {}
        other => return Err(format!("chmod u+s: {other:?}")),
    }
    let link = c
        .symlink(dir.nodeid, "link", "../guest.txt")
        .map_err(|e| format!("symlink {e}"))?;
    step("readlink", c.readlink(link.nodeid).map(drop))?;
    step("link", c.link(new.nodeid, dir.nodeid, "hard").map(drop))?;
    let attrs = SetattrIn {
        // MODE | UID | GID | SIZE | ATIME | MTIME
        valid: 1 | 2 | 4 | 8 | 16 | 32,
        mode: 0o600,
        uid: 1234,
        gid: 2345,
        size: 2,
        atime: 1,
        mtime: 2,
        ..Default::default()
    };
    step("setattr", c.setattr(file.nodeid, attrs).map(drop))?;
    // On an open file (FATTR_FH): the backend works on the handle.
    let fh = c
        .open(file.nodeid, libc::O_RDWR)
        .map_err(|e| format!("open {e}"))?;
    let by_handle = SetattrIn {
        valid: 1 | 8 | 64, // MODE | SIZE | FH
        fh,
        mode: 0o640,
        size: 2,
        ..Default::default()
    };
    step("setattr fh", c.setattr(file.nodeid, by_handle).map(drop))?;
    step("release 2", c.release(file.nodeid, fh, false))?;
    step("getattr", c.getattr(file.nodeid).map(drop))?;
    let dh = c.opendir(dir.nodeid).map_err(|e| format!("opendir {e}"))?;
    let names = c
        .readdir(dir.nodeid, dh)
        .map_err(|e| format!("readdir {e}"))?;
    if names.len() != 3 {
        return Err(format!("readdir {names:?}"));
    }
    step("readdirplus", c.readdirplus(dir.nodeid, dh).map(drop))?;
    step(
        "fsyncdir",
        c.fsync_with(Opcode::Fsyncdir, dir.nodeid, dh, 0),
    )?;
    step("releasedir", c.release(dir.nodeid, dh, true))?;
    step("rename", c.rename(dir.nodeid, "hard", ROOT, "moved-once"))?;
    step("rename1", c.rename1(ROOT, "moved-once", ROOT, "moved"))?;
    step("unlink", c.unlink(dir.nodeid, "link", false))?;
    step("unlink fifo", c.unlink(dir.nodeid, "fifo", false))?;
    step("rmdir", c.unlink(ROOT, "dir", true))?;
    step("statfs", c.statfs(ROOT).map(drop))?;
    if xattr {
        step("setxattr", c.setxattr(new.nodeid, "user.vessel", b"v"))?;
        let value = c.getxattr(new.nodeid, "user.vessel", 64);
        if value != Ok(b"v".to_vec()) {
            return Err(format!("getxattr {value:?}"));
        }
        step("listxattr", c.listxattr(new.nodeid, 256).map(drop))?;
        step("removexattr", c.removexattr(new.nodeid, "user.vessel"))?;
        if c.setxattr(new.nodeid, "security.capability", &[1, 0, 0, 2]) != Err(libc::EPERM) {
            return Err("setxattr security.capability not refused".into());
        }
    } else if c.getxattr(new.nodeid, "user.vessel", 64) != Err(libc::ENOSYS) {
        return Err("getxattr without xattr support".into());
    }
    c.forget(file.nodeid, 1);
    Ok(())
}

/// Runs `workload` in a forked child under the production filter, on a device sharing
/// `<dir>/shared`; returns the child's wait status.
fn run_filtered(dir: &Path, xattr: bool) -> i32 {
    let filters = filters_for(ThreadNeeds { shared_fs: true }).expect("filters");
    // SAFETY: fork in a test; the child only runs the device and `_exit`s, never returning
    // into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The device is created before the filter, as in the VMM (and in this process: the
        // backend keeps /proc/self/fd open, which names the process that opened it).
        let mut h = Harness::in_dir(dir, xattr);
        let code = match install(&filters.vmm) {
            Err(_) => 3,
            Ok(()) => {
                // Activation and the first FUSE_INIT happen under the filter, as in the VMM.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    h.activate();
                    workload(&mut h.client(), xattr)?;
                    // Every opcode with random arguments, for the paths no kernel takes.
                    super::malformed::random_requests(&mut h, 0x0dd_ba11, 600);
                    Ok::<(), String>(())
                }));
                match result {
                    Ok(Ok(())) => 0,
                    Ok(Err(step)) => {
                        let _ = std::fs::write(h.dir.as_path().join("failed-step"), step);
                        1
                    }
                    Err(_) => 2,
                }
            }
        };
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            return status;
        }
        if Instant::now() > deadline {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: reaping it, with a valid status pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            panic!("the filtered workload hung for 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(xattr: bool) {
    super::require_root("uid switches, mknod");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(shared.join("host.txt"), b"from the host").unwrap();
    let status = run_filtered(dir.path(), xattr);
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        assert_ne!(
            sig,
            libc::SIGSYS,
            "the device made a syscall the event thread's filter forbids: add it to \
             FS_DEVICE_SYSCALLS (`dmesg | grep type=1326` names it)"
        );
        panic!("filtered workload killed by signal {sig}");
    }
    let code = libc::WEXITSTATUS(status);
    let step = std::fs::read_to_string(dir.path().join("failed-step")).unwrap_or_default();
    assert_eq!(
        code, 0,
        "filtered workload failed (1: step {step:?}, 2: panic, 3: install)"
    );
    // The effects are on the host.
    assert_eq!(std::fs::read(shared.join("host.txt")).unwrap(), b"FR");
    assert_eq!(
        std::fs::read(shared.join("guest.txt")).unwrap(),
        b"from the guest"
    );
    let meta = std::fs::metadata(shared.join("guest.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.nlink()), (1234, 2345, 2));
    assert!(shared.join("moved").is_file());
    assert!(!shared.join("dir").exists());
}

#[test]
fn every_request_runs_under_the_event_thread_filter() {
    check(false);
}

#[test]
fn xattr_requests_run_under_the_event_thread_filter() {
    check(true);
}
