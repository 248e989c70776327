//! Plugs the NIC into the event loop (`event-manager`).
//!
//! Before activation only `activate_evt` is watched (activation happens on the vCPU thread
//! that handles the guest's MMIO write, which cannot reach the event manager). Then: the RX
//! queue's eventfd (the guest posted buffers), the TX queue's (frames to send) and the tap
//! (frames to receive). The tap is level-triggered, so it leaves the interest list while a
//! frame waits for an RX buffer and comes back when the guest posts one; TX work past one
//! burst re-kicks the TX eventfd, so neither direction can starve the other.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::super::device::VirtioDevice;
use super::device::Net;
use super::{RXQ_INDEX, TXQ_INDEX};

impl Net {
    fn poll_tap(&mut self, ops: &mut EventOps, on: bool) {
        let Some(fd) = self.tap.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        if on == self.tap_polled {
            return;
        }
        let r = if on {
            ops.add(Events::new_raw(fd, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        match r {
            Ok(()) => self.tap_polled = on,
            Err(e) => log::error!("virtio-net: (un)polling the tap: {e}"),
        }
    }

    fn on_activate(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.core.activate_evt.read() {
            log::warn!("virtio-net: reading activate event: {e}");
        }
        if !self.subscribed {
            for q in [RXQ_INDEX, TXQ_INDEX] {
                let fd = self.queue_evt(q).as_raw_fd();
                if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                    log::error!("virtio-net: cannot poll queue {q}; the device will not work: {e}");
                }
            }
            self.subscribed = true;
        }
        self.poll_tap(ops, true);
        // The guest may have queued frames before we were listening.
        self.pump(ops, true);
    }

    /// Moves what can move; raises the interrupt once if a used ring changed.
    fn pump(&mut self, ops: &mut EventOps, tx: bool) {
        let mut used = false;
        if tx {
            let (tx_used, more) = self.process_tx();
            used |= tx_used;
            if more {
                // The rest on a later round, after the other fds had their turn.
                match self.queue_evt(TXQ_INDEX).write(1) {
                    Ok(()) => self.self_kicks += 1,
                    Err(e) => log::warn!("virtio-net: re-kicking TX: {e}"),
                }
            }
        }
        let rx = self.process_rx();
        used |= rx.used;
        self.poll_tap(ops, !rx.blocked);
        if used {
            self.signal_used();
            self.log_now_and_then();
        }
    }

    fn drain(&mut self, q: usize) {
        match self.core.drain_queue_evt(q) {
            Ok(n) => self.count_kicks(q, n),
            Err(e) => log::warn!("virtio-net: reading queue {q} event: {e}"),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!(
                "virtio-net: cannot poll the activate event; the device will not work: {e}"
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            self.on_activate(ops);
            return;
        }
        let rx_evt = self.queue_evt(RXQ_INDEX).as_raw_fd();
        let tx_evt = self.queue_evt(TXQ_INDEX).as_raw_fd();
        if fd == rx_evt || fd == tx_evt {
            self.drain(if fd == rx_evt { RXQ_INDEX } else { TXQ_INDEX });
        }
        if !self.is_activated() {
            // Reset by the guest: nothing to move until it activates the device again.
            self.poll_tap(ops, false);
            return;
        }
        if fd == rx_evt {
            // New RX buffers: a waiting frame can go, and the tap is read again.
            self.pump(ops, false);
        } else if fd == tx_evt {
            self.pump(ops, true);
        } else if self.tap.as_ref().is_some_and(|t| t.as_raw_fd() == fd) {
            self.pump(ops, false);
        } else {
            log::warn!("virtio-net: event on unknown fd {fd}");
            let _ = ops.remove(Events::empty_raw(fd));
        }
    }
}
