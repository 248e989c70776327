//! FUSE requests into the virtio-fs device on mock guest memory, served by the real backend
//! over a real shared directory: every opcode (well-formed arguments, hostile ones, raw
//! opcodes), header lengths that disagree with the chain, arguments and replies split over
//! descriptors, too-small reply buffers, raw descriptor chains, ring indices gone wrong,
//! device resets (new FUSE sessions) and both queues. Node ids and file handles from replies
//! feed later requests, so sessions go deep.
//!
//! The share holds a file, a directory, a FIFO and symlinks that point outside it (relative,
//! absolute, to a directory); beside the share lies `outside/canary`.
//!
//! Checks beyond "no panic" (and no hang: a FIFO opened for real would block): nothing
//! outside the share changes; while the driver is trusted, every reply answers its request
//! (`unique`), its header length is the used length, which fits the buffers given, and an
//! error reply is a bare header with an errno in range.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use fuse_backend_rs::abi::fuse_abi as abi;
use std::mem::size_of;
use vm_memory::{Bytes, GuestAddress};

use super::driver::{DriverQueue, Part};
use super::input::Input;
use super::{guest_memory, lock};
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};
use crate::devices::virtio::fs::{Fs, HIPRIO_QUEUE, NUM_QUEUES, REQUEST_QUEUE};
use tree::Tree;

mod seeds;
#[cfg(test)]
mod tests;
mod tree;

pub use seeds::{enc, seeds};

const MEM_SIZE: usize = 8 << 20;
const QSIZE: u16 = 256;
const DATA_BASE: u64 = 0x10_0000;
const MAX_OPS: usize = 256;
const IN_HEADER: usize = size_of::<abi::InHeader>();
const OUT_HEADER: usize = size_of::<abi::OutHeader>();
const CANARY: &[u8] = b"outside the share: must never change\n";
/// Requests never ask the host for more than this much disk (FALLOCATE lengths are cut).
const MAX_ALLOCATE: u64 = 1 << 20;

pub mod op {
    pub const REQUEST: u8 = 0;
    pub const HIPRIO: u8 = 1;
    pub const RAW_CHAIN: u8 = 2;
    pub const KICK: u8 = 3;
    pub const RESET: u8 = 4;
    pub const AVAIL_IDX: u8 = 5;
    pub const MEM_WRITE: u8 = 6;
    pub const INIT: u8 = 7;
    pub const COUNT: u8 = 8;
}

/// Opcodes of the structured requests and the layout of their arguments: fixed-size struct
/// bytes, names, extra data; where a file handle and a node id sit in the struct.
struct Layout {
    opcode: u32,
    fixed: usize,
    names: usize,
    data: bool,
    fh_at: Option<usize>,
    node_at: Option<usize>,
}

const fn l(opcode: u32, fixed: usize, names: usize) -> Layout {
    Layout {
        opcode,
        fixed,
        names,
        data: false,
        fh_at: None,
        node_at: None,
    }
}

const fn fh(mut x: Layout, at: usize) -> Layout {
    x.fh_at = Some(at);
    x
}

const fn node(mut x: Layout, at: usize) -> Layout {
    x.node_at = Some(at);
    x
}

const fn data(mut x: Layout) -> Layout {
    x.data = true;
    x
}

use abi::Opcode as O;
const LAYOUTS: &[Layout] = &[
    l(O::Lookup as u32, 0, 1),
    l(O::Forget as u32, size_of::<abi::ForgetIn>(), 0),
    fh(l(O::Getattr as u32, size_of::<abi::GetattrIn>(), 0), 8),
    fh(l(O::Setattr as u32, size_of::<abi::SetattrIn>(), 0), 8),
    l(O::Readlink as u32, 0, 0),
    l(O::Symlink as u32, 0, 2),
    l(O::Mknod as u32, size_of::<abi::MknodIn>(), 1),
    l(O::Mkdir as u32, size_of::<abi::MkdirIn>(), 1),
    l(O::Unlink as u32, 0, 1),
    l(O::Rmdir as u32, 0, 1),
    node(l(O::Rename as u32, size_of::<abi::RenameIn>(), 2), 0),
    node(l(O::Link as u32, size_of::<abi::LinkIn>(), 1), 0),
    l(O::Open as u32, size_of::<abi::OpenIn>(), 0),
    fh(l(O::Read as u32, size_of::<abi::ReadIn>(), 0), 0),
    data(fh(l(O::Write as u32, size_of::<abi::WriteIn>(), 0), 0)),
    l(O::Statfs as u32, 0, 0),
    fh(l(O::Release as u32, size_of::<abi::ReleaseIn>(), 0), 0),
    fh(l(O::Fsync as u32, size_of::<abi::FsyncIn>(), 0), 0),
    data(l(O::Setxattr as u32, size_of::<abi::SetxattrIn>(), 1)),
    l(O::Getxattr as u32, size_of::<abi::GetxattrIn>(), 1),
    l(O::Listxattr as u32, size_of::<abi::GetxattrIn>(), 0),
    l(O::Removexattr as u32, 0, 1),
    fh(l(O::Flush as u32, size_of::<abi::FlushIn>(), 0), 0),
    l(O::Opendir as u32, size_of::<abi::OpenIn>(), 0),
    fh(l(O::Readdir as u32, size_of::<abi::ReadIn>(), 0), 0),
    fh(l(O::Releasedir as u32, size_of::<abi::ReleaseIn>(), 0), 0),
    fh(l(O::Fsyncdir as u32, size_of::<abi::FsyncIn>(), 0), 0),
    fh(l(O::Getlk as u32, size_of::<abi::LkIn>(), 0), 0),
    fh(l(O::Setlk as u32, size_of::<abi::LkIn>(), 0), 0),
    l(O::Access as u32, size_of::<abi::AccessIn>(), 0),
    l(O::Create as u32, size_of::<abi::CreateIn>(), 1),
    l(O::Interrupt as u32, size_of::<abi::InterruptIn>(), 0),
    l(O::Bmap as u32, size_of::<abi::BmapIn>(), 0),
    l(O::Destroy as u32, 0, 0),
    data(fh(l(O::Ioctl as u32, size_of::<abi::IoctlIn>(), 0), 0)),
    fh(l(O::Poll as u32, size_of::<abi::PollIn>(), 0), 0),
    data(l(O::BatchForget as u32, size_of::<abi::BatchForgetIn>(), 0)),
    fh(l(O::Fallocate as u32, size_of::<abi::FallocateIn>(), 0), 0),
    fh(l(O::Readdirplus as u32, size_of::<abi::ReadIn>(), 0), 0),
    node(l(O::Rename2 as u32, size_of::<abi::Rename2In>(), 2), 0),
    fh(l(O::Lseek as u32, size_of::<abi::LseekIn>(), 0), 0),
    node(
        fh(
            l(
                O::CopyFileRange as u32,
                size_of::<abi::CopyFileRangeIn>(),
                0,
            ),
            0,
        ),
        16,
    ),
    data(l(O::SetupMapping as u32, 0, 0)),
    data(l(O::RemoveMapping as u32, 0, 0)),
    l(50, 0, 0),
    l(51, 0, 1),
];

/// Names the requests use (indices are part of the seed format: append only).
const NAMES: &[&str] = &[
    "file",
    "dir",
    "link-out",
    "abs-link",
    "link-dir",
    "fifo",
    "new",
    "new2",
    "..",
    ".",
    "",
    "a/b",
    "../outside",
    "canary",
    "inner",
];

/// What a run did (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Replies by errno (0 = success), for the requests the driver could check.
    pub ok_replies: u32,
    pub error_replies: u32,
    /// Node ids and file handles learnt from replies.
    pub nodes: usize,
    pub handles: usize,
}

struct Run {
    mem: GuestMemory,
    fs: Arc<Mutex<Fs>>,
    em: EventManager<Arc<Mutex<Fs>>>,
    queues: Vec<DriverQueue>,
    unique: u64,
    nodes: Vec<u64>,
    handles: Vec<u64>,
    /// The last replies the driver checked: (unique, errno, payload).
    replies: Vec<(u64, i32, Vec<u8>)>,
    summary: Summary,
    tree: Tree,
}

fn driver_queues() -> Vec<DriverQueue> {
    let data_len = (MEM_SIZE as u64 - DATA_BASE) / NUM_QUEUES as u64;
    (0..NUM_QUEUES)
        .map(|q| {
            let base = 0x1_0000 * (q as u64 + 1);
            DriverQueue::new(
                base,
                base + 0x1000,
                base + 0x2000,
                QSIZE,
                DATA_BASE + q as u64 * data_len,
                data_len,
            )
        })
        .collect()
}

impl Run {
    fn new(xattr: bool) -> Self {
        let tree = Tree::new();
        let mem = guest_memory(MEM_SIZE);
        let fs = Arc::new(Mutex::new(
            Fs::new("vessel", &tree.shared(), xattr).expect("virtio-fs device"),
        ));
        let mut em = EventManager::<Arc<Mutex<Fs>>>::new().expect("event manager");
        em.add_subscriber(fs.clone());
        let mut run = Self {
            mem,
            fs,
            em,
            queues: driver_queues(),
            unique: 0,
            nodes: vec![1],
            handles: Vec::new(),
            replies: Vec::new(),
            summary: Summary::default(),
            tree,
        };
        run.activate();
        run
    }

    fn activate(&mut self) {
        {
            let mut fs = lock(&self.fs);
            for (q, dq) in self.queues.iter().enumerate() {
                let queue = &mut fs.queues_mut()[q];
                virtio_queue::QueueT::reset(queue);
                dq.configure(queue);
            }
            fs.set_acked_features(1 << 32);
            fs.activate(self.mem.clone()).expect("virtio-fs activation");
        }
        self.run_loop();
    }

    fn reset(&mut self) {
        let ok = lock(&self.fs).reset();
        assert!(ok, "virtio-fs can always be reset");
        // The driver clears its rings before it sets them up again.
        for dq in &self.queues {
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(dq.desc))
                .expect("rings");
        }
        self.queues = driver_queues();
        self.nodes = vec![1];
        self.handles.clear();
        self.activate();
    }

    fn run_loop(&mut self) {
        // A round serves at most 64 chains per queue and re-signals for the rest.
        for _ in 0..8 {
            if self.em.run_with_timeout(0).expect("event loop") == 0 {
                break;
            }
        }
        self.check_used();
    }

    fn kick(&self, q: usize) {
        lock(&self.fs).queue_events()[q].write(1).expect("notify");
    }

    fn check_used(&mut self) {
        for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            let trusted = self.queues[q].trusted;
            for u in self.queues[q].harvest(&self.mem) {
                let Some(chain) = &u.chain else { continue };
                if u.len == 0 {
                    continue;
                }
                let reply = chain.written(&self.mem, u.len);
                if !trusted || chain.tag & (1 << 31) != 0 {
                    continue;
                }
                assert!(reply.len() >= OUT_HEADER, "reply of {} bytes", u.len);
                let mut i = Input::new(&reply);
                let (len, error, unique) = (i.u32(), i.u32() as i32, i.u64());
                assert_eq!(len, u.len, "reply header length vs used length");
                let (want_unique, opcode) = (chain.tag & 0x7fff_ffff, chain.tag >> 32);
                assert_eq!(
                    unique & 0x7fff_ffff,
                    want_unique,
                    "reply to another request"
                );
                assert!((-4095..=0).contains(&error), "errno {error}");
                if super::tracing() {
                    eprintln!("virtio_fs: #{unique} -> error {error}, {len} bytes");
                }
                if self.replies.len() >= 16 {
                    self.replies.remove(0);
                }
                self.replies
                    .push((unique, error, reply[OUT_HEADER..].to_vec()));
                if error != 0 {
                    assert_eq!(len as usize, OUT_HEADER, "error reply with a payload");
                    self.summary.error_replies += 1;
                    continue;
                }
                self.summary.ok_replies += 1;
                self.learn(opcode as u32, &reply[OUT_HEADER..]);
            }
        }
    }

    /// Remembers node ids and handles from a successful reply.
    fn learn(&mut self, opcode: u32, payload: &[u8]) {
        let mut i = Input::new(payload);
        let entry = [
            O::Lookup as u32,
            O::Mkdir as u32,
            O::Mknod as u32,
            O::Symlink as u32,
            O::Link as u32,
            O::Create as u32,
        ];
        if entry.contains(&opcode) && payload.len() >= size_of::<abi::EntryOut>() {
            let node = i.u64();
            if node != 0 && !self.nodes.contains(&node) && self.nodes.len() < 32 {
                self.nodes.push(node);
                self.summary.nodes += 1;
            }
        }
        let open_at = match opcode {
            x if x == O::Open as u32 || x == O::Opendir as u32 => Some(0),
            x if x == O::Create as u32 => Some(size_of::<abi::EntryOut>()),
            _ => None,
        };
        if let Some(at) = open_at {
            if payload.len() >= at + size_of::<abi::OpenOut>() {
                let fh = Input::new(&payload[at..]).u64();
                if !self.handles.contains(&fh) && self.handles.len() < 32 {
                    self.handles.push(fh);
                    self.summary.handles += 1;
                }
            }
        }
    }

    fn name(&self, i: &mut Input<'_>) -> Vec<u8> {
        match i.u8() {
            b @ 0..=199 => {
                let mut v = NAMES[usize::from(b) % NAMES.len()].as_bytes().to_vec();
                v.push(0);
                v
            }
            200..=219 => {
                let mut v = vec![b'n'; 300];
                v.push(0);
                v
            }
            220..=239 => {
                let mut v = self.tree.canary().into_os_string().into_encoded_bytes();
                v.push(0);
                v
            }
            _ => {
                // Raw, maybe without its NUL.
                let n = i.below(32);
                i.bytes(n).to_vec()
            }
        }
    }

    fn pick<T: Copy>(list: &[T], i: &mut Input<'_>, raw: impl FnOnce(&mut Input<'_>) -> T) -> T {
        let b = i.u8();
        if b < 224 && !list.is_empty() {
            list[usize::from(b) % list.len()]
        } else {
            raw(i)
        }
    }

    /// A structured request on queue `q`.
    fn request(&mut self, q: usize, i: &mut Input<'_>) {
        let layout = &LAYOUTS[i.below(LAYOUTS.len())];
        let sel = i.u8();
        let nodeid = Self::pick(&self.nodes, i, |i| i.u64());
        let (uid, gid) = match i.below(4) {
            0 => (0, 0),
            1 => (1000, 1000),
            2 => (65534, 65534),
            _ => (i.u32(), i.u32()),
        };
        let mut args = i.bytes(layout.fixed).to_vec();
        args.resize(layout.fixed, 0);
        if sel & 1 != 0 {
            if let Some(at) = layout.fh_at {
                let fh = Self::pick(&self.handles, i, |i| i.u64());
                args[at..at + 8].copy_from_slice(&fh.to_le_bytes());
            }
        }
        if sel & 2 != 0 {
            if let Some(at) = layout.node_at {
                let n = Self::pick(&self.nodes, i, |i| i.u64());
                args[at..at + 8].copy_from_slice(&n.to_le_bytes());
            }
        }
        if layout.opcode == O::Fallocate as u32 {
            // FALLOCATE really allocates: keep the host's disk out of it.
            let len = Input::new(&args[16..24]).u64() % MAX_ALLOCATE;
            args[16..24].copy_from_slice(&len.to_le_bytes());
        }
        for _ in 0..layout.names {
            let n = self.name(i);
            args.extend_from_slice(&n);
        }
        let mut data = Vec::new();
        if layout.data {
            let n = usize::from(i.u16()) % 8192;
            let fill = i.u8();
            data = i.bytes(n.min(64)).to_vec();
            data.resize(n, fill);
        }
        let opcode = if sel & 4 != 0 { i.u32() } else { layout.opcode };
        self.send(q, opcode, nodeid, uid, gid, &args, &data, sel, i);
    }

    /// Lays out and sends one request.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        q: usize,
        opcode: u32,
        nodeid: u64,
        uid: u32,
        gid: u32,
        args: &[u8],
        data: &[u8],
        sel: u8,
        i: &mut Input<'_>,
    ) {
        self.unique += 1;
        let unique = self.unique;
        if super::tracing() {
            eprintln!(
                "virtio_fs: q{q} #{unique} opcode {opcode} node {nodeid} uid {uid} args {args:02x?} data {}",
                data.len()
            );
        }
        let total = IN_HEADER + args.len() + data.len();
        let len = if sel & 8 != 0 { i.u32() } else { total as u32 };
        let mut first = Vec::with_capacity(IN_HEADER + args.len());
        for v in [len, opcode] {
            first.extend_from_slice(&v.to_le_bytes());
        }
        first.extend_from_slice(&unique.to_le_bytes());
        first.extend_from_slice(&nodeid.to_le_bytes());
        for v in [uid, gid, 42, 0] {
            first.extend_from_slice(&v.to_le_bytes());
        }
        first.extend_from_slice(args);
        let reply = match i.below(5) {
            0 => OUT_HEADER as u32,
            1 => (OUT_HEADER + size_of::<abi::EntryOut>() + size_of::<abi::OpenOut>()) as u32,
            2 => 4096,
            3 => 0,
            _ => u32::from(i.u16()) % 16384,
        };
        // Readable bytes in up to three pieces, then the data, then the reply in up to two.
        let mut parts = Vec::new();
        let cuts = if sel & 16 != 0 {
            let mut c = [usize::from(i.u16()), usize::from(i.u16())].map(|c| c % (first.len() + 1));
            c.sort_unstable();
            c.to_vec()
        } else {
            Vec::new()
        };
        let mut start = 0;
        for end in cuts.into_iter().chain([first.len()]) {
            parts.push(Part {
                bytes: Some(&first[start..end]),
                len: (end - start) as u32,
                writable: false,
            });
            start = end;
        }
        if !data.is_empty() {
            parts.push(Part {
                bytes: Some(data),
                len: data.len() as u32,
                writable: false,
            });
        }
        if reply > 0 {
            let split = sel & 32 != 0 && reply > 1;
            let a = if split { reply / 3 } else { reply };
            parts.push(Part {
                bytes: None,
                len: a,
                writable: true,
            });
            if split {
                parts.push(Part {
                    bytes: None,
                    len: reply - a,
                    writable: true,
                });
            }
        }
        // A hostile length or a reply that cannot hold a header: the device may answer it
        // in ways the driver does not check.
        let unchecked = sel & 8 != 0 || reply < OUT_HEADER as u32;
        let tag = (u64::from(opcode) << 32) | (unique & 0x7fff_ffff) | (u64::from(unchecked) << 31);
        self.queues[q].add_chain(&self.mem, &parts, tag);
        self.kick(q);
    }

    fn init(&mut self, i: &mut Input<'_>) {
        let minor = match i.below(4) {
            0 => 36,
            1 => 31,
            2 => 27,
            _ => i.u32(),
        };
        let flags = if i.u8() & 1 == 0 {
            0x3fff_ffff
        } else {
            i.u32()
        };
        let mut args = Vec::new();
        for v in [7, minor, 128 * 1024, flags] {
            args.extend_from_slice(&v.to_le_bytes());
        }
        self.send(
            REQUEST_QUEUE,
            O::Init as u32,
            0,
            0,
            0,
            &args,
            &[],
            0,
            &mut Input::new(&[1]),
        );
    }

    fn raw_chain(&mut self, i: &mut Input<'_>) {
        let n = 1 + i.below(4);
        let q = if i.u8() & 1 == 0 {
            REQUEST_QUEUE
        } else {
            HIPRIO_QUEUE
        };
        let mut descs = Vec::new();
        for _ in 0..n {
            let idx = i.u16() % QSIZE;
            let addr = match i.below(3) {
                0 => DATA_BASE + u64::from(i.u16()),
                1 => u64::from(i.u32()),
                _ => i.u64(),
            };
            let len = match i.below(3) {
                0 => IN_HEADER as u32,
                1 => u32::from(i.u16()),
                _ => i.u32(),
            };
            descs.push((idx, addr, len, u16::from(i.u8() % 8), i.u16()));
        }
        let head = descs[0].0;
        self.queues[q].add_raw(&self.mem, &descs, head);
        self.kick(q);
    }

    fn op(&mut self, i: &mut Input<'_>) {
        match i.u8() % op::COUNT {
            op::REQUEST => self.request(REQUEST_QUEUE, i),
            op::HIPRIO => self.request(HIPRIO_QUEUE, i),
            op::RAW_CHAIN => self.raw_chain(i),
            op::KICK => {
                let q = i.below(NUM_QUEUES);
                self.kick(q);
            }
            op::RESET => {
                if super::tracing() {
                    eprintln!("virtio_fs: device reset");
                }
                self.reset()
            }
            op::AVAIL_IDX => {
                let q = i.below(NUM_QUEUES);
                let v = i.u16();
                self.queues[q].set_avail_idx(&self.mem, v);
                self.kick(q);
            }
            op::MEM_WRITE => {
                let addr = u64::from(i.u32()) % MEM_SIZE as u64;
                let n = i.below(64);
                let _ = self.mem.write_slice(i.bytes(n), GuestAddress(addr));
                self.queues.iter_mut().for_each(|q| q.trusted = false);
            }
            _ => self.init(i),
        }
        self.run_loop();
    }
}

/// Runs one program (any bytes). The first byte: bit 0 turns xattr support on.
pub fn run(data: &[u8]) -> Summary {
    let mut i = Input::new(data);
    let mut run = Run::new(i.u8() & 1 == 1);
    let mut ops = 0;
    while !i.is_empty() && ops < MAX_OPS {
        run.op(&mut i);
        ops += 1;
        if ops % 16 == 0 {
            run.tree.check();
        }
    }
    run.run_loop();
    run.tree.check();
    run.summary
}
