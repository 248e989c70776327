//! Register semantics of the virtio-mmio transport, on real guest memory with a dummy device.

use super::*;
use crate::devices::virtio::device::{ActivateError, DeviceCore, VIRTIO_MMIO_INT_VRING};
use vm_memory::GuestMemoryMmap;

const MEM_SIZE: usize = 1 << 20;

struct Dummy {
    core: DeviceCore,
    activated: bool,
    config: [u8; 8],
    resettable: bool,
    fail_activate: bool,
}

impl Dummy {
    fn new() -> Self {
        Self {
            core: DeviceCore::new(2, 256, (1 << 32) | 0b101).expect("core"),
            activated: false,
            config: *b"\x03\0\0\0\0\0\0\0",
            resettable: true,
            fail_activate: false,
        }
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        19
    }
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(off..off + data.len()) {
            data.copy_from_slice(src);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        if let Some(dst) = self.config.get_mut(off..off + data.len()) {
            dst.copy_from_slice(data);
        }
    }
    fn activate(&mut self, _mem: GuestMemory) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend("refused".into()));
        }
        self.activated = true;
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated
    }
    fn reset(&mut self) -> bool {
        if self.resettable {
            self.activated = false;
        }
        self.resettable
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("mem");
    let dev = Arc::new(Mutex::new(Dummy::new()));
    (MmioTransport::new(dev.clone(), mem), dev)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the transport to FEATURES_OK with VERSION_1 accepted.
fn negotiate(t: &mut MmioTransport) {
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, 1);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, 0b1);
    wr(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, sel: u32, base: u64) {
    wr(t, REG_QUEUE_SEL, sel);
    wr(t, REG_QUEUE_NUM, 16);
    wr(t, REG_QUEUE_DESC_LOW, base as u32);
    wr(t, REG_QUEUE_DESC_HIGH, 0);
    wr(t, REG_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
    wr(t, REG_QUEUE_USED_LOW, (base + 0x2000) as u32);
    wr(t, REG_QUEUE_READY, 1);
}

#[test]
fn identification_registers() {
    let (mut t, _) = setup();
    assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(rd(&mut t, REG_VERSION), 2);
    assert_eq!(rd(&mut t, REG_DEVICE_ID), 19);
    assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0b101);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
    wr(&mut t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 256);
    wr(&mut t, REG_QUEUE_SEL, 5);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
}

#[test]
fn full_negotiation_activates_the_device() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    assert_eq!(
        rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK,
        STATUS_FEATURES_OK
    );
    assert_eq!(dev.lock().expect("lock").core.acked_features, (1 << 32) | 1);
    setup_queue(&mut t, 0, 0x10000);
    setup_queue(&mut t, 1, 0x20000);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM), 16);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    let d = dev.lock().expect("lock");
    assert!(d.activated);
    assert_eq!(d.core.queues[1].desc_table(), 0x20000);
    assert_eq!(d.core.queues[1].size(), 16);
}

#[test]
fn driver_cannot_ack_features_the_device_lacks() {
    let (mut t, dev) = setup();
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, REG_DRIVER_FEATURES, u32::MAX);
    assert_eq!(dev.lock().expect("lock").core.acked_features, 0b101);
    // Feature writes before DRIVER or after FEATURES_OK are ignored.
    let (mut t2, dev2) = setup();
    wr(&mut t2, REG_DRIVER_FEATURES, 1);
    assert_eq!(dev2.lock().expect("lock").core.acked_features, 0);
}

#[test]
fn features_ok_refused_without_version_1() {
    let (mut t, _) = setup();
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(&mut t, REG_DRIVER_FEATURES, 1);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
}

#[test]
fn out_of_order_status_is_ignored() {
    let (mut t, dev) = setup();
    wr(&mut t, REG_STATUS, STATUS_DRIVER_OK);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    negotiate(&mut t);
    // Clearing bits without a reset is refused.
    wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    assert!(!dev.lock().expect("lock").activated);
}

#[test]
fn bad_queue_sizes_and_addresses_leave_queue_not_ready() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    for bad_size in [0u32, 3, 512, 0x1_0000, u32::MAX] {
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_NUM, bad_size);
        wr(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, REG_QUEUE_AVAIL_LOW, 0x2000);
        wr(&mut t, REG_QUEUE_USED_LOW, 0x3000);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0, "size {bad_size} accepted");
    }
    // Rings outside guest memory.
    wr(&mut t, REG_QUEUE_NUM, 16);
    wr(&mut t, REG_QUEUE_DESC_HIGH, 0x10);
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    wr(&mut t, REG_QUEUE_DESC_HIGH, 0);
    wr(&mut t, REG_QUEUE_USED_LOW, (MEM_SIZE - 8) as u32);
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    // Misaligned descriptor table (needs 16).
    wr(&mut t, REG_QUEUE_USED_LOW, 0x3000);
    wr(&mut t, REG_QUEUE_DESC_LOW, 0x1004);
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    // Queue out of range: writes ignored, reads zero.
    wr(&mut t, REG_QUEUE_SEL, 9);
    wr(&mut t, REG_QUEUE_NUM, 16);
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM), 0);
    // DRIVER_OK with unready queues: device not activated, NEEDS_RESET set.
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert!(!dev.lock().expect("lock").activated);
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    assert_ne!(rd(&mut t, REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
}

#[test]
fn queue_registers_before_features_ok_are_ignored() {
    let (mut t, _) = setup();
    wr(&mut t, REG_QUEUE_NUM, 16);
    assert_eq!(rd(&mut t, REG_QUEUE_NUM), 0);
    wr(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let (mut t, dev) = setup();
    dev.lock().expect("lock").fail_activate = true;
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10000);
    setup_queue(&mut t, 1, 0x20000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, dev) = setup();
    let trigger = dev.lock().expect("lock").core.irq.clone();
    trigger.trigger(VIRTIO_MMIO_INT_VRING).expect("trigger");
    trigger.trigger(VIRTIO_MMIO_INT_CONFIG).expect("trigger");
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 3);
    wr(&mut t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(trigger.irq_evt.read().expect("evt"), 2);
}

#[test]
fn queue_notify_signals_the_queue_event() {
    let (mut t, dev) = setup();
    wr(&mut t, REG_QUEUE_NOTIFY, 1);
    wr(&mut t, REG_QUEUE_NOTIFY, 77);
    let d = dev.lock().expect("lock");
    assert_eq!(d.core.queue_evts[1].read().expect("evt"), 1);
    assert!(
        d.core.queue_evts[0].read().is_err(),
        "queue 0 must not be signalled"
    );
}

#[test]
fn reset_clears_state() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10000);
    setup_queue(&mut t, 1, 0x20000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert!(dev.lock().expect("lock").activated);
    wr(&mut t, REG_STATUS, 0);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    wr(&mut t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
    assert!(!dev.lock().expect("lock").activated);
    // A device that cannot reset is marked NEEDS_RESET.
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10000);
    setup_queue(&mut t, 1, 0x20000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    dev.lock().expect("lock").resettable = false;
    wr(&mut t, REG_STATUS, 0);
    assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
}

#[test]
fn config_space_and_generation() {
    let (mut t, _) = setup();
    let mut b = [0u8; 4];
    t.read(CONFIG_SPACE_OFFSET, &mut b);
    assert_eq!(b, [3, 0, 0, 0]);
    let gen = rd(&mut t, REG_CONFIG_GENERATION);
    t.write(CONFIG_SPACE_OFFSET + 4, &[9]);
    t.read(CONFIG_SPACE_OFFSET + 4, &mut b[..1]);
    assert_eq!(b[0], 9);
    assert_ne!(rd(&mut t, REG_CONFIG_GENERATION), gen);
    // Out of range config reads give zeros, no panic.
    let mut big = [0xffu8; 64];
    t.read(CONFIG_SPACE_OFFSET + 0xe00, &mut big);
    assert_eq!(big, [0u8; 64]);
}

#[test]
fn odd_sized_and_unaligned_accesses_are_harmless() {
    let (mut t, _) = setup();
    let mut one = [0xffu8; 1];
    t.read(REG_MAGIC, &mut one);
    assert_eq!(one, [0]);
    let mut b = [0xffu8; 4];
    t.read(REG_MAGIC + 2, &mut b);
    assert_eq!(b, [0; 4]);
    t.write(REG_STATUS, &[1]);
    t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
    t.write(0x0fe, &[0; 8]);
    assert_eq!(rd(&mut t, REG_STATUS), 0);
    assert_eq!(rd(&mut t, 0x0f0), 0);
}

/// An active transport with a used queue, saved and restored into a fresh one.
#[test]
fn snapshot_state_round_trips_into_a_fresh_transport() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10000);
    setup_queue(&mut t, 1, 0x20000);
    wr(
        &mut t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    {
        let mut d = dev.lock().expect("lock");
        d.core.queues[1].set_next_avail(7);
        d.core.queues[1].set_next_used(5);
        d.core
            .irq
            .irq_status
            .store(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
    }
    wr(&mut t, REG_QUEUE_SEL, 1);
    let saved = t.save_state();
    assert!(saved.activated);
    assert_eq!(saved.queues[1].next_avail, 7);
    assert_eq!(&saved.config_space[..8], b"\x03\0\0\0\0\0\0\0");
    // Through JSON, as in vm.json.
    let saved: VirtioSnapshot =
        serde_json::from_str(&serde_json::to_string(&saved).expect("ser")).expect("de");

    let (mut fresh, fresh_dev) = setup();
    assert_eq!(
        fresh.restore_state(&saved),
        Ok(true),
        "interrupt was pending"
    );
    assert_eq!(fresh.save_state(), saved);
    assert_eq!(rd(&mut fresh, REG_STATUS), rd(&mut t, REG_STATUS));
    assert_eq!(rd(&mut fresh, REG_QUEUE_DESC_LOW), 0x20000);
    assert_eq!(rd(&mut fresh, REG_QUEUE_READY), 1);
    assert_eq!(rd(&mut fresh, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    let d = fresh_dev.lock().expect("lock");
    assert!(d.activated, "re-activated");
    assert_eq!(d.core.acked_features, (1 << 32) | 1);
    assert_eq!(
        (d.core.queues[1].next_avail(), d.core.queues[1].next_used()),
        (7, 5)
    );
}

#[test]
fn snapshot_state_from_a_file_is_checked() {
    let (mut t, _) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 0x10000);
    let good = t.save_state();
    let fails = |edit: &dyn Fn(&mut VirtioSnapshot), what: &str| {
        let mut s = good.clone();
        edit(&mut s);
        let (mut fresh, _) = setup();
        let err = fresh.restore_state(&s).expect_err(what);
        assert!(err.contains(what), "{what}: {err}");
    };
    fails(&|s| s.device_type = 26, "device type");
    fails(&|s| s.config_space[0] = 4, "configuration space");
    fails(&|s| s.queues.truncate(1), "queues");
    fails(&|s| s.status |= 0x100, "unknown status");
    fails(&|s| s.activated = true, "active device");
    fails(&|s| s.acked_features = 1 << 40, "acked");
    fails(&|s| s.queues[0].max_size = 1024, "max size");
    fails(&|s| s.queues[0].size = 3, "queue size");
    fails(
        &|s| s.queues[0].desc_table = (MEM_SIZE as u64) * 4,
        "outside guest memory",
    );
    let (mut fresh, _) = setup();
    assert_eq!(fresh.restore_state(&good), Ok(false));
}
