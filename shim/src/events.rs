//! Publishing task events to containerd, in order, from one thread, so a slow containerd never
//! holds a task lock and TaskExit can never overtake the TaskStart before it.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use protobuf::MessageDyn;

/// Where events go.
pub trait EventSink: Send + Sync {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>);
}

type Queued = (&'static str, Box<dyn MessageDyn>);

/// Forwards events to containerd's event service through a queue thread.
pub struct ContainerdEvents {
    tx: Mutex<Sender<Queued>>,
}

impl ContainerdEvents {
    pub fn new(publisher: RemotePublisher, namespace: String) -> std::io::Result<ContainerdEvents> {
        let (tx, rx) = channel::<Queued>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for (topic, event) in rx {
                    if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event)
                    {
                        log::warn!("publishing {topic}: {e}");
                    }
                }
            })?;
        Ok(ContainerdEvents { tx: Mutex::new(tx) })
    }
}

impl EventSink for ContainerdEvents {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send((topic, event)).is_err() {
            log::warn!("event queue closed; dropped {topic}");
        }
    }
}
