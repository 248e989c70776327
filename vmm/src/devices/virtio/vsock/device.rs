//! The virtio side of the vsock device: feature bits, config space, activation, and moving
//! packets between the virtqueues and the muxer.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::super::device::{
    read_config_bytes, ActivateError, DeviceCore, DeviceState, GuestMemory, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
#[cfg(test)]
use super::connection::Timeouts;
use super::error::VsockError;
use super::metrics::{limited_warn, LogLimiter, VsockMetrics};
use super::muxer::{FdRegistry, Muxer};
use super::packet::{read_tx_packet, RxBuffer};
use super::{NUM_QUEUES, QUEUE_MAX_SIZE, RXQ_INDEX, TXQ_INDEX};

/// Virtio device ID of vsock.
/// The virtio device type of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Period of the timer that enforces connection deadlines (only armed while one is pending).
const DEFAULT_TICK: Duration = Duration::from_millis(500);

/// A virtio-vsock device whose host side is Firecracker's hybrid Unix socket.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// (device, inode) of the socket file we bound, so `Drop` only unlinks our own.
    bound_file: Option<(u64, u64)>,
    pub(super) core: DeviceCore,
    pub(super) muxer: Muxer,
    metrics: Arc<VsockMetrics>,
    pub(super) timer: TimerFd,
    timer_armed: bool,
    tick: Duration,
    /// Queue, listener and timer fds are registered with the event manager (after activation).
    pub(super) subscribed: bool,
    /// TX processing paused because the muxer's RST queue is full; RX progress resumes it.
    tx_waiting: bool,
    tx_payload: Vec<u8>,
    log: LogLimiter,
}

impl Vsock {
    /// Creates the device for guest CID `guest_cid` and binds the host socket at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        if guest_cid <= 2 || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        if std::fs::symlink_metadata(&uds_path).is_ok() {
            return Err(VsockError::PathExists(uds_path));
        }
        let bind_err = |source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let bound_file = std::fs::metadata(&uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));

        // No EVENT_IDX (we interrupt on every used-ring change), no IN_ORDER, no SEQPACKET.
        let core = DeviceCore::new(NUM_QUEUES, QUEUE_MAX_SIZE, VIRTIO_F_VERSION_1)
            .map_err(VsockError::EventFd)?;
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path.clone(), listener, metrics.clone()),
            uds_path,
            bound_file,
            core,
            metrics,
            timer: TimerFd::new()
                .map_err(|e| VsockError::EventFd(std::io::Error::from_raw_os_error(e.errno())))?,
            timer_armed: false,
            tick: DEFAULT_TICK,
            subscribed: false,
            tx_waiting: false,
            tx_payload: Vec::new(),
            log: super::metrics::log_limiter(),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The device's counters (shared; they keep updating).
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Shortens the handshake/response/shutdown timeouts (tests).
    #[cfg(test)]
    pub(crate) fn set_timeouts(&mut self, timeouts: Timeouts, tick: Duration) {
        self.muxer.set_timeouts(timeouts);
        self.tick = tick;
    }

    /// Moves everything that can move: TX chains to the muxer, pending packets to RX buffers;
    /// then interrupts the guest if a used ring changed and keeps the timer in step.
    pub(super) fn pump(&mut self, reg: &mut dyn FdRegistry) {
        if self.core.mem.is_none() {
            return;
        }
        let mut used = self.process_tx(reg);
        loop {
            let rx_used = self.process_rx(reg);
            used |= rx_used;
            // A TX pause ends when RX drained the RST queue; each round consumes chains, so
            // this ends when the guest runs out of buffers or we out of work.
            if !(self.tx_waiting && rx_used) {
                break;
            }
            used |= self.process_tx(reg);
        }
        if used {
            if let Err(e) = self.core.signal_used() {
                VsockMetrics::inc(&self.metrics.internal_errors);
                limited_warn!(self.log, "vsock: raising interrupt: {e}");
            }
        }
        self.update_timer();
    }

    /// Handles every available TX chain. Returns whether the used ring changed.
    fn process_tx(&mut self, reg: &mut dyn FdRegistry) -> bool {
        let Some(mem) = self.core.mem.as_ref() else {
            return false;
        };
        let queue = &mut self.core.queues[TXQ_INDEX];
        let mut used = false;
        self.tx_waiting = false;
        loop {
            if self.muxer.tx_must_wait() {
                self.tx_waiting = true;
                break;
            }
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    limited_warn!(self.log, "vsock: TX queue unusable: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(chain, mem, &mut self.tx_payload) {
                Ok(hdr) => {
                    VsockMetrics::inc(&self.metrics.tx_packets);
                    self.muxer.handle_tx(&hdr, &self.tx_payload, reg);
                }
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.tx_malformed_chains);
                    limited_warn!(self.log, "vsock: dropping TX chain {head}: {e}");
                }
            }
            // TX buffers are only read: the used length is 0.
            match queue.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.internal_errors);
                    limited_warn!(self.log, "vsock: returning TX chain {head}: {e}");
                }
            }
        }
        used
    }

    /// Fills RX buffers while the muxer has packets. Returns whether the used ring changed.
    fn process_rx(&mut self, reg: &mut dyn FdRegistry) -> bool {
        let Some(mem) = self.core.mem.as_ref() else {
            return false;
        };
        let queue = &mut self.core.queues[RXQ_INDEX];
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    limited_warn!(self.log, "vsock: RX queue unusable: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                // No buffer: what is pending stays pending (host data stays in the host
                // socket) until the guest posts buffers and notifies the RX queue.
                VsockMetrics::inc(&self.metrics.rx_queue_empty);
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::from_chain(chain, mem) {
                Ok(buf) => match self.muxer.fill_rx(&buf, mem, reg) {
                    Some(len) => {
                        VsockMetrics::inc(&self.metrics.rx_packets);
                        len
                    }
                    None => {
                        // Nothing after all (e.g. the host stream had no data): keep the
                        // buffer for later.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.rx_malformed_chains);
                    limited_warn!(self.log, "vsock: dropping RX chain {head}: {e}");
                    0
                }
            };
            match queue.add_used(mem, head, len as u32) {
                Ok(()) => used = true,
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.internal_errors);
                    limited_warn!(self.log, "vsock: returning RX chain {head}: {e}");
                }
            }
        }
        used
    }

    /// Arms the periodic deadline timer when the muxer needs it.
    fn update_timer(&mut self) {
        // The timer is only (re)armed while disarmed, and only disarmed right after reading it:
        // re-arming resets its expiry count, and a read after a reset would block.
        if !self.timer_armed && self.muxer.needs_timer() {
            match self.timer.reset(self.tick, Some(self.tick)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.internal_errors);
                    limited_warn!(self.log, "vsock: arming timer: {e}");
                }
            }
        }
    }

    /// The deadline timer fired (its fd is readable, so the read does not block).
    pub(super) fn on_timer(&mut self, reg: &mut dyn FdRegistry) {
        if let Err(e) = self.timer.wait() {
            limited_warn!(self.log, "vsock: reading timer: {e}");
        }
        self.muxer.on_timer(Instant::now(), reg);
        if !self.muxer.needs_timer() {
            match self.timer.clear() {
                Ok(()) => self.timer_armed = false,
                Err(e) => limited_warn!(self.log, "vsock: disarming timer: {e}"),
            }
        }
    }

    pub(super) fn queue_evt(&self, index: usize) -> &EventFd {
        &self.core.queue_evts[index]
    }

    pub(super) fn log_limiter(&mut self) -> &mut LogLimiter {
        &mut self.log
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.metrics().counters()
    }

    fn core(&self) -> &DeviceCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The config space is read-only.
        limited_warn!(self.log, "vsock: guest wrote the read-only config space");
    }

    fn activate(&mut self, mem: GuestMemory) -> Result<(), ActivateError> {
        // The event loop thread registers the queue, listener and connection fds when it sees
        // this (we have no access to the event manager here).
        self.core.activate(mem, "vsock")
    }

    fn snapshot_blocker(&self) -> Option<String> {
        self.muxer.snapshot_blocker()
    }

    fn save_state(&self) -> Option<DeviceState> {
        // The guest CID is in the config space (checked by the snapshot); of the connections
        // only idle ones are saved (a snapshot waits until every other one is gone).
        Some(DeviceState::Vsock {
            local_port_last: self.muxer.local_port_last(),
            parked: self.muxer.parked_connections(),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Vsock {
                local_port_last,
                parked,
            } => {
                self.muxer.set_local_port_last(*local_port_last);
                self.muxer.set_parked(parked.clone())
            }
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Remove our socket file, unless someone replaced it meanwhile.
        let ours = std::fs::metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.bound_file {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("core", &self.core)
            .field("muxer", &self.muxer)
            .finish()
    }
}
