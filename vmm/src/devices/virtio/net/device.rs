//! The virtio side of the NIC: features, config space, activation, reset, and moving frames
//! between the virtqueues and the tap.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::super::chain::{SegmentError, Segments};
use super::super::device::{
    read_config_bytes, ActivateError, DeviceCore, GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1,
};
use super::offload::{self, OFFLOAD_FEATURES};
use super::tap::Tap;
use super::{
    BURST, DEFAULT_MAC, DEFAULT_MTU, ETH_HDR_LEN, MAX_FRAME, NET_HDR_LEN, NUM_QUEUES,
    QUEUE_MAX_SIZE, RXQ_INDEX, TXQ_INDEX, VIRTIO_ID_NET, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
};
use crate::log_limit::LogLimiter;

static GUEST_ERRORS: LogLimiter = LogLimiter::new(10, std::time::Duration::from_secs(10));

macro_rules! net_warn {
    ($($arg:tt)+) => { crate::log_limited!(GUEST_ERRORS, log::Level::Warn, $($arg)+) };
}

/// Counters of one NIC (shared: tests and the VMM read them while the device runs).
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames from the guest written to the tap.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the tap delivered to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// TX chains that were unusable (direction, memory, size): returned unread.
    pub tx_malformed: AtomicU64,
    /// Guest frames the tap did not take (or no tap), dropped.
    pub tx_dropped: AtomicU64,
    /// RX chains that were unusable: returned with nothing written.
    pub rx_malformed: AtomicU64,
    /// Host frames dropped: larger than the guest's buffer or than [`MAX_FRAME`].
    pub rx_dropped: AtomicU64,
    /// Times a host frame waited because the guest had posted no buffer.
    pub rx_no_buffer: AtomicU64,
    /// Notifies of the TX and RX queues (each one a VM exit), and interrupts raised: with
    /// the frame counts, the exits a packet costs.
    pub tx_kicks: AtomicU64,
    pub rx_kicks: AtomicU64,
    pub interrupts: AtomicU64,
    /// Failures to use a ring or raise an interrupt.
    pub internal_errors: AtomicU64,
}

impl NetMetrics {
    /// The counters by name, for the VMM's metrics file.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tx_frames", g(&self.tx_frames)),
            ("tx_bytes", g(&self.tx_bytes)),
            ("rx_frames", g(&self.rx_frames)),
            ("rx_bytes", g(&self.rx_bytes)),
            ("tx_dropped", g(&self.tx_dropped)),
            ("rx_dropped", g(&self.rx_dropped)),
            ("tx_malformed", g(&self.tx_malformed)),
            ("rx_malformed", g(&self.rx_malformed)),
            ("rx_no_buffer", g(&self.rx_no_buffer)),
            ("interrupts", g(&self.interrupts)),
        ]
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "tx {} frames ({} B, {} kicks, {} dropped, {} malformed), rx {} frames ({} B, {} \
             kicks, {} dropped, {} waited for a buffer), {} interrupts",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_kicks),
            g(&self.tx_dropped),
            g(&self.tx_malformed),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_kicks),
            g(&self.rx_dropped),
            g(&self.rx_no_buffer),
            g(&self.interrupts)
        )
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// What one round of RX did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RxRound {
    /// The used ring changed.
    pub used: bool,
    /// A frame waits for the guest to post a buffer: stop polling the tap until it does.
    pub blocked: bool,
}

/// A virtio-net device with an optional tap backend.
pub struct Net {
    pub(super) core: DeviceCore,
    pub(super) tap: Option<Tap>,
    /// The tap fd is in the event loop's interest list.
    pub(super) tap_polled: bool,
    /// Queue fds are registered with the event loop (after the first activation).
    pub(super) subscribed: bool,
    /// `virtio_net_hdr_v1` followed by a frame, as read from the tap: `rx_len` bytes of
    /// frame (after the header) wait for an RX buffer when `Some`.
    rx_buf: Vec<u8>,
    rx_len: Option<usize>,
    /// Header and frame of the TX chain being sent.
    tx_buf: Vec<u8>,
    metrics: Arc<NetMetrics>,
    last_log: std::time::Instant,
    /// TX eventfd writes of the device itself, not yet read back.
    pub(super) self_kicks: u64,
}

/// How often the counters are logged while traffic flows.
const METRICS_LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

impl Net {
    /// A NIC whose host end is `tap` (`None`: frames from the guest are dropped).
    pub fn new(tap: Option<Tap>) -> io::Result<Net> {
        // One byte past the largest frame: a longer one shows as cut.
        let rx_buf = vec![0u8; NET_HDR_LEN + MAX_FRAME + 1];
        Ok(Net {
            core: DeviceCore::new(
                NUM_QUEUES,
                QUEUE_MAX_SIZE,
                VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | OFFLOAD_FEATURES,
            )?,
            tap,
            tap_polled: false,
            subscribed: false,
            rx_buf,
            rx_len: None,
            tx_buf: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME),
            metrics: Arc::new(NetMetrics::default()),
            last_log: std::time::Instant::now(),
            self_kicks: 0,
        })
    }

    /// The device's counters (shared; they keep updating).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        Arc::clone(&self.metrics)
    }

    pub(super) fn queue_evt(&self, index: usize) -> &EventFd {
        &self.core.queue_evts[index]
    }

    /// Counts `n` notifies of queue `q` (what its eventfd read returned), less the device's
    /// own TX re-kicks (not guest exits).
    pub(super) fn count_kicks(&mut self, q: usize, n: u64) {
        if q == TXQ_INDEX {
            let guest = n.saturating_sub(std::mem::take(&mut self.self_kicks));
            self.metrics.tx_kicks.fetch_add(guest, Ordering::Relaxed);
        } else {
            self.metrics.rx_kicks.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Logs the counters at most once a minute while traffic flows (the VMM is usually
    /// killed, so there is no last word).
    pub(super) fn log_now_and_then(&mut self) {
        if self.last_log.elapsed() >= METRICS_LOG_PERIOD {
            self.last_log = std::time::Instant::now();
            log::info!("virtio-net: {}", self.metrics.summary());
        }
    }

    /// Raises the used-buffer interrupt.
    pub(super) fn signal_used(&self) {
        inc(&self.metrics.interrupts);
        if let Err(e) = self.core.signal_used() {
            inc(&self.metrics.internal_errors);
            net_warn!("virtio-net: raising interrupt: {e}");
        }
    }

    /// Sends up to [`BURST`] TX chains to the tap. Returns (used ring changed, more chains
    /// may be waiting).
    pub(super) fn process_tx(&mut self) -> (bool, bool) {
        let Some(mem) = self.core.mem.as_ref() else {
            return (false, false);
        };
        let acked = self.core.acked_features;
        let queue = &mut self.core.queues[TXQ_INDEX];
        let mut used = false;
        for _ in 0..BURST {
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    net_warn!("virtio-net: TX queue unusable: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                return (used, false);
            };
            let head = chain.head_index();
            match read_tx_frame(chain, mem, acked, &mut self.tx_buf) {
                Ok(()) => {
                    // Header and frame: the tap takes the offload fields as they are.
                    let frame = &self.tx_buf[..];
                    match self.tap.as_ref().map(|t| t.write_frame(frame)) {
                        Some(Ok(n)) if n == frame.len() => {
                            inc(&self.metrics.tx_frames);
                            add(&self.metrics.tx_bytes, n - NET_HDR_LEN);
                        }
                        Some(Ok(n)) => {
                            inc(&self.metrics.tx_dropped);
                            net_warn!("virtio-net: tap took {n} of {} bytes", frame.len());
                        }
                        Some(Err(e)) => {
                            // EAGAIN: the host side is full; like a NIC, drop (TCP resends).
                            inc(&self.metrics.tx_dropped);
                            if e.kind() != io::ErrorKind::WouldBlock {
                                net_warn!("virtio-net: writing to the tap: {e}");
                            }
                        }
                        None => inc(&self.metrics.tx_dropped),
                    }
                }
                Err(e) => {
                    inc(&self.metrics.tx_malformed);
                    net_warn!("virtio-net: dropping TX chain {head}: {e}");
                }
            }
            // TX buffers are only read: the used length is 0.
            match queue.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => {
                    inc(&self.metrics.internal_errors);
                    net_warn!("virtio-net: returning TX chain {head}: {e}");
                }
            }
        }
        (used, true)
    }

    /// Delivers up to [`BURST`] frames from the tap into RX buffers.
    pub(super) fn process_rx(&mut self) -> RxRound {
        let mut round = RxRound::default();
        let (Some(mem), Some(tap)) = (self.core.mem.as_ref(), self.tap.as_ref()) else {
            return round;
        };
        let acked = self.core.acked_features;
        let queue = &mut self.core.queues[RXQ_INDEX];
        for _ in 0..BURST {
            let len = match self.rx_len {
                Some(len) => len,
                None => match tap.read_frame(&mut self.rx_buf) {
                    Ok(n)
                        if !(NET_HDR_LEN + ETH_HDR_LEN..=NET_HDR_LEN + MAX_FRAME).contains(&n) =>
                    {
                        // Cut (the host sent more than the guest's MTU allows), or not an
                        // Ethernet frame.
                        inc(&self.metrics.rx_dropped);
                        continue;
                    }
                    Ok(n) => match offload::prepare_rx(&mut self.rx_buf[..n], acked) {
                        Ok(()) => n - NET_HDR_LEN,
                        Err(e) => {
                            inc(&self.metrics.rx_dropped);
                            net_warn!("virtio-net: dropping a frame from the tap: {e}");
                            continue;
                        }
                    },
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            inc(&self.metrics.internal_errors);
                            net_warn!("virtio-net: reading the tap: {e}");
                        }
                        break;
                    }
                },
            };
            self.rx_len = Some(len);
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    net_warn!("virtio-net: RX queue unusable: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                inc(&self.metrics.rx_no_buffer);
                round.blocked = true;
                break;
            };
            let head = chain.head_index();
            let written = match Segments::collect(chain, mem, true) {
                Ok(segs) if segs.len() < NET_HDR_LEN + len => {
                    // The guest's buffers are smaller than this frame: drop the frame and
                    // keep the buffer for the next one.
                    inc(&self.metrics.rx_dropped);
                    self.rx_len = None;
                    queue.go_to_previous_position();
                    continue;
                }
                Ok(segs) => segs
                    .write_at(mem, 0, &self.rx_buf[..NET_HDR_LEN + len])
                    .map(|()| NET_HDR_LEN + len),
                Err(e) => Err(e),
            };
            let used_len = match written {
                Ok(n) => {
                    inc(&self.metrics.rx_frames);
                    add(&self.metrics.rx_bytes, len);
                    self.rx_len = None;
                    n
                }
                Err(e) => {
                    // A bad buffer: returned empty; the frame waits for the next one.
                    inc(&self.metrics.rx_malformed);
                    net_warn!("virtio-net: RX chain {head} unusable: {e}");
                    0
                }
            };
            match queue.add_used(mem, head, used_len as u32) {
                Ok(()) => round.used = true,
                Err(e) => {
                    inc(&self.metrics.internal_errors);
                    net_warn!("virtio-net: returning RX chain {head}: {e}");
                }
            }
        }
        round
    }
}

/// Why a TX chain is not sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum TxError {
    #[error(transparent)]
    Chain(#[from] SegmentError),
    #[error("chain of {len} bytes: not a header and a frame of {ETH_HDR_LEN}..={max} bytes")]
    Size { len: usize, max: usize },
    #[error(transparent)]
    Header(#[from] offload::TxHeaderError),
}

/// Reads a TX chain (header + frame) into `buf` and checks its header against the features
/// the guest acked (`acked`).
fn read_tx_frame<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemory,
    acked: u64,
    buf: &mut Vec<u8>,
) -> Result<(), TxError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let segs = Segments::collect(chain, mem, false)?;
    let len = segs.len();
    // Bounded before anything is copied: at most one GSO frame.
    let max = offload::max_tx_frame(acked);
    if !(NET_HDR_LEN + ETH_HDR_LEN..=NET_HDR_LEN + max).contains(&len) {
        return Err(TxError::Size { len, max });
    }
    buf.resize(len, 0);
    segs.read_at(mem, 0, buf)?;
    offload::check_tx(buf, acked)?;
    Ok(())
}

/// The config space: `struct virtio_net_config { mac[6]; le16 status; le16
/// max_virtqueue_pairs; le16 mtu; }` (status and pairs are unused without their features).
fn config_space() -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..6].copy_from_slice(&DEFAULT_MAC);
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&DEFAULT_MTU.to_le_bytes());
    c
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.metrics.counters()
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Writing the MAC through the config space is a legacy-only feature.
        net_warn!("virtio-net: guest wrote the read-only config space");
    }

    fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        // The event loop registers the queue and tap fds when the core signals it.
        self.core.activate(mem, "virtio-net")
    }

    fn reset(&mut self) -> bool {
        // The tap stays; what was in flight is lost, as on a real NIC's reset. The event
        // loop stops polling the tap when it next fires on an inactive device.
        self.core.reset();
        self.rx_len = None;
        true
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.as_ref().map(Tap::name))
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}
