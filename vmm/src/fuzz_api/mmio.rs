//! The virtio-mmio register interface of a real device (vsock or virtio-fs, picked by the
//! first byte) on mock guest memory: reads and writes at any offset and width, feature
//! negotiation, queue setup, status transitions, notifies, interrupt acks, resets, guest
//! memory writes (rings the device then reads) and event-loop rounds.
//!
//! Checks beyond "no panic": reads of the identification registers always answer the same;
//! the status never holds bits the driver may not set; and every state the guest can reach is
//! one a snapshot can restore: `save_state` restored into a fresh device and transport
//! succeeds and saves back the same.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::input::{Enc, Input};
use super::{guest_memory, lock, ScratchDir};
use crate::devices::bus::BusDevice;
use crate::devices::virtio::device::{GuestMemory, VirtioDevice};
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::*;
use crate::devices::virtio::vsock::Vsock;

const MEM_SIZE: usize = 1 << 20;
const MAX_OPS: usize = 512;
/// Registers the ops pick from (plus the config space).
const REGS: [u64; 26] = [
    REG_MAGIC,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_VENDOR_ID,
    REG_DEVICE_FEATURES,
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM_MAX,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_STATUS,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_AVAIL_LOW,
    REG_QUEUE_AVAIL_HIGH,
    REG_QUEUE_USED_LOW,
    REG_QUEUE_USED_HIGH,
    REG_CONFIG_GENERATION,
    CONFIG_SPACE_OFFSET,
    CONFIG_SPACE_OFFSET + 4,
    CONFIG_SPACE_OFFSET + 36,
];
const STATUS_BITS: [u32; 6] = [
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_FEATURES_OK,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_NEEDS_RESET,
];

pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const WRITE_REG: u8 = 2;
    pub const NEGOTIATE: u8 = 3;
    pub const QUEUE: u8 = 4;
    pub const DRIVER_OK: u8 = 5;
    pub const MEM_WRITE: u8 = 6;
    pub const RUN: u8 = 7;
    pub const SNAPSHOT: u8 = 8;
    pub const NOTIFY: u8 = 9;
    pub const RESET: u8 = 10;
    pub const ACK_IRQ: u8 = 11;
    pub const COUNT: u8 = 12;
}

/// What a run reached (for tests of the harness and the seeds).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub device_type: u32,
    /// The device was activated at some point.
    pub activated: bool,
    /// Snapshot round trips done (not blocked).
    pub snapshots: u32,
}

/// A device kind the target can put behind the transport.
trait Kind: VirtioDevice + MutEventSubscriber + 'static {
    fn create(dir: &ScratchDir, n: u32) -> Self;
}

impl Kind for Vsock {
    fn create(dir: &ScratchDir, n: u32) -> Self {
        Vsock::new(3, dir.path().join(format!("v{n}.sock"))).expect("vsock device")
    }
}

impl Kind for Fs {
    fn create(dir: &ScratchDir, _n: u32) -> Self {
        let shared = dir.path().join("shared");
        let _ = std::fs::create_dir(&shared);
        Fs::new("vessel", &shared, false).expect("virtio-fs device")
    }
}

struct Run<T: Kind> {
    dir: ScratchDir,
    created: u32,
    mem: GuestMemory,
    dev: Arc<Mutex<T>>,
    transport: MmioTransport,
    em: EventManager<Arc<Mutex<T>>>,
    summary: Summary,
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

impl<T: Kind> Run<T> {
    fn new() -> Self {
        let dir = ScratchDir::new("mmio");
        let mem = guest_memory(MEM_SIZE);
        let dev = Arc::new(Mutex::new(T::create(&dir, 0)));
        let transport = MmioTransport::new(dev.clone(), mem.clone());
        let mut em = EventManager::<Arc<Mutex<T>>>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let device_type = lock(&dev).device_type();
        Self {
            dir,
            created: 1,
            mem,
            dev,
            transport,
            em,
            summary: Summary {
                device_type,
                ..Summary::default()
            },
        }
    }

    fn offset(i: &mut Input<'_>) -> u64 {
        match i.below(3) {
            0 => i.choose(&REGS),
            1 => u64::from(i.u8()) * 4,
            _ => u64::from(i.u16() % 0x1000),
        }
    }

    fn value(i: &mut Input<'_>) -> u32 {
        match i.below(4) {
            0 => u32::from(i.u8()),
            1 => {
                // A status-like value: some of the known bits.
                let m = i.u8();
                STATUS_BITS
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| m & (1 << k) != 0)
                    .fold(0, |v, (_, b)| v | b)
            }
            2 => 1 << (i.u8() % 32),
            _ => i.u32(),
        }
    }

    fn check_identity(&mut self) {
        assert_eq!(rd(&mut self.transport, REG_MAGIC), MMIO_MAGIC_VALUE);
        assert_eq!(rd(&mut self.transport, REG_VERSION), MMIO_VERSION);
        assert_eq!(
            rd(&mut self.transport, REG_DEVICE_ID),
            self.summary.device_type
        );
        let status = self.transport.status();
        let known = STATUS_BITS.iter().fold(0, |v, b| v | b);
        assert_eq!(status & !known, 0, "status {status:#x}");
        if lock(&self.dev).is_activated() {
            self.summary.activated = true;
        }
    }

    fn snapshot(&mut self) {
        if lock(&self.dev).snapshot_blocker().is_some() {
            return;
        }
        let saved = self.transport.save_state();
        let fresh_dev = Arc::new(Mutex::new(T::create(&self.dir, self.created)));
        self.created += 1;
        let mut fresh = MmioTransport::new(fresh_dev, self.mem.clone());
        if let Err(e) = fresh.restore_state(&saved) {
            panic!("a state the guest reached does not restore: {e}\n{saved:?}");
        }
        assert_eq!(fresh.save_state(), saved, "restored state differs");
        self.summary.snapshots += 1;
    }

    fn op(&mut self, i: &mut Input<'_>) {
        let t = &mut self.transport;
        match i.u8() % op::COUNT {
            op::READ => {
                let off = Self::offset(i);
                let mut buf = vec![0u8; i.below(9)];
                t.read(off, &mut buf);
            }
            op::WRITE => {
                let off = Self::offset(i);
                let n = i.below(9);
                let mut buf = i.bytes(n).to_vec();
                buf.resize(n, 0);
                t.write(off, &buf);
            }
            op::WRITE_REG => {
                let off = i.choose(&REGS);
                let v = Self::value(i);
                wr(t, off, v);
            }
            op::NEGOTIATE => {
                let features_hi = if i.u8() & 1 == 0 { 1 } else { i.u32() };
                wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
                wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                wr(t, REG_DRIVER_FEATURES_SEL, 1);
                wr(t, REG_DRIVER_FEATURES, features_hi);
                wr(t, REG_DRIVER_FEATURES_SEL, 0);
                wr(t, REG_DRIVER_FEATURES, 0);
                wr(
                    t,
                    REG_STATUS,
                    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
                );
            }
            op::QUEUE => {
                let sel = u32::from(i.u8() % 4);
                let size = match i.below(4) {
                    0 => 16,
                    1 => 256,
                    2 => 1024,
                    _ => u32::from(i.u16()),
                };
                let base = match i.below(2) {
                    0 => 0x1_0000 * (u64::from(sel) + 1),
                    _ => u64::from(i.u32()),
                };
                wr(t, REG_QUEUE_SEL, sel);
                wr(t, REG_QUEUE_NUM, size);
                wr(t, REG_QUEUE_DESC_LOW, base as u32);
                wr(t, REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
                wr(t, REG_QUEUE_AVAIL_LOW, (base + 0x4000) as u32);
                wr(t, REG_QUEUE_AVAIL_HIGH, 0);
                wr(t, REG_QUEUE_USED_LOW, (base + 0x8000) as u32);
                wr(t, REG_QUEUE_USED_HIGH, 0);
                wr(t, REG_QUEUE_READY, 1);
            }
            op::DRIVER_OK => {
                let s = t.status();
                wr(t, REG_STATUS, s | STATUS_DRIVER_OK);
            }
            op::MEM_WRITE => {
                let addr = u64::from(i.u32()) % MEM_SIZE as u64;
                let n = i.below(64);
                let _ = self.mem.write_slice(i.bytes(n), GuestAddress(addr));
            }
            op::RUN => {}
            op::SNAPSHOT => self.snapshot(),
            op::NOTIFY => {
                let q = u32::from(i.u8() % 4);
                wr(t, REG_QUEUE_NOTIFY, q);
            }
            op::RESET => wr(t, REG_STATUS, 0),
            _ => {
                let pending = rd(t, REG_INTERRUPT_STATUS);
                wr(t, REG_INTERRUPT_ACK, pending);
            }
        }
        self.em.run_with_timeout(0).expect("event loop");
        self.check_identity();
    }
}

fn run_kind<T: Kind>(i: &mut Input<'_>) -> Summary {
    let mut run = Run::<T>::new();
    let mut ops = 0;
    while !i.is_empty() && ops < MAX_OPS {
        run.op(i);
        ops += 1;
    }
    run.snapshot();
    run.summary
}

/// Runs one program (any bytes): the first byte picks the device (even: vsock, odd:
/// virtio-fs).
pub fn run(data: &[u8]) -> Summary {
    let mut i = Input::new(data);
    if i.u8() & 1 == 0 {
        run_kind::<Vsock>(&mut i)
    } else {
        run_kind::<Fs>(&mut i)
    }
}

/// The committed seeds: (file name, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let activate = |device: u8| {
        let mut e = Enc::new();
        e.u8(device);
        e.u8(op::NEGOTIATE).u8(0);
        for q in 0..3 {
            e.u8(op::QUEUE).u8(q).u8(1).u8(0);
        }
        e.u8(op::DRIVER_OK);
        e.u8(op::SNAPSHOT);
        e.u8(op::NOTIFY).u8(1);
        e.u8(op::READ).u8(0).u8(23).u8(8); // config space, 8 bytes
        e.u8(op::ACK_IRQ);
        e.u8(op::RESET);
        e
    };
    let mut out = vec![
        ("vsock-activate", activate(0).finish()),
        ("fs-activate", activate(1).finish()),
    ];
    // Out-of-order status, odd widths and offsets, features the device lacks, a queue too
    // big and one outside guest memory, QueueReady before FEATURES_OK.
    let mut e = Enc::new();
    e.u8(0);
    e.u8(op::WRITE_REG).u8(15).u8(0).u8(4); // status DRIVER_OK first
    e.u8(op::QUEUE).u8(0).u8(0).u8(0); // before FEATURES_OK
    e.u8(op::WRITE).u8(2).u16(0x71).u8(3).bytes(&[1, 2, 3]);
    e.u8(op::READ).u8(2).u16(0x0fe).u8(8);
    e.u8(op::NEGOTIATE).u8(1).u32(u32::MAX);
    e.u8(op::QUEUE).u8(1).u8(3).u16(4096).u8(0);
    e.u8(op::QUEUE).u8(2).u8(0).u8(1).u32(0xffff_f000);
    e.u8(op::QUEUE).u8(3).u8(0).u8(0);
    e.u8(op::DRIVER_OK);
    e.u8(op::SNAPSHOT);
    out.push(("vsock-hostile", e.finish()));
    // virtio-fs: a FUSE_INIT chain written into the rings by hand, then a notify.
    let mut e = Enc::new();
    e.u8(1).u8(op::NEGOTIATE).u8(0);
    e.u8(op::QUEUE).u8(0).u8(0).u8(0);
    e.u8(op::QUEUE).u8(1).u8(0).u8(0);
    e.u8(op::DRIVER_OK);
    // Queue 1 rings: desc 0x20000, avail 0x24000. Descriptor 0: 56 readable bytes at
    // 0x40000, next 1; descriptor 1: 128 writable bytes at 0x41000.
    let desc = |e: &mut Enc, at: u32, addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        e.u8(op::MEM_WRITE).u32(at).u8(16).bytes(&b);
    };
    desc(&mut e, 0x20000, 0x40000, 56, 1, 1);
    desc(&mut e, 0x20010, 0x41000, 128, 2, 0);
    let mut init = Vec::new();
    for v in [56u32, 26] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&7u64.to_le_bytes()); // unique
    init.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, padding
    for v in [7u32, 36, 0x20000, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    e.u8(op::MEM_WRITE).u32(0x40000).u8(56).bytes(&init);
    e.u8(op::MEM_WRITE)
        .u32(0x24000)
        .u8(6)
        .bytes(&[0, 0, 1, 0, 0, 0]);
    e.u8(op::NOTIFY).u8(1);
    e.u8(op::RUN);
    e.u8(op::SNAPSHOT);
    out.push(("fs-init-by-hand", e.finish()));
    out
}
