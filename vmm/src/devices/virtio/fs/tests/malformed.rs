//! Hostile chains and FUSE requests: each gets an error reply or comes back unanswered, and
//! the device keeps serving afterwards.

use std::mem::size_of;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, FallocateIn, GetattrIn, GetxattrIn, InHeader, MkdirIn, MknodIn, Opcode, OutHeader,
    ReadIn, Rename2In, SetattrIn, SetxattrIn,
};
use vm_memory::ByteValued;

use super::{
    raw_request, Harness, Part, Used, MEM_SIZE, REQUEST_QUEUE, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

const ROOT: u64 = 1;
const HDR: usize = size_of::<InHeader>();
const OUT: u32 = size_of::<OutHeader>() as u32;

fn harness() -> Harness {
    let mut h = Harness::new();
    std::fs::write(h.shared().join("file"), b"data").unwrap();
    h.activate();
    h.client().init();
    h
}

/// The device still answers a well-formed request.
fn still_serves(h: &mut Harness) {
    let entry = h
        .client()
        .lookup(ROOT, "file")
        .expect("lookup after bad input");
    assert_eq!(entry.attr.size, 4);
}

/// Asserts `used` is exactly one error header for `unique` with `errno`.
fn assert_error(used: &Used, unique: u64, errno: i32) {
    assert_eq!(used.len, OUT, "one out header: {used:?}");
    let out = OutHeader::from_slice(&used.data[..OUT as usize])
        .copied()
        .unwrap();
    assert_eq!((out.len, out.error, out.unique), (OUT, -errno, unique));
}

fn lookup_args() -> Vec<u8> {
    b"file\0".to_vec()
}

#[test]
fn truncated_header_is_returned_unanswered() {
    let mut h = harness();
    let full = raw_request(
        (HDR + 5) as u32,
        Opcode::Lookup as u32,
        7,
        ROOT,
        &lookup_args(),
    );
    let used = h.send(&[Part::In(full[..20].to_vec()), Part::Out(4096)]);
    assert_eq!(used.len, 0);
    assert_eq!(h.dev().stats().dropped, 1);
    still_serves(&mut h);
}

#[test]
fn write_only_chain_is_returned_unanswered() {
    let mut h = harness();
    let used = h.send(&[Part::Out(4096)]);
    assert_eq!(used.len, 0);
    assert_eq!(h.dev().stats().dropped, 1);
    still_serves(&mut h);
}

#[test]
fn header_length_disagreeing_with_the_chain_gets_einval() {
    let mut h = harness();
    // Longer than what the chain carries, shorter than a header, absurd.
    for len in [HDR as u32 + 200, 8, u32::MAX] {
        let req = raw_request(len, Opcode::Lookup as u32, 9, ROOT, &lookup_args());
        let used = h.send(&[Part::In(req), Part::Out(4096)]);
        assert_error(&used, 9, libc::EINVAL);
    }
    assert_eq!(h.dev().stats().refused, 3);
    still_serves(&mut h);
}

#[test]
fn unknown_opcode_gets_enosys() {
    let mut h = harness();
    let req = raw_request(HDR as u32, 9999, 11, ROOT, &[]);
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert_error(&used, 11, libc::ENOSYS);
    still_serves(&mut h);
}

#[test]
fn reply_that_does_not_fit_gets_eio_or_nothing() {
    let mut h = harness();
    // Room for a header but not for the attributes.
    let args = GetattrIn::default();
    let req = raw_request(
        (HDR + 16) as u32,
        Opcode::Getattr as u32,
        13,
        ROOT,
        args.as_slice(),
    );
    let used = h.send(&[Part::In(req.clone()), Part::Out(OUT)]);
    assert_error(&used, 13, libc::EIO);
    // Not even room for a header: returned unanswered, nothing written.
    let used = h.send(&[Part::In(req.clone()), Part::Out(8)]);
    assert_eq!(used.len, 0);
    // No writable descriptor at all.
    let used = h.send(&[Part::In(req)]);
    assert_eq!(used.len, 0);
    still_serves(&mut h);
}

#[test]
fn arguments_shorter_than_the_opcode_needs_get_an_error() {
    let mut h = harness();
    // Half a CreateIn.
    let args = CreateIn::default();
    let half = &args.as_slice()[..8];
    let req = raw_request((HDR + 8) as u32, Opcode::Create as u32, 15, ROOT, half);
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert_error(&used, 15, libc::EIO);
    // A name without its NUL terminator (the server answers EINVAL, we make it EIO).
    let req = raw_request((HDR + 4) as u32, Opcode::Lookup as u32, 17, ROOT, b"file");
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert_eq!(used.len, OUT);
    let out = OutHeader::from_slice(&used.data[..OUT as usize])
        .copied()
        .unwrap();
    assert_eq!(out.unique, 17);
    assert!(
        out.error == -libc::EINVAL || out.error == -libc::EIO,
        "{out:?}"
    );
    assert!(!h.shared().join("file\u{a5}").exists());
    still_serves(&mut h);
}

#[test]
fn oversized_sizes_are_refused() {
    let mut h = harness();
    let mut args = GetxattrIn {
        size: 1 << 31,
        padding: 0,
    }
    .as_slice()
    .to_vec();
    args.extend_from_slice(b"user.x\0");
    let req = raw_request(
        (HDR + args.len()) as u32,
        Opcode::Getxattr as u32,
        19,
        ROOT,
        &args,
    );
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert_error(&used, 19, libc::E2BIG);

    // A READ asking for 4 GiB into a 4 KiB buffer.
    let mut c = h.client();
    let node = c.lookup(ROOT, "file").unwrap().nodeid;
    let fh = c.open(node, libc::O_RDONLY).unwrap();
    let read = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let req = raw_request(
        (HDR + size_of::<ReadIn>()) as u32,
        Opcode::Read as u32,
        21,
        node,
        read.as_slice(),
    );
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert_eq!(used.len, OUT);
    let out = OutHeader::from_slice(&used.data[..OUT as usize])
        .copied()
        .unwrap();
    assert!(out.error < 0 && out.unique == 21, "{out:?}");
    still_serves(&mut h);
}

#[test]
fn descriptors_outside_guest_memory_are_dropped() {
    let mut h = harness();
    let req = raw_request(
        (HDR + 5) as u32,
        Opcode::Lookup as u32,
        23,
        ROOT,
        &lookup_args(),
    );
    let good = h.put(REQUEST_QUEUE, &req);
    let reply = h.put(REQUEST_QUEUE, &[0u8; 256]);
    let cases: [(u64, u32, u64, u32); 4] = [
        (MEM_SIZE + 0x1000, req.len() as u32, reply, 256), // request beyond memory
        (MEM_SIZE - 8, req.len() as u32, reply, 256),      // request straddling the end
        (good, req.len() as u32, MEM_SIZE, 256),           // reply beyond memory
        (good, u32::MAX, reply, 256),                      // 4 GiB request
    ];
    for (i, (in_addr, in_len, out_addr, out_len)) in cases.into_iter().enumerate() {
        let head = 10 + 2 * i as u16;
        h.add_raw(
            REQUEST_QUEUE,
            &[
                (head, in_addr, in_len, VRING_DESC_F_NEXT, head + 1),
                (head + 1, out_addr, out_len, VRING_DESC_F_WRITE, 0),
            ],
            head,
        );
        h.kick(REQUEST_QUEUE);
        let used = h.wait_used(REQUEST_QUEUE, 1);
        assert_eq!(used[0].1.len, 0, "case {i}");
    }
    assert_eq!(h.dev().stats().dropped, 4);
    still_serves(&mut h);
}

#[test]
fn looping_chain_ends() {
    let mut h = harness();
    let req = raw_request(
        (HDR + 5) as u32,
        Opcode::Lookup as u32,
        25,
        ROOT,
        &lookup_args(),
    );
    let addr = h.put(REQUEST_QUEUE, &req);
    // Descriptor 40 points at itself; 41 -> 42 -> 41 loops through a writable pair.
    h.add_raw(
        REQUEST_QUEUE,
        &[(40, addr, req.len() as u32, VRING_DESC_F_NEXT, 40)],
        40,
    );
    h.kick(REQUEST_QUEUE);
    assert_eq!(h.wait_used(REQUEST_QUEUE, 1).len(), 1);
    let out = h.put(REQUEST_QUEUE, &[0u8; 64]);
    h.add_raw(
        REQUEST_QUEUE,
        &[
            (41, addr, req.len() as u32, VRING_DESC_F_NEXT, 42),
            (42, out, 64, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 41),
        ],
        41,
    );
    h.kick(REQUEST_QUEUE);
    assert_eq!(h.wait_used(REQUEST_QUEUE, 1).len(), 1);
    still_serves(&mut h);
}

#[test]
fn a_broken_available_ring_stalls_only_its_queue() {
    let mut h = harness();
    let before = h.dev().stats();
    // An index far ahead of what the queue can hold.
    h.set_avail_idx(REQUEST_QUEUE, 1000);
    h.kick(REQUEST_QUEUE);
    for _ in 0..5 {
        h.manager.run_with_timeout(10).unwrap();
    }
    assert_eq!(h.dev().stats(), before, "nothing served from a broken ring");
    // The high-priority queue still works.
    let forget = raw_request(
        (HDR + 8) as u32,
        Opcode::Forget as u32,
        27,
        ROOT,
        &1u64.to_le_bytes(),
    );
    assert_eq!(h.send_on(super::HIPRIO, &[Part::In(forget)]).len, 0);
}

/// Sends one raw request (header + `args`) with room for a reply; returns the errno of the
/// answer (0: success).
fn raw_errno(h: &mut Harness, opcode: Opcode, unique: u64, nodeid: u64, args: &[u8]) -> i32 {
    let req = raw_request(
        (HDR + args.len()) as u32,
        opcode as u32,
        unique,
        nodeid,
        args,
    );
    let used = h.send(&[Part::In(req), Part::Out(4096)]);
    assert!(used.len >= OUT, "{opcode:?}: answered ({used:?})");
    let out = OutHeader::from_slice(&used.data[..OUT as usize])
        .copied()
        .unwrap();
    assert_eq!((out.unique, out.len), (unique, used.len), "{opcode:?}");
    -out.error
}

/// No device node, and no setuid/setgid file (setgid directories are allowed), under `dir`.
pub(super) fn assert_no_devices_or_setuid(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let t = meta.file_type();
        assert!(
            !t.is_char_device() && !t.is_block_device(),
            "device node {}",
            entry.path().display()
        );
        if t.is_dir() {
            assert_eq!(meta.mode() & libc::S_ISUID, 0, "{}", entry.path().display());
            assert_no_devices_or_setuid(&entry.path());
        } else {
            assert_eq!(
                meta.mode() & (libc::S_ISUID | libc::S_ISGID),
                0,
                "{} mode {:o}",
                entry.path().display(),
                meta.mode()
            );
        }
    }
}

fn with_name(args: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = args.to_vec();
    v.extend_from_slice(name);
    v
}

#[test]
fn hostile_fields_of_policed_requests_are_bounded() {
    let mut h = Harness::with_xattr(true);
    std::fs::write(h.shared().join("file"), b"data").unwrap();
    h.activate();
    h.client().init();
    let shared = h.shared();
    let mknod = |mode: u32, rdev: u32, umask: u32| {
        MknodIn {
            mode,
            rdev,
            umask,
            padding: 0,
        }
        .as_slice()
        .to_vec()
    };
    // Half a MknodIn; a device without the name's NUL; every bit set; a FIFO whose
    // "umask" would clear its file type bits.
    let half = &mknod(libc::S_IFCHR | 0o666, 0x103, 0)[..8];
    assert_eq!(raw_errno(&mut h, Opcode::Mknod, 31, ROOT, half), libc::EIO);
    let chr = mknod(libc::S_IFCHR | 0o666, 0x103, 0);
    assert_ne!(
        raw_errno(&mut h, Opcode::Mknod, 32, ROOT, &with_name(&chr, b"dev")),
        0
    );
    let all = mknod(u32::MAX, u32::MAX, u32::MAX);
    assert_eq!(
        raw_errno(&mut h, Opcode::Mknod, 33, ROOT, &with_name(&all, b"all\0")),
        libc::EINVAL
    );
    let masked = mknod(libc::S_IFIFO | 0o644, 0, u32::MAX);
    assert_eq!(
        raw_errno(
            &mut h,
            Opcode::Mknod,
            34,
            ROOT,
            &with_name(&masked, b"fifo\0")
        ),
        0
    );
    assert!(std::fs::symlink_metadata(shared.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // MKDIR and CREATE with every mode and umask bit set.
    let mkdir = MkdirIn {
        mode: u32::MAX,
        umask: u32::MAX,
    };
    raw_errno(
        &mut h,
        Opcode::Mkdir,
        35,
        ROOT,
        &with_name(mkdir.as_slice(), b"d\0"),
    );
    let create = CreateIn {
        flags: libc::O_WRONLY as u32,
        mode: u32::MAX,
        umask: 0,
        fuse_flags: u32::MAX,
    };
    raw_errno(
        &mut h,
        Opcode::Create,
        36,
        ROOT,
        &with_name(create.as_slice(), b"c\0"),
    );
    // SETATTR: every mode bit; every valid bit (with a handle that does not exist).
    let file = h.client().lookup(ROOT, "file").unwrap().nodeid;
    let chmod = SetattrIn {
        valid: 1,
        mode: u32::MAX,
        ..Default::default()
    };
    assert_eq!(
        raw_errno(&mut h, Opcode::Setattr, 37, file, chmod.as_slice()),
        0
    );
    let everything = SetattrIn {
        valid: u32::MAX,
        fh: u64::MAX,
        size: u64::MAX,
        mode: u32::MAX,
        uid: u32::MAX,
        gid: u32::MAX,
        atimensec: u32::MAX,
        mtimensec: u32::MAX,
        ..Default::default()
    };
    assert_ne!(
        raw_errno(&mut h, Opcode::Setattr, 38, file, everything.as_slice()),
        0
    );
    // RENAME2 with every flag (RENAME_WHITEOUT among them).
    let rename = Rename2In {
        newdir: ROOT,
        flags: u32::MAX,
        padding: 0,
    };
    let args = with_name(rename.as_slice(), b"file\0moved\0");
    assert_eq!(
        raw_errno(&mut h, Opcode::Rename2, 39, ROOT, &args),
        libc::EPERM
    );
    // SETXATTR of file capabilities: a size that disagrees with the value, no NUL after the
    // name, and a well-formed one.
    let value = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let xattr = |size: u32| SetxattrIn { size, flags: 0 }.as_slice().to_vec();
    let named = |size: u32| with_name(&with_name(&xattr(size), b"security.capability\0"), &value);
    assert_eq!(
        raw_errno(&mut h, Opcode::Setxattr, 40, file, &named(u32::MAX)),
        libc::EIO
    );
    let no_nul = with_name(&xattr(20), b"security.capability");
    assert_ne!(raw_errno(&mut h, Opcode::Setxattr, 41, file, &no_nul), 0);
    assert_eq!(
        raw_errno(&mut h, Opcode::Setxattr, 42, file, &named(20)),
        libc::EPERM
    );
    // FALLOCATE on a handle that does not exist.
    let fallocate = FallocateIn {
        fh: 12345,
        offset: 0,
        length: u64::MAX,
        mode: u32::MAX,
        padding: 0,
    };
    assert_ne!(
        raw_errno(&mut h, Opcode::Fallocate, 43, file, fallocate.as_slice()),
        0
    );

    assert!(!shared.join("dev").exists() && !shared.join("all").exists());
    assert!(shared.join("file").exists() && !shared.join("moved").exists());
    assert_eq!(std::fs::metadata(shared.join("file")).unwrap().len(), 4);
    assert_no_devices_or_setuid(&shared);
    still_serves(&mut h);
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sends `rounds` random requests (seeded) and checks each comes back with at most the room
/// it had and, if answered, an answer to itself. Returns how many chains were sent.
pub(super) fn random_requests(h: &mut Harness, seed: u64, rounds: u64) -> u64 {
    let mut rng = Rng(seed);
    for i in 0..rounds {
        let mut opcode = 1 + rng.below(50) as u32;
        if opcode == Opcode::Fallocate as u32 {
            // Could reserve real disk space on the host; covered by the well-formed tests.
            opcode = Opcode::Getattr as u32;
        }
        let nodeid = match rng.below(4) {
            0 => rng.next(),
            n => n,
        };
        let mut body: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            // Often a short printable name, so path operations get past decoding.
            let name: Vec<u8> = (0..1 + rng.below(8))
                .map(|_| b'a' + rng.below(26) as u8)
                .collect();
            let at = body.len().min(rng.below(40) as usize);
            body.truncate(at);
            body.extend_from_slice(&name);
            body.push(0);
        }
        let len = match rng.below(8) {
            0 => rng.next() as u32,
            _ => (HDR + body.len()) as u32,
        };
        let req = raw_request(len, opcode, i, nodeid, &body);
        let split = 1 + rng.below(req.len() as u64 - 1) as usize;
        let mut parts = vec![Part::In(req[..split].to_vec())];
        if split < req.len() {
            parts.push(Part::In(req[split..].to_vec()));
        }
        let room = rng.below(600) as u32;
        if room > 0 {
            parts.push(Part::Out(room));
        }
        let used = h.send(&parts);
        assert!(used.len <= room, "request {i}: used {} of {room}", used.len);
        if used.len >= OUT {
            let out = OutHeader::from_slice(&used.data[..OUT as usize])
                .copied()
                .unwrap();
            assert_eq!(out.unique, i, "request {i} (opcode {opcode})");
            assert_eq!(out.len, used.len, "request {i} (opcode {opcode})");
        }
    }
    rounds
}

#[test]
fn random_requests_never_wedge_the_device() {
    let mut h = harness();
    let sent = random_requests(&mut h, 0x5eed_f00d_1234_5678, 1500);
    let stats = h.dev().stats();
    eprintln!("random requests: {stats:?}");
    // + the harness's INIT.
    assert_eq!(
        stats.served + stats.refused + stats.dropped,
        sent + 1,
        "{stats:?}"
    );
    // Random MKNOD, SETATTR, RENAME2, ... made nothing the policy forbids.
    assert_no_devices_or_setuid(&h.shared());
    still_serves(&mut h);
}
