//! The Unix-socket backend: accepts host clients on `uds_path`, connects guest requests to
//! `<uds_path>_<port>`, allocates host ports, and routes packets between the virtqueues and the
//! per-connection state machines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::super::device::GuestMemory;
use super::connection::{ConnKey, Connection, Timeouts};
use super::handshake::{Handshake, HandshakeStatus};
use super::metrics::{limited_warn, LogLimiter, VsockMetrics};
use super::packet::{
    PacketHeader, RxBuffer, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RST, TYPE_STREAM,
};
use super::parked::{self, ParkedConnection, MAX_PARKED};
use super::{uds, LOCAL_PORT_BASE, MAX_CONNECTIONS};

/// Where the muxer (de)registers the fds it wants polled: the event manager in production.
pub(crate) trait FdRegistry {
    fn add(&mut self, fd: RawFd, events: EventSet) -> io::Result<()>;
    fn modify(&mut self, fd: RawFd, events: EventSet) -> io::Result<()>;
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
}

/// RSTs for packets that belong to no connection, waiting for RX buffers. TX processing pauses
/// when this is full, so none is ever dropped.
const RST_QUEUE_CAP: usize = 256;
/// Accepts per listener event, so a flood of clients cannot starve the queues.
const ACCEPTS_PER_EVENT: usize = 32;

pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// The listener was taken out of epoll after a hard accept error (EMFILE...); the timer
    /// puts it back.
    listener_paused: bool,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, Connection>,
    conn_fds: HashMap<RawFd, ConnKey>,
    /// Ports handed to host-initiated connections.
    local_ports: HashSet<u32>,
    local_port_last: u32,
    /// Connections with something for the guest, each at most once (bounded by the map).
    rx_ready: VecDeque<ConnKey>,
    rst_queue: VecDeque<ConnKey>,
    /// Idle connections kept from a snapshot, waiting for a host client (see [`parked`]).
    parked: Vec<ParkedConnection>,
    timeouts: Timeouts,
    metrics: Arc<VsockMetrics>,
    log: LogLimiter,
    scratch: Vec<u8>,
}

impl Muxer {
    pub(crate) fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            listener_paused: false,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            local_ports: HashSet::new(),
            local_port_last: LOCAL_PORT_BASE - 1,
            rx_ready: VecDeque::new(),
            rst_queue: VecDeque::new(),
            parked: Vec::new(),
            timeouts: Timeouts::default(),
            metrics,
            log: super::metrics::log_limiter(),
            scratch: vec![0; MAX_PAYLOAD],
        }
    }

    pub(crate) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    #[cfg(test)]
    pub(crate) fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    fn conn_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Number of live connections and pending handshakes (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn live(&self) -> (usize, usize) {
        (self.conns.len(), self.handshakes.len())
    }

    /// Guest bytes buffered for host streams, over all connections (tests).
    #[cfg(test)]
    pub(crate) fn tx_buffered(&self) -> usize {
        self.conns.values().map(Connection::tx_buffered).sum()
    }

    /// Why the device cannot be snapshotted now: streams that are not idle, handshakes, RSTs
    /// still owed to the guest, or more idle connections than a snapshot keeps.
    pub(crate) fn snapshot_blocker(&self) -> Option<String> {
        let busy = self
            .conns
            .values()
            .filter(|c| c.parkable().is_none())
            .count();
        let idle = self.conns.len() - busy + self.parked.len();
        if busy == 0
            && self.handshakes.is_empty()
            && self.rst_queue.is_empty()
            && idle <= MAX_PARKED
        {
            return None;
        }
        Some(format!(
            "vsock: {busy} busy connection(s), {idle} idle ones (at most {MAX_PARKED} are kept), \
             {} pending handshake(s), {} RST(s) for the guest",
            self.handshakes.len(),
            self.rst_queue.len()
        ))
    }

    /// The idle connections a snapshot keeps: those still parked from an earlier restore and
    /// the idle open ones (a snapshot is only taken when [`Self::snapshot_blocker`] is `None`).
    pub(crate) fn parked_connections(&self) -> Vec<ParkedConnection> {
        let mut all = self.parked.clone();
        all.extend(self.conns.values().filter_map(|c| c.parkable()));
        all.sort_by_key(|p| p.local_port);
        all
    }

    /// Takes back a snapshot's parked connections (validated: they come from a file).
    pub(crate) fn set_parked(&mut self, parked: Vec<ParkedConnection>) -> Result<(), String> {
        parked::validate(&parked)?;
        for p in &parked {
            self.local_ports.insert(p.local_port);
        }
        self.parked = parked;
        Ok(())
    }

    /// The last host port handed out (kept across a snapshot so a restored VM does not reuse
    /// the ports of connections the guest saw before it).
    pub(crate) fn local_port_last(&self) -> u32 {
        self.local_port_last
    }

    /// Any value is fine: allocation keeps ports in `[2^30, 2^31)`.
    pub(crate) fn set_local_port_last(&mut self, port: u32) {
        self.local_port_last = port;
    }

    /// Whether something must happen on a timer (deadlines, or a paused listener).
    pub(crate) fn needs_timer(&self) -> bool {
        self.listener_paused
            || !self.handshakes.is_empty()
            || self.conns.values().any(|c| c.deadline.is_some())
    }

    /// TX processing must pause until RX drains the RST queue (so no RST is lost).
    pub(crate) fn tx_must_wait(&self) -> bool {
        self.rst_queue.len() >= RST_QUEUE_CAP
    }

    pub(crate) fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_ready.is_empty()
    }

    /// Accepts new host clients; they must then send `CONNECT <port>\n`.
    pub(crate) fn accept(&mut self, reg: &mut dyn FdRegistry) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Probably out of fds: the listener would stay readable and spin the loop,
                    // so stop polling it until the next timer tick.
                    limited_warn!(
                        self.log,
                        "vsock: accept on {}: {e}",
                        self.uds_path.display()
                    );
                    if reg.remove(self.listener.as_raw_fd()).is_ok() {
                        self.listener_paused = true;
                    }
                    return;
                }
            };
            if self.conn_count() >= MAX_CONNECTIONS {
                VsockMetrics::inc(&self.metrics.conns_over_limit);
                limited_warn!(
                    self.log,
                    "vsock: {MAX_CONNECTIONS} connections open, refusing host client"
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                limited_warn!(self.log, "vsock: making host client non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = reg.add(fd, EventSet::IN) {
                VsockMetrics::inc(&self.metrics.internal_errors);
                limited_warn!(self.log, "vsock: polling host client: {e}");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.connect_line;
            self.handshakes.insert(fd, Handshake::new(stream, deadline));
        }
    }

    /// An event on a host stream (handshake or connection). Returns false for unknown fds.
    pub(crate) fn handle_fd_event(
        &mut self,
        fd: RawFd,
        events: EventSet,
        reg: &mut dyn FdRegistry,
    ) -> bool {
        if self.handshakes.contains_key(&fd) {
            self.advance_handshake(fd, reg);
            return true;
        }
        let Some(&key) = self.conn_fds.get(&fd) else {
            return false;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_host_event(events);
        }
        self.sync(key, reg);
        true
    }

    fn advance_handshake(&mut self, fd: RawFd, reg: &mut dyn FdRegistry) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        match hs.advance() {
            HandshakeStatus::Pending => {}
            HandshakeStatus::Failed(why) => {
                VsockMetrics::inc(&self.metrics.connect_line_rejected);
                limited_warn!(self.log, "vsock: dropping host client: {why}");
                self.drop_handshake(fd, reg);
            }
            HandshakeStatus::Connect(peer_port) => {
                if let Some(i) = self.parked.iter().position(|p| p.peer_port == peer_port) {
                    self.take_over_parked(fd, i, reg);
                    return;
                }
                let Some(local_port) = self.allocate_local_port(peer_port) else {
                    limited_warn!(self.log, "vsock: no free host port; dropping host client");
                    self.drop_handshake(fd, reg);
                    return;
                };
                let Some(hs) = self.handshakes.remove(&fd) else {
                    return;
                };
                let key = ConnKey {
                    local_port,
                    peer_port,
                };
                let mut conn = Connection::new_local_init(
                    key,
                    self.guest_cid,
                    hs.stream,
                    self.timeouts,
                    self.metrics.clone(),
                );
                // The handshake's epoll registration carries over to the connection.
                conn.registered = Some(EventSet::IN);
                self.local_ports.insert(local_port);
                self.conn_fds.insert(fd, key);
                self.conns.insert(key, conn);
                self.sync(key, reg);
            }
        }
    }

    /// Hands the parked connection `i` to the host client of handshake `fd`.
    fn take_over_parked(&mut self, fd: RawFd, i: usize, reg: &mut dyn FdRegistry) {
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let saved = self.parked.swap_remove(i);
        let key = saved.key();
        log::info!(
            "vsock: a host client took over the connection to guest port {} kept from the snapshot",
            key.peer_port
        );
        VsockMetrics::inc(&self.metrics.conns_resumed);
        let mut conn = Connection::resume(
            &saved,
            self.guest_cid,
            hs.stream,
            self.timeouts,
            self.metrics.clone(),
        );
        conn.registered = Some(EventSet::IN);
        self.conn_fds.insert(fd, key);
        self.conns.insert(key, conn);
        self.sync(key, reg);
    }

    /// A guest packet for a parked connection: a credit update is noted; anything else ends
    /// it (RST unless the guest reset it itself), as the guest's side is no longer idle.
    fn guest_touched_parked(&mut self, i: usize, hdr: &PacketHeader) {
        if hdr.op == OP_CREDIT_UPDATE {
            let p = &mut self.parked[i];
            p.peer_buf_alloc = hdr.buf_alloc;
            p.peer_fwd_cnt = hdr.fwd_cnt;
            return;
        }
        let saved = self.parked.swap_remove(i);
        log::debug!(
            "vsock: guest op {} on the parked connection {:?}; dropping it",
            hdr.op,
            saved.key()
        );
        self.local_ports.remove(&saved.local_port);
        VsockMetrics::inc(&self.metrics.conns_closed);
        if hdr.op != OP_RST {
            self.enqueue_rst(saved.key());
        }
    }

    fn drop_handshake(&mut self, fd: RawFd, reg: &mut dyn FdRegistry) {
        // Unpoll before the stream (and its fd) is dropped.
        if let Some(hs) = self.handshakes.remove(&fd) {
            if let Err(e) = reg.remove(fd) {
                VsockMetrics::inc(&self.metrics.internal_errors);
                limited_warn!(self.log, "vsock: unpolling host client: {e}");
            }
            drop(hs);
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this finds one within that many tries.
        for _ in 0..=MAX_CONNECTIONS {
            self.local_port_last =
                (self.local_port_last.wrapping_add(1) & !(1 << 31)) | LOCAL_PORT_BASE;
            let port = self.local_port_last;
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.local_ports.contains(&port) && !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Routes one packet from the guest.
    pub(crate) fn handle_tx(
        &mut self,
        hdr: &PacketHeader,
        payload: &[u8],
        reg: &mut dyn FdRegistry,
    ) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            VsockMetrics::inc(&self.metrics.malformed_packets);
            limited_warn!(
                self.log,
                "vsock: dropping guest packet {} -> {} (guest CID is {})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            VsockMetrics::inc(&self.metrics.malformed_packets);
            if hdr.op != OP_RST {
                self.enqueue_rst(key);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.handle_tx(hdr, payload, &mut self.log);
            self.sync(key, reg);
            return;
        }
        if let Some(i) = self.parked.iter().position(|p| p.key() == key) {
            self.guest_touched_parked(i, hdr);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr, reg),
            // Nothing to reset.
            OP_RST => {}
            op => {
                if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op) {
                    VsockMetrics::inc(&self.metrics.malformed_packets);
                }
                self.enqueue_rst(key);
            }
        }
    }

    /// The guest connects to host port P: connect `<uds_path>_P`.
    fn guest_connect(&mut self, hdr: &PacketHeader, reg: &mut dyn FdRegistry) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conn_count() >= MAX_CONNECTIONS {
            VsockMetrics::inc(&self.metrics.conns_over_limit);
            limited_warn!(
                self.log,
                "vsock: {MAX_CONNECTIONS} connections open, refusing guest"
            );
            self.enqueue_rst(key);
            return;
        }
        let path = self.port_path(hdr.dst_port);
        match uds::connect_nonblocking(&path) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                let conn = Connection::new_peer_init(
                    key,
                    self.guest_cid,
                    stream,
                    hdr,
                    self.timeouts,
                    self.metrics.clone(),
                );
                self.conn_fds.insert(fd, key);
                self.conns.insert(key, conn);
                self.sync(key, reg);
            }
            Err(e) => {
                VsockMetrics::inc(&self.metrics.host_connect_failed);
                limited_warn!(
                    self.log,
                    "vsock: guest port {} -> {}: {e}",
                    hdr.src_port,
                    path.display()
                );
                self.enqueue_rst(key);
            }
        }
    }

    fn port_path(&self, port: u32) -> PathBuf {
        let mut p = OsString::from(self.uds_path.as_os_str());
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    fn enqueue_rst(&mut self, key: ConnKey) {
        // TX waits while the queue is full (`tx_must_wait`), so this only overflows if a caller
        // forgot to check; count it rather than grow without bound.
        if self.rst_queue.len() < RST_QUEUE_CAP {
            self.rst_queue.push_back(key);
        } else {
            VsockMetrics::inc(&self.metrics.internal_errors);
        }
    }

    /// Fills one RX buffer. Returns the bytes written, or `None` if nothing was pending after
    /// all (the buffer stays unused).
    pub(crate) fn fill_rx(
        &mut self,
        buf: &RxBuffer,
        mem: &GuestMemory,
        reg: &mut dyn FdRegistry,
    ) -> Option<usize> {
        if let Some(key) = self.rst_queue.pop_front() {
            let hdr = PacketHeader {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                len: 0,
                type_: TYPE_STREAM,
                op: OP_RST,
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            };
            VsockMetrics::inc(&self.metrics.resets_to_guest);
            return Some(if buf.write_header(mem, &hdr).is_ok() {
                HDR_LEN
            } else {
                VsockMetrics::inc(&self.metrics.internal_errors);
                0
            });
        }
        // Each queued connection gets one try: one that stays pending without producing
        // anything (e.g. data but a header-only buffer) goes to the back, not round again.
        for _ in 0..self.rx_ready.len() {
            let Some(key) = self.rx_ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_queue = false;
            let produced = conn.fill_rx(buf, mem, &mut self.scratch);
            self.sync(key, reg);
            if produced.is_some() {
                return produced;
            }
        }
        None
    }

    /// Resets what timed out; resumes a paused listener.
    pub(crate) fn on_timer(&mut self, now: Instant, reg: &mut dyn FdRegistry) {
        let expired: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            VsockMetrics::inc(&self.metrics.timeouts);
            limited_warn!(self.log, "vsock: host client sent no CONNECT line in time");
            self.drop_handshake(fd, reg);
        }
        let due: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key())
            .collect();
        for key in due {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.check_deadline(now);
            }
            self.sync(key, reg);
        }
        if self.listener_paused && reg.add(self.listener.as_raw_fd(), EventSet::IN).is_ok() {
            self.listener_paused = false;
        }
    }

    /// Brings a connection's epoll registration, host stream and RX-queue membership in line
    /// with its state, and removes it once finished. Call after every change to a connection.
    fn sync(&mut self, key: ConnKey, reg: &mut dyn FdRegistry) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.host_side_done() {
            if let Some(fd) = conn.stream().map(AsRawFd::as_raw_fd) {
                let want = conn.interest();
                let res = match conn.registered {
                    None if want.is_empty() => Ok(()),
                    None => reg.add(fd, want),
                    // Unwatched rather than watched for nothing: EPOLLHUP is reported even
                    // with an empty interest set and would spin the loop.
                    Some(_) if want.is_empty() => reg.remove(fd),
                    Some(cur) if cur != want => reg.modify(fd, want),
                    Some(_) => Ok(()),
                };
                match res {
                    Ok(()) => conn.registered = (!want.is_empty()).then_some(want),
                    Err(e) => {
                        VsockMetrics::inc(&self.metrics.internal_errors);
                        limited_warn!(self.log, "vsock: polling host stream of {key:?}: {e}");
                        conn.reset();
                    }
                }
            }
        }
        if conn.host_side_done() {
            if let Some(fd) = conn.stream().map(AsRawFd::as_raw_fd) {
                if conn.registered.take().is_some() {
                    if let Err(e) = reg.remove(fd) {
                        VsockMetrics::inc(&self.metrics.internal_errors);
                        limited_warn!(self.log, "vsock: unpolling host stream of {key:?}: {e}");
                    }
                }
                self.conn_fds.remove(&fd);
            }
            conn.drop_stream();
        }
        if conn.is_closed() {
            let host_initiated = conn.host_initiated();
            self.conns.remove(&key);
            if host_initiated {
                self.local_ports.remove(&key.local_port);
            }
            VsockMetrics::inc(&self.metrics.conns_closed);
            return;
        }
        if conn.has_pending_rx() && !conn.in_rx_queue {
            conn.in_rx_queue = true;
            self.rx_ready.push_back(key);
        }
    }
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("uds_path", &self.uds_path)
            .field("conns", &self.conns.len())
            .field("handshakes", &self.handshakes.len())
            .field("rx_ready", &self.rx_ready.len())
            .field("rst_queue", &self.rst_queue.len())
            .finish()
    }
}
