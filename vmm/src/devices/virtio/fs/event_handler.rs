//! Plugs the file system device into the event loop (`event-manager`).
//!
//! `activate()` runs on the vCPU thread that handled the guest's MMIO write and cannot reach
//! the event manager, so it signals `activate_evt`; on that event (here, on the event thread)
//! the device registers its queue eventfds once and starts a FUSE session. The activate event
//! stays watched: after a driver reset the device can be activated again.
//!
//! `init` runs on the thread that will serve the queues (the event manager calls it from
//! `add_subscriber`; the VMM adds its subscribers on the event thread, before that thread's
//! seccomp filter is installed): it drops that thread's `CAP_MKNOD`, `CAP_FSETID` and
//! `CAP_SETFCAP` ([`super::privileges`]).

use std::io;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;
use super::{privileges, NUM_QUEUES};

impl Fs {
    fn on_activate(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.core.activate_evt.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("virtio-fs {}: reading activate event: {e}", self.tag());
            }
        }
        if !self.is_active() {
            // Reset again before we got here.
            return;
        }
        if !self.subscribed {
            for index in 0..NUM_QUEUES {
                let fd = self.queue_evt(index).as_raw_fd();
                if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                    log::error!(
                        "virtio-fs {}: cannot poll queue {index}; the device will not work: {e}",
                        self.tag()
                    );
                }
            }
            self.subscribed = true;
        }
        self.start_session();
        // The guest may have queued requests before we were listening.
        for index in 0..NUM_QUEUES {
            self.serve(index);
        }
    }

    /// Serves queue `index`; if it still has requests after a round, signals its eventfd so
    /// the rest is served after other devices had their turn.
    fn serve(&mut self, index: usize) {
        if self.process_queue(index) {
            if let Err(e) = self.queue_evt(index).write(1) {
                log::warn!("virtio-fs {}: re-signalling queue {index}: {e}", self.tag());
            }
        }
    }

    fn is_active(&self) -> bool {
        crate::devices::virtio::device::VirtioDevice::is_activated(self)
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = privileges::drop_for_serving() {
            // Requests served from a thread that kept them are refused (device.rs).
            log::error!(
                "virtio-fs {}: dropping CAP_MKNOD/CAP_FSETID/CAP_SETFCAP on the serving \
                 thread: {e}; the device will refuse every request",
                self.tag()
            );
        }
        if let Err(e) = ops.add(Events::new(&self.core.activate_evt, EventSet::IN)) {
            log::error!(
                "virtio-fs {}: cannot poll the activate event; the device will not work: {e}",
                self.tag()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.core.activate_evt.as_raw_fd() {
            self.on_activate(ops);
            return;
        }
        let Some(index) = (0..NUM_QUEUES).find(|&i| self.queue_evt(i).as_raw_fd() == fd) else {
            log::warn!("virtio-fs {}: event on unknown fd {fd}", self.tag());
            let _ = ops.remove(Events::empty_raw(fd));
            return;
        };
        if let Err(e) = self.queue_evt(index).read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("virtio-fs {}: reading queue {index} event: {e}", self.tag());
            }
        }
        // Notifications that arrive while the device is reset are dropped with the queue.
        self.serve(index);
    }
}
