//! Publishing task events to containerd, in order, from one thread, so a slow containerd never
//! holds a task lock and TaskExit can never overtake the TaskStart before it.
//!
//! containerd may restart while its shims live on (it reconnects to them). The event
//! connection then breaks; the publisher keeps the event it could not deliver, reconnects to
//! containerd's ttrpc address with backoff and sends it again, then the rest in order: no
//! event — TaskExit above all — is dropped because containerd was away. (containerd
//! de-duplicates nothing, but a re-sent event is only ever one whose forward failed.)
//! Undelivered events wait in memory; past [`MAX_BACKLOG`] the oldest events other than
//! TaskExit/TaskOOM/TaskDelete are dropped, with a log line.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_sync::EventsClient;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use protobuf::MessageDyn;

/// Where events go.
pub trait EventSink: Send + Sync {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>);
}

/// Most events kept while containerd cannot be reached.
pub const MAX_BACKLOG: usize = 4096;
/// Bound on one forward call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Topics never dropped from the backlog.
fn must_deliver(topic: &str) -> bool {
    topic == topics::TASK_EXIT_EVENT_TOPIC
        || topic == topics::TASK_OOM_EVENT_TOPIC
        || topic == topics::TASK_DELETE_EVENT_TOPIC
}

/// The connection to containerd's event service.
pub trait Forwarder: Send {
    /// Sends one event; an error means it was not delivered.
    fn forward(&mut self, req: &ForwardRequest) -> Result<(), String>;
}

/// containerd's ttrpc event service at `address`, connected on demand, reconnected after a
/// failure.
pub struct TtrpcForwarder {
    address: String,
    client: Option<EventsClient>,
}

impl TtrpcForwarder {
    pub fn new(address: &str) -> TtrpcForwarder {
        TtrpcForwarder {
            address: address.to_string(),
            client: None,
        }
    }
}

impl Forwarder for TtrpcForwarder {
    fn forward(&mut self, req: &ForwardRequest) -> Result<(), String> {
        if self.client.is_none() {
            let url = if self.address.contains("://") {
                self.address.clone()
            } else {
                format!("unix://{}", self.address)
            };
            let c = ttrpc::Client::connect(&url)
                .map_err(|e| format!("connecting to {}: {e}", self.address))?;
            self.client = Some(EventsClient::new(c));
        }
        let Some(client) = self.client.as_ref() else {
            return Err("no connection".into());
        };
        let ctx = ttrpc::context::with_duration(FORWARD_TIMEOUT);
        match client.forward(ctx, req) {
            Ok(_) => Ok(()),
            Err(e) => {
                // Whatever broke, start from a fresh connection next time.
                self.client = None;
                Err(e.to_string())
            }
        }
    }
}

type Queued = (&'static str, ForwardRequest);

/// Forwards events to containerd through a queue thread.
pub struct ContainerdEvents {
    tx: Mutex<Sender<Queued>>,
    namespace: String,
}

impl ContainerdEvents {
    /// Publishes to containerd's ttrpc address (`TTRPC_ADDRESS`).
    pub fn new(ttrpc_address: &str, namespace: String) -> std::io::Result<ContainerdEvents> {
        Self::with_forwarder(Box::new(TtrpcForwarder::new(ttrpc_address)), namespace)
    }

    pub fn with_forwarder(
        forwarder: Box<dyn Forwarder>,
        namespace: String,
    ) -> std::io::Result<ContainerdEvents> {
        let (tx, rx) = channel::<Queued>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || deliver(rx, forwarder))?;
        Ok(ContainerdEvents {
            tx: Mutex::new(tx),
            namespace,
        })
    }
}

/// The queue thread: delivers in order, retrying the head until it goes through.
fn deliver(rx: Receiver<Queued>, mut fwd: Box<dyn Forwarder>) {
    let mut backlog: VecDeque<Queued> = VecDeque::new();
    let mut backoff = BACKOFF_MIN;
    let mut open = true;
    loop {
        if backlog.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(q) => backlog.push_back(q),
                Err(_) => return,
            }
        }
        // Take whatever else is waiting, so the backlog bound sees it.
        while let Ok(q) = rx.try_recv() {
            push_bounded(&mut backlog, q);
        }
        let Some((topic, req)) = backlog.front() else {
            continue;
        };
        match fwd.forward(req) {
            Ok(()) => {
                if backoff > BACKOFF_MIN {
                    log::info!("events: containerd reachable again");
                }
                backoff = BACKOFF_MIN;
                backlog.pop_front();
            }
            Err(e) => {
                if backoff == BACKOFF_MIN {
                    log::warn!(
                        "publishing {topic}: {e}; retrying ({} event(s) waiting)",
                        backlog.len()
                    );
                }
                // Wait, but keep taking new events meanwhile.
                match rx.recv_timeout(backoff) {
                    Ok(q) => push_bounded(&mut backlog, q),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn push_bounded(backlog: &mut VecDeque<Queued>, q: Queued) {
    if backlog.len() >= MAX_BACKLOG {
        if let Some(i) = backlog.iter().position(|(t, _)| !must_deliver(t)) {
            if let Some((t, _)) = backlog.remove(i) {
                log::warn!("events: backlog full, dropped a {t} event");
            }
        }
    }
    backlog.push_back(q);
}

impl EventSink for ContainerdEvents {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let any = match containerd_shim::util::convert_to_any(event) {
            Ok(a) => a,
            Err(e) => {
                log::error!("encoding {topic}: {e}");
                return;
            }
        };
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_string());
        envelope.set_namespace(self.namespace.clone());
        if let Ok(ts) = containerd_shim::util::timestamp() {
            envelope.set_timestamp(ts);
        }
        envelope.set_event(any);
        let mut req = ForwardRequest::new();
        req.set_envelope(envelope);
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send((topic, req)).is_err() {
            log::error!("event queue closed; dropped {topic}");
        }
    }
}

/// A TaskExit's container id, for tests and logs.
pub fn exit_container_id(req: &ForwardRequest) -> Option<String> {
    let env = req.envelope.as_ref()?;
    if env.topic != topics::TASK_EXIT_EVENT_TOPIC {
        return None;
    }
    let any = env.event.as_ref()?;
    // containerd's type URLs carry no "type.googleapis.com/" prefix: decode by hand.
    <TaskExit as protobuf::Message>::parse_from_bytes(&any.value)
        .ok()
        .map(|e| e.container_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Instant;

    /// Fails while `down`, records what it delivered.
    struct Flaky {
        down: Arc<StdMutex<bool>>,
        got: Arc<StdMutex<Vec<String>>>,
        attempts: Arc<StdMutex<usize>>,
    }

    impl Forwarder for Flaky {
        fn forward(&mut self, req: &ForwardRequest) -> Result<(), String> {
            *self.attempts.lock().unwrap() += 1;
            if *self.down.lock().unwrap() {
                return Err("containerd is restarting".into());
            }
            let env = req.envelope.as_ref().unwrap();
            let id = exit_container_id(req).unwrap_or_default();
            self.got.lock().unwrap().push(format!("{} {id}", env.topic));
            Ok(())
        }
    }

    fn exit(id: &str) -> Box<dyn MessageDyn> {
        Box::new(TaskExit {
            container_id: id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn events_wait_out_a_containerd_restart_in_order() {
        let down = Arc::new(StdMutex::new(false));
        let got = Arc::new(StdMutex::new(Vec::new()));
        let attempts = Arc::new(StdMutex::new(0));
        let ev = ContainerdEvents::with_forwarder(
            Box::new(Flaky {
                down: down.clone(),
                got: got.clone(),
                attempts: attempts.clone(),
            }),
            "ns".into(),
        )
        .unwrap();
        ev.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("a"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        *down.lock().unwrap() = true;
        ev.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("b"));
        ev.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("c"));
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(got.lock().unwrap().len(), 1, "delivered while down");
        assert!(*attempts.lock().unwrap() >= 3, "no retry while down");
        *down.lock().unwrap() = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.lock().unwrap().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let topic = topics::TASK_EXIT_EVENT_TOPIC;
        assert_eq!(
            *got.lock().unwrap(),
            vec![
                format!("{topic} a"),
                format!("{topic} b"),
                format!("{topic} c")
            ]
        );
    }

    #[test]
    fn a_full_backlog_drops_other_events_before_exits() {
        let mut backlog = VecDeque::new();
        let req = ForwardRequest::new;
        push_bounded(&mut backlog, (topics::TASK_EXIT_EVENT_TOPIC, req()));
        for _ in 1..MAX_BACKLOG {
            push_bounded(&mut backlog, (topics::TASK_START_EVENT_TOPIC, req()));
        }
        assert_eq!(backlog.len(), MAX_BACKLOG);
        push_bounded(&mut backlog, (topics::TASK_EXIT_EVENT_TOPIC, req()));
        assert_eq!(backlog.len(), MAX_BACKLOG);
        let exits = backlog
            .iter()
            .filter(|(t, _)| *t == topics::TASK_EXIT_EVENT_TOPIC)
            .count();
        assert_eq!(exits, 2, "an exit was dropped");
        assert_eq!(backlog.front().unwrap().0, topics::TASK_EXIT_EVENT_TOPIC);
    }
}
