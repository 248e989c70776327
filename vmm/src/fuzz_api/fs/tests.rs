//! The stale-handle escape the `virtio_fs` target found (fuzz/README.md, "Found"), replayed
//! by hand: `fuse-backend-rs` 0.14 closed a handle's fd when `fcntl(F_SETFL)` to a READ's
//! flags failed, and the guest then read whatever file took the number. The policy
//! (`devices/virtio/fs/policy.rs`) refuses `O_PATH` opens and pins READ/WRITE flags.

use std::path::Path;

use super::*;

/// A 4 KiB reply buffer, arguments in one piece.
fn plain() -> Input<'static> {
    Input::new(&[2])
}

fn read_args(fh: u64, flags: u32) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&fh.to_le_bytes());
    a.extend_from_slice(&0u64.to_le_bytes()); // offset
    a.extend_from_slice(&1024u32.to_le_bytes()); // size
    a.extend_from_slice(&0u32.to_le_bytes()); // read_flags
    a.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    a.extend_from_slice(&flags.to_le_bytes());
    a.extend_from_slice(&0u32.to_le_bytes());
    a
}

impl Run {
    /// Sends one request on the request queue and serves it; its (errno, payload).
    fn call(&mut self, opcode: abi::Opcode, node: u64, args: &[u8]) -> (i32, Vec<u8>) {
        self.send(
            REQUEST_QUEUE,
            opcode as u32,
            node,
            0,
            0,
            args,
            &[],
            0,
            &mut plain(),
        );
        self.run_loop();
        let (unique, error, payload) = self.replies.last().expect("a reply").clone();
        assert_eq!(unique, self.unique, "{opcode:?} answered");
        (error, payload)
    }

    /// The node of `name` in the share's root.
    fn lookup(&mut self, name: &str) -> u64 {
        let (error, payload) = self.call(abi::Opcode::Lookup, 1, format!("{name}\0").as_bytes());
        assert_eq!(error, 0, "LOOKUP {name}");
        Input::new(&payload).u64()
    }

    /// OPEN of `node` with `flags`: the handle, or the errno.
    fn open(&mut self, node: u64, flags: u32) -> Result<u64, i32> {
        let mut args = flags.to_le_bytes().to_vec();
        args.extend_from_slice(&[0; 4]);
        match self.call(abi::Opcode::Open, node, &args) {
            (0, payload) => Ok(Input::new(&payload).u64()),
            (error, _) => Err(error),
        }
    }
}

/// `O_PATH` never reaches the backend (no handle holds an `O_PATH` fd).
#[test]
fn open_with_o_path_is_refused() {
    let mut run = Run::new(false);
    run.init(&mut Input::new(&[]));
    run.run_loop();
    let file = run.lookup("file");
    let o_path = libc::O_PATH as u32;
    assert_eq!(run.open(file, o_path), Err(-libc::EINVAL));
    assert_eq!(
        run.open(1, o_path | libc::O_DIRECTORY as u32),
        Err(-libc::EINVAL)
    );
    assert!(
        run.open(file, libc::O_RDONLY as u32).is_ok(),
        "a plain open works"
    );
}

/// The fd flags of the backend's fds open on `path` (from `/proc/self/fdinfo`).
fn host_fd_flags(path: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        if std::fs::read_link(e.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(e.file_name()))
            .unwrap_or_default();
        if let Some(f) = info.lines().find_map(|l| l.strip_prefix("flags:")) {
            out.push(u32::from_str_radix(f.trim(), 8).expect("octal flags"));
        }
    }
    out
}

/// READ and WRITE use the handle's own flags: the backend never calls `F_SETFL` (whose failure
/// closed the fd), and a later READ through the handle still reads the share's file, not the
/// host file that the next `open` of the VMM got.
#[test]
fn read_flags_from_the_guest_never_reach_the_host_fd() {
    let mut run = Run::new(false);
    run.init(&mut Input::new(&[]));
    run.run_loop();
    let file = run.lookup("file");
    let fh = run.open(file, libc::O_RDONLY as u32).expect("OPEN");
    let shared_file = run.tree.shared().join("file");
    let nonblock = libc::O_NONBLOCK as u32;
    let odd = libc::O_RDONLY as u32 | nonblock | libc::O_DIRECT as u32 | libc::O_NOATIME as u32;
    let (error, data) = run.call(abi::Opcode::Read, file, &read_args(fh, odd));
    assert_eq!((error, data.as_slice()), (0, &b"hello\n"[..]));
    let flags = host_fd_flags(&shared_file);
    assert!(
        !flags.is_empty(),
        "the handle's fd is open on {shared_file:?}"
    );
    assert!(
        flags
            .iter()
            .all(|f| f & (nonblock | libc::O_DIRECT as u32) == 0),
        "the guest's READ flags reached the host fd: {flags:?}"
    );
    // The next file the process opens, standing for any fd of another part of the VMM.
    let other = std::fs::File::open(run.tree.canary()).expect("host file");
    let (error, data) = run.call(abi::Opcode::Read, file, &read_args(fh, 0));
    drop(other);
    assert_eq!(
        (error, data.as_slice()),
        (0, &b"hello\n"[..]),
        "the handle reads the share's file"
    );
    // A handle the guest never opened: EBADF, whatever flags it names.
    let (error, _) = run.call(abi::Opcode::Read, file, &read_args(fh + 1000, 0));
    assert_eq!(error, -libc::EBADF);
}
