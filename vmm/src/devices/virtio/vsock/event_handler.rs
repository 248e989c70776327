//! Plugs the vsock device into the event loop (`event-manager`).
//!
//! Before activation only `activate_evt` is watched. `activate()` runs on the thread that
//! handles the guest's MMIO writes and cannot reach the event manager, so it signals
//! `activate_evt`; on that event the device registers its queue eventfds, the host listener and
//! the timer. Host streams are (un)registered by the muxer as connections come and go.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Vsock;
use super::metrics::{limited_warn, VsockMetrics};
use super::muxer::FdRegistry;
use super::{EVQ_INDEX, RXQ_INDEX, TXQ_INDEX};

/// [`FdRegistry`] over the event manager's per-subscriber operations.
struct OpsRegistry<'a, 'b> {
    ops: &'a mut EventOps<'b>,
}

fn to_io(e: event_manager::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl FdRegistry for OpsRegistry<'_, '_> {
    fn add(&mut self, fd: RawFd, events: EventSet) -> io::Result<()> {
        self.ops.add(Events::new_raw(fd, events)).map_err(to_io)
    }

    fn modify(&mut self, fd: RawFd, events: EventSet) -> io::Result<()> {
        self.ops.modify(Events::new_raw(fd, events)).map_err(to_io)
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.ops.remove(Events::empty_raw(fd)).map_err(to_io)
    }
}

impl Vsock {
    fn on_activate(&mut self, reg: &mut dyn FdRegistry) {
        if let Err(e) = self.core.activate_evt.read() {
            log::warn!("vsock: reading activate event: {e}");
        }
        if self.subscribed {
            return;
        }
        // Activation happens once: stop watching its event.
        if let Err(e) = reg.remove(self.core.activate_evt.as_raw_fd()) {
            log::warn!("vsock: unpolling activate event: {e}");
        }
        let fds = [
            self.queue_evt(RXQ_INDEX).as_raw_fd(),
            self.queue_evt(TXQ_INDEX).as_raw_fd(),
            self.queue_evt(EVQ_INDEX).as_raw_fd(),
            self.muxer.listener_fd(),
            self.timer.as_raw_fd(),
        ];
        for fd in fds {
            if let Err(e) = reg.add(fd, EventSet::IN) {
                VsockMetrics::inc(&self.metrics().internal_errors);
                log::error!("vsock: cannot poll fd {fd}; the device will not work: {e}");
            }
        }
        self.subscribed = true;
        // The guest may have queued buffers before we were listening.
        self.pump(reg);
    }

    fn drain_queue_evt(&mut self, index: usize) {
        if let Err(e) = self.queue_evt(index).read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                limited_warn!(
                    self.log_limiter(),
                    "vsock: reading queue {index} event: {e}"
                );
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!("vsock: cannot poll the activate event; the device will not work: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let mut reg = OpsRegistry { ops };
        if fd == self.core.activate_evt.as_raw_fd() {
            self.on_activate(&mut reg);
            return;
        }
        if !self.subscribed {
            return;
        }
        if fd == self.queue_evt(RXQ_INDEX).as_raw_fd() {
            // New RX buffers.
            self.drain_queue_evt(RXQ_INDEX);
        } else if fd == self.queue_evt(TXQ_INDEX).as_raw_fd() {
            self.drain_queue_evt(TXQ_INDEX);
        } else if fd == self.queue_evt(EVQ_INDEX).as_raw_fd() {
            // The event queue only carries transport resets, which we never send.
            self.drain_queue_evt(EVQ_INDEX);
            return;
        } else if fd == self.muxer.listener_fd() {
            self.muxer.accept(&mut reg);
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer(&mut reg);
        } else if !self.muxer.handle_fd_event(fd, events.event_set(), &mut reg) {
            // Not ours any more; stop watching it so it cannot spin the loop.
            limited_warn!(self.log_limiter(), "vsock: event on unknown fd {fd}");
            let _ = reg.remove(fd);
            return;
        }
        self.pump(&mut reg);
    }
}
