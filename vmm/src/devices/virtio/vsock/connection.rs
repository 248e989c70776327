//! One vsock stream spliced to one host Unix stream: state machine and credit flow control.
//!
//! Credit (virtio spec 5.10.6.3): each side advertises `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed). A sender may have at most `peer_buf_alloc - (sent -
//! peer_fwd_cnt)` bytes in flight. Our receive buffer is `tx_buf` (guest bytes the host stream
//! did not take yet), and "consumed" means written to the host stream.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::super::device::GuestMemory;
use super::metrics::{limited_warn, LogLimiter, VsockMetrics};
use super::packet::{
    PacketHeader, RxBuffer, HDR_LEN, HOST_CID, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::parked::ParkedConnection;
use super::uds;

/// A connection is identified by its host-side port and its guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

impl ParkedConnection {
    pub(crate) fn key(&self) -> ConnKey {
        ConnKey {
            local_port: self.local_port,
            peer_port: self.peer_port,
        }
    }
}

/// How long the device waits on slow or silent parties.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// A host client must send its `CONNECT` line within this.
    pub connect_line: Duration,
    /// The guest must answer a host-initiated REQUEST within this.
    pub response: Duration,
    /// After the guest shut down its sending side, the host must drain what we buffered.
    pub shutdown_drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Generous: the guest can be very slow under emulated KVM.
        Self {
            connect_line: Duration::from_secs(10),
            response: Duration::from_secs(30),
            shutdown_drain: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// A host client asked for a guest port; REQUEST sent or pending, waiting for the answer.
    LocalInit,
    /// Data may flow, as far as the shutdown flags allow.
    Established,
    /// Aborted: the host stream is to be closed and an RST is pending for the guest.
    Resetting,
    /// Finished; the muxer removes the connection.
    Closed,
}

/// Control packets waiting for an RX buffer.
#[derive(Debug, Default)]
struct PendingRx {
    request: bool,
    response: bool,
    rst: bool,
    credit_update: bool,
    credit_request: bool,
}

#[derive(Debug)]
pub(crate) struct Connection {
    key: ConnKey,
    guest_cid: u64,
    /// Created for a host client's `CONNECT` (its local port was allocated by the muxer).
    host_initiated: bool,
    state: ConnState,
    /// `None` once closed (the muxer deregisters it from epoll first, then drops it).
    stream: Option<UnixStream>,
    pending: PendingRx,
    /// The host stream signalled data or EOF that has not been read yet (waiting for an RX
    /// buffer or for credit).
    host_readable: bool,
    /// The host closed both directions (EPOLLHUP).
    host_hup: bool,
    /// The host stream reached EOF; the guest got (or will get) a SHUTDOWN.
    host_eof: bool,
    /// We shut down the write side of the host stream after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    guest_shut_send: bool,
    guest_shut_rcv: bool,

    /// Guest → host bytes the host stream did not take yet; the first `preamble` bytes are the
    /// `OK <port>\n` line, which is ours and not guest data.
    tx_buf: VecDeque<u8>,
    preamble: usize,
    buf_alloc: u32,
    /// Guest bytes received / forwarded to the host stream / forwarded as last told the guest.
    rx_from_guest: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_to_peer: Wrapping<u32>,

    /// The guest's receive buffer, its consumed count, and what we sent it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    credit_request_sent: bool,

    timeouts: Timeouts,
    pub deadline: Option<Instant>,
    /// Epoll interest currently registered for `stream` (managed by the muxer).
    pub registered: Option<EventSet>,
    /// Whether the key sits in the muxer's RX-ready queue (managed by the muxer).
    pub in_rx_queue: bool,
    metrics: Arc<VsockMetrics>,
}

/// Result of trying to read the host stream for the guest.
enum HostRead {
    Data(usize),
    Eof,
    Nothing,
    /// The buffer only fits a header.
    NoRoom,
    Failed,
}

impl Connection {
    fn new(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        state: ConnState,
        timeouts: Timeouts,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        Self {
            key,
            guest_cid,
            host_initiated: state == ConnState::LocalInit,
            state,
            stream: Some(stream),
            pending: PendingRx::default(),
            host_readable: false,
            host_hup: false,
            host_eof: false,
            host_write_shut: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            tx_buf: VecDeque::new(),
            preamble: 0,
            buf_alloc: super::CONN_BUF_ALLOC,
            rx_from_guest: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_request_sent: false,
            timeouts,
            deadline: None,
            registered: None,
            in_rx_queue: false,
            metrics,
        }
    }

    /// A host client asked for guest port `key.peer_port`: a REQUEST goes to the guest.
    pub(crate) fn new_local_init(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        timeouts: Timeouts,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        let mut c = Self::new(
            key,
            guest_cid,
            stream,
            ConnState::LocalInit,
            timeouts,
            metrics,
        );
        c.pending.request = true;
        c.deadline = Some(Instant::now() + timeouts.response);
        c
    }

    /// The guest's REQUEST `req` was connected to a host listener: a RESPONSE goes back.
    pub(crate) fn new_peer_init(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        req: &PacketHeader,
        timeouts: Timeouts,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        let mut c = Self::new(
            key,
            guest_cid,
            stream,
            ConnState::Established,
            timeouts,
            metrics,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending.response = true;
        VsockMetrics::inc(&c.metrics.conns_established);
        c
    }

    /// A connection kept from a snapshot, taken over by a host client that asked for its
    /// guest port: it continues with the saved counters, and the client gets `OK <port>\n` now
    /// (the guest accepted it before the snapshot).
    pub(crate) fn resume(
        saved: &ParkedConnection,
        guest_cid: u64,
        stream: UnixStream,
        timeouts: Timeouts,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        let mut c = Self::new(
            saved.key(),
            guest_cid,
            stream,
            ConnState::Established,
            timeouts,
            metrics,
        );
        c.host_initiated = true;
        c.rx_from_guest = Wrapping(saved.fwd_cnt);
        c.fwd_cnt = Wrapping(saved.fwd_cnt);
        c.last_fwd_cnt_to_peer = Wrapping(saved.last_fwd_cnt_to_peer);
        c.peer_buf_alloc = saved.peer_buf_alloc;
        c.peer_fwd_cnt = Wrapping(saved.peer_fwd_cnt);
        c.rx_cnt = Wrapping(saved.rx_cnt);
        c.send_ok_line();
        c
    }

    /// The state to park this connection across a snapshot, if it is idle: established by a
    /// host client, nothing buffered or owed in either direction, neither side shut down.
    pub(crate) fn parkable(&self) -> Option<ParkedConnection> {
        let p = &self.pending;
        let idle = self.state == ConnState::Established
            && self.host_initiated
            && self.stream.is_some()
            && self.tx_buf.is_empty()
            && self.rx_from_guest == self.fwd_cnt
            && !(p.request || p.response || p.rst || p.credit_update || p.credit_request)
            && !(self.host_readable || self.host_hup || self.host_eof || self.host_write_shut)
            && !(self.guest_shut_send || self.guest_shut_rcv)
            && self.deadline.is_none();
        idle.then_some(ParkedConnection {
            local_port: self.key.local_port,
            peer_port: self.key.peer_port,
            fwd_cnt: self.fwd_cnt.0,
            last_fwd_cnt_to_peer: self.last_fwd_cnt_to_peer.0,
            peer_buf_alloc: self.peer_buf_alloc,
            peer_fwd_cnt: self.peer_fwd_cnt.0,
            rx_cnt: self.rx_cnt.0,
        })
    }

    pub(crate) fn key(&self) -> ConnKey {
        self.key
    }

    /// Guest bytes waiting for the host stream (tests).
    #[cfg(test)]
    pub(crate) fn tx_buffered(&self) -> usize {
        self.tx_buf.len() - self.preamble
    }

    pub(crate) fn host_initiated(&self) -> bool {
        self.host_initiated
    }

    pub(crate) fn stream(&self) -> Option<&UnixStream> {
        self.stream.as_ref()
    }

    /// Whether the host stream should be closed now (the muxer deregisters it, then calls
    /// [`Self::drop_stream`]).
    pub(crate) fn host_side_done(&self) -> bool {
        matches!(self.state, ConnState::Resetting | ConnState::Closed) && self.stream.is_some()
    }

    pub(crate) fn drop_stream(&mut self) {
        self.stream = None;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == ConnState::Closed
    }

    /// Bytes we may still send the guest on this connection.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.stream.is_some()
            && !self.host_eof
            && !self.guest_shut_rcv
    }

    fn wants_host_read(&self) -> bool {
        self.can_read_host() && self.host_readable && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub(crate) fn has_pending_rx(&self) -> bool {
        let p = &self.pending;
        p.rst
            || (self.state != ConnState::Closed
                && (p.request || p.response || p.credit_update || p.credit_request))
            || self.wants_host_read()
    }

    /// Epoll events the host stream should be watched for.
    pub(crate) fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.stream.is_none() {
            return set;
        }
        // Not while a read is already due: level-triggered EPOLLIN would fire in a loop while
        // the guest has no RX buffer.
        if self.can_read_host() && !self.host_readable && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Epoll reported `events` on the host stream.
    pub(crate) fn on_host_event(&mut self, events: EventSet) {
        if events.contains(EventSet::HANG_UP) {
            self.host_hup = true;
        }
        let readable = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if events.intersects(readable) && self.can_read_host() {
            self.host_readable = true;
            if self.peer_credit() == 0 {
                self.ask_for_credit();
            }
        }
        if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP)
            && !self.tx_buf.is_empty()
        {
            self.flush_tx();
        }
    }

    /// Handles a packet from the guest (already routed to this connection).
    /// `log` rate-limits what the guest can make us log.
    pub(crate) fn handle_tx(&mut self, hdr: &PacketHeader, payload: &[u8], log: &mut LogLimiter) {
        // Every packet carries the guest's current credit.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        match (self.state, hdr.op) {
            (ConnState::LocalInit, OP_RESPONSE) => {
                self.state = ConnState::Established;
                self.deadline = None;
                VsockMetrics::inc(&self.metrics.conns_established);
                self.send_ok_line();
            }
            (ConnState::LocalInit | ConnState::Established, OP_RST) => {
                VsockMetrics::inc(&self.metrics.resets_from_guest);
                self.close_quietly();
            }
            (ConnState::Established, OP_RW) => self.recv_guest_data(payload, log),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => self.pending.credit_update = true,
            (ConnState::Established, OP_SHUTDOWN) => self.recv_shutdown(hdr.flags),
            (ConnState::LocalInit | ConnState::Established, _) => {
                VsockMetrics::inc(&self.metrics.malformed_packets);
                limited_warn!(
                    log,
                    "vsock: op {} unexpected in state {:?} on {:?}; resetting",
                    hdr.op,
                    self.state,
                    self.key
                );
                self.reset();
            }
            // Already aborted: nothing the guest says matters any more.
            (ConnState::Resetting | ConnState::Closed, _) => {}
        }
    }

    /// Tells the host client `OK <host port>\n` (hybrid vsock): ours, not guest data.
    fn send_ok_line(&mut self) {
        let ack = format!("OK {}\n", self.key.local_port);
        self.preamble = ack.len();
        self.tx_buf.extend(ack.as_bytes());
        self.flush_tx();
    }

    fn recv_guest_data(&mut self, payload: &[u8], log: &mut LogLimiter) {
        if payload.is_empty() {
            return;
        }
        if self.guest_shut_send || self.host_write_shut {
            VsockMetrics::inc(&self.metrics.malformed_packets);
            self.reset();
            return;
        }
        self.rx_from_guest += Wrapping(payload.len() as u32);
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match self.write_host(payload) {
                Ok(n) => written = n,
                Err(()) => return,
            }
        }
        let rest = &payload[written..];
        if !rest.is_empty() {
            let buffered = self.tx_buf.len() - self.preamble;
            if buffered + rest.len() > self.buf_alloc as usize {
                VsockMetrics::inc(&self.metrics.credit_violations);
                limited_warn!(log, "vsock: guest exceeded its credit on {:?}", self.key);
                self.reset();
                return;
            }
            self.tx_buf.extend(rest);
        }
        self.forwarded(written);
    }

    fn recv_shutdown(&mut self, flags: u32) {
        self.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        self.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
        if self.guest_shut_rcv {
            self.host_readable = false;
        }
        if self.guest_shut_send {
            if self.tx_buf.is_empty() {
                self.shut_host_write();
            } else if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.timeouts.shutdown_drain);
            }
        }
        self.check_done();
    }

    /// Writes as much of `data` as the host stream takes now. On a hard error the connection
    /// is reset and `Err` returned.
    fn write_host(&mut self, data: &[u8]) -> Result<usize, ()> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(());
        };
        match write_some(stream, data) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.host_write_failed(&e);
                Err(())
            }
        }
    }

    fn host_write_failed(&mut self, e: &io::Error) {
        if !is_disconnect(e) {
            VsockMetrics::inc(&self.metrics.host_io_errors);
        }
        log::debug!("vsock: writing host stream of {:?}: {e}", self.key);
        self.reset();
    }

    /// Writes buffered bytes to the host stream (on EPOLLOUT, or right after queueing).
    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let Some(stream) = self.stream.as_ref() else {
                return;
            };
            let (front, _) = self.tx_buf.as_slices();
            let front_len = front.len();
            let n = match write_some(stream, front) {
                Ok(n) => n,
                Err(e) => {
                    self.host_write_failed(&e);
                    return;
                }
            };
            self.tx_buf.drain(..n);
            let ours = n.min(self.preamble);
            self.preamble -= ours;
            self.forwarded(n - ours);
            if n < front_len {
                break;
            }
        }
        if self.tx_buf.is_empty() {
            // Do not keep up to `buf_alloc` bytes per idle connection.
            if self.tx_buf.capacity() > MAX_PAYLOAD {
                self.tx_buf = VecDeque::new();
            }
            if self.guest_shut_send {
                self.deadline = None;
                self.shut_host_write();
            }
        }
        self.check_done();
    }

    /// Accounts `n` guest bytes handed to the host stream.
    fn forwarded(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.fwd_cnt += Wrapping(n as u32);
        VsockMetrics::add(&self.metrics.tx_bytes, n as u64);
        // What the guest believes we still hold; once it believes less than half of our buffer
        // is free, tell it what was consumed since (so it never stalls on stale credit).
        let believed_used = (self.rx_from_guest - self.last_fwd_cnt_to_peer).0;
        let believed_free = self.buf_alloc.saturating_sub(believed_used);
        if self.fwd_cnt != self.last_fwd_cnt_to_peer && believed_free < self.buf_alloc / 2 {
            self.pending.credit_update = true;
        }
    }

    fn shut_host_write(&mut self) {
        if self.host_write_shut {
            return;
        }
        self.host_write_shut = true;
        if let Some(stream) = self.stream.as_ref() {
            if let Err(e) = stream.shutdown(Shutdown::Write) {
                log::debug!("vsock: shutdown(Write) of {:?}: {e}", self.key);
            }
        }
    }

    /// Once neither side can send any more, tell the guest we are gone (RST completes the
    /// guest's close) and close the host stream.
    fn check_done(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        let guest_done = self.guest_shut_send && self.tx_buf.is_empty();
        if guest_done && (self.guest_shut_rcv || self.host_eof) {
            self.abort();
        }
    }

    fn ask_for_credit(&mut self) {
        if !self.credit_request_sent {
            self.pending.credit_request = true;
        }
    }

    /// Aborts after an error or timeout: RST to the guest, host stream closed.
    pub(crate) fn reset(&mut self) {
        if matches!(self.state, ConnState::Resetting | ConnState::Closed) {
            return;
        }
        self.abort();
    }

    fn abort(&mut self) {
        self.state = ConnState::Resetting;
        self.pending = PendingRx {
            rst: true,
            ..PendingRx::default()
        };
        self.host_readable = false;
        self.tx_buf = VecDeque::new();
        self.preamble = 0;
        self.deadline = None;
    }

    /// Closes without telling the guest (it reset the connection itself).
    fn close_quietly(&mut self) {
        self.state = ConnState::Closed;
        self.pending = PendingRx::default();
        self.host_readable = false;
        self.tx_buf = VecDeque::new();
        self.deadline = None;
    }

    /// Called by the muxer's timer: resets the connection if its deadline passed.
    pub(crate) fn check_deadline(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if d <= now => {
                VsockMetrics::inc(&self.metrics.timeouts);
                log::debug!("vsock: {:?} timed out in state {:?}", self.key, self.state);
                self.reset();
                true
            }
            _ => false,
        }
    }

    fn header(&self, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Fills `buf` with this connection's next packet for the guest. Returns the number of
    /// bytes written to the chain, or `None` if there was nothing to send after all.
    pub(crate) fn fill_rx(
        &mut self,
        buf: &RxBuffer,
        mem: &GuestMemory,
        scratch: &mut [u8],
    ) -> Option<usize> {
        let hdr = self.next_packet(buf, mem, scratch)?;
        if hdr.op == OP_RST {
            VsockMetrics::inc(&self.metrics.resets_to_guest);
        } else {
            // The packet carries our fwd_cnt: the guest's view of our buffer is now current.
            self.last_fwd_cnt_to_peer = self.fwd_cnt;
            self.pending.credit_update = false;
        }
        if buf.write_header(mem, &hdr).is_err() {
            // Cannot happen for a validated chain; if it does, the stream is out of sync.
            VsockMetrics::inc(&self.metrics.internal_errors);
            self.reset();
            return Some(0);
        }
        Some(HDR_LEN + hdr.len as usize)
    }

    fn next_packet(
        &mut self,
        buf: &RxBuffer,
        mem: &GuestMemory,
        scratch: &mut [u8],
    ) -> Option<PacketHeader> {
        if self.pending.rst {
            self.pending.rst = false;
            self.state = ConnState::Closed;
            let mut hdr = self.header(OP_RST);
            hdr.buf_alloc = 0;
            hdr.fwd_cnt = 0;
            return Some(hdr);
        }
        if !matches!(self.state, ConnState::LocalInit | ConnState::Established) {
            return None;
        }
        if self.pending.request {
            self.pending.request = false;
            return Some(self.header(OP_REQUEST));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some(self.header(OP_RESPONSE));
        }
        match self.read_host(buf, mem, scratch) {
            HostRead::Data(n) => {
                let mut hdr = self.header(OP_RW);
                hdr.len = n as u32;
                return Some(hdr);
            }
            HostRead::Eof => {
                let mut hdr = self.header(OP_SHUTDOWN);
                // EOF means the host will not send; a full close (HUP) also means it will not
                // receive, which lets the guest close right away.
                hdr.flags = SHUTDOWN_SEND | if self.host_hup { SHUTDOWN_RCV } else { 0 };
                self.check_done();
                return Some(hdr);
            }
            HostRead::Failed => {
                self.reset();
                return self.next_packet(buf, mem, scratch);
            }
            // Use the header-only buffer for a credit update rather than leave it at the head
            // of the queue, where it would block the buffers behind it.
            HostRead::NoRoom => return Some(self.header(OP_CREDIT_UPDATE)),
            HostRead::Nothing => {}
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            self.credit_request_sent = true;
            return Some(self.header(OP_CREDIT_REQUEST));
        }
        if self.pending.credit_update {
            return Some(self.header(OP_CREDIT_UPDATE));
        }
        None
    }

    /// Reads host bytes straight into the guest's RX buffer, within the guest's credit.
    fn read_host(&mut self, buf: &RxBuffer, mem: &GuestMemory, scratch: &mut [u8]) -> HostRead {
        if !self.wants_host_read() {
            return HostRead::Nothing;
        }
        let want = (self.peer_credit() as usize)
            .min(buf.payload_capacity())
            .min(scratch.len());
        if want == 0 {
            return HostRead::NoRoom;
        }
        let Some(stream) = self.stream.as_mut() else {
            return HostRead::Nothing;
        };
        let res = loop {
            match stream.read(&mut scratch[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match res {
            Ok(0) => {
                self.host_eof = true;
                self.host_readable = false;
                HostRead::Eof
            }
            Ok(n) => {
                if buf.write_payload(mem, &scratch[..n]).is_err() {
                    VsockMetrics::inc(&self.metrics.internal_errors);
                    return HostRead::Failed;
                }
                self.rx_cnt += Wrapping(n as u32);
                VsockMetrics::add(&self.metrics.rx_bytes, n as u64);
                // A short read means the socket is drained: wait for EPOLLIN again.
                if n < want {
                    self.host_readable = false;
                }
                if self.host_readable && self.peer_credit() == 0 {
                    self.ask_for_credit();
                }
                HostRead::Data(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_readable = false;
                HostRead::Nothing
            }
            Err(e) => {
                if !is_disconnect(&e) {
                    VsockMetrics::inc(&self.metrics.host_io_errors);
                }
                log::debug!("vsock: reading host stream of {:?}: {e}", self.key);
                HostRead::Failed
            }
        }
    }
}

/// Writes what `stream` takes now (stops at EAGAIN).
fn write_some(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match uds::send_nosignal(stream, &data[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Errors that just mean the host end went away.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}
