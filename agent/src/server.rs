//! The ttrpc service: decodes requests, calls the sandbox, maps errors to status codes.
//! Every handler returns an error instead of panicking; the server keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vessel_protocol::errors::chain;

use protobuf::MessageField;
use ttrpc::TtrpcContext;
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::Agent;

use crate::error::{RequestError, RequestResult};
use crate::sandbox::{PodPlacement, Sandbox, StorageSpec};
use crate::stdio::{ReadOutcome, StdioError};

/// Largest WriteStdin payload.
const MAX_WRITE: usize = 1 << 20;
/// Answer this long before the caller's deadline, so the answer is not thrown away.
const DEADLINE_MARGIN: Duration = Duration::from_millis(200);

pub struct AgentService {
    pub sandbox: Arc<Sandbox>,
}

fn deadline(ctx: &TtrpcContext) -> Option<Instant> {
    if ctx.timeout_nano <= 0 {
        return None;
    }
    let t = Duration::from_nanos(ctx.timeout_nano as u64);
    Some(Instant::now() + t.saturating_sub(DEADLINE_MARGIN.min(t / 4)))
}

fn cancelled(ctx: &TtrpcContext) -> impl Fn() -> bool + '_ {
    move || matches!(ctx.cancel_rx.try_recv(), Err(e) if e.is_disconnected())
}

fn reply<T>(method: &str, r: RequestResult<T>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        log::debug!("{method}: {:?}: {}", e.code, e.message);
        e.into()
    })
}

fn stdio_err(e: StdioError) -> RequestError {
    match e {
        StdioError::StdinClosed | StdioError::NoStdin | StdioError::NoTerminal => {
            RequestError::precondition(chain(&e))
        }
        StdioError::Cancelled | StdioError::Deadline => RequestError::deadline(chain(&e)),
        _ => RequestError::internal(chain(&e)),
    }
}

fn storages(list: &[Storage]) -> Vec<StorageSpec> {
    list.iter()
        .map(|s| StorageSpec {
            driver: s.driver.clone(),
            source: s.source.clone(),
            fstype: s.fstype.clone(),
            options: s.options.clone(),
            mount_point: s.mount_point.clone(),
        })
        .collect()
}

fn pod_placement(req: &CreateContainerRequest) -> RequestResult<PodPlacement> {
    let mut join = Vec::new();
    for ns in &req.pod_namespaces {
        let kind = ns
            .enum_value()
            .map_err(|v| RequestError::invalid(format!("unknown pod namespace kind {v}")))
            .and_then(crate::pod::kind_of)?;
        if !join.contains(&kind) {
            join.push(kind);
        }
    }
    if req.builtin_pause && !req.pod_sandbox {
        return Err(RequestError::invalid(
            "builtin_pause is for the pod's sandbox container only (pod_sandbox unset)",
        ));
    }
    Ok(PodPlacement {
        sandbox: req.pod_sandbox,
        join,
        builtin_pause: req.builtin_pause,
    })
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

impl AgentService {
    fn read_stream(
        &self,
        ctx: &TtrpcContext,
        req: &ReadStreamRequest,
        stderr: bool,
    ) -> RequestResult<ReadStreamResponse> {
        let c = self.sandbox.get(&req.container_id)?;
        let p = c.process(&req.exec_id)?;
        let stream = if stderr {
            p.streams.stderr.as_ref()
        } else {
            p.streams.stdout.as_ref()
        };
        let mut resp = ReadStreamResponse::new();
        let Some(stream) = stream else {
            // A terminal has no separate stderr.
            resp.eof = true;
            return Ok(resp);
        };
        let len = if req.len == 0 {
            crate::stdio::MAX_READ
        } else {
            req.len as usize
        };
        match stream
            .read(len, deadline(ctx), &cancelled(ctx))
            .map_err(stdio_err)?
        {
            ReadOutcome::Data(d) => resp.data = d,
            ReadOutcome::Eof => resp.eof = true,
            ReadOutcome::Empty => {}
        }
        Ok(resp)
    }
}

impl Agent for AgentService {
    fn check(&self, _ctx: &TtrpcContext, _req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        let mut r = CheckResponse::new();
        r.status = "SERVING".into();
        r.version = env!("CARGO_PKG_VERSION").into();
        r.uptime_ms = uptime_ms();
        Ok(r)
    }

    fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let fresh = crate::sandbox::SandboxFreshness {
            entropy: req.entropy,
            realtime_ns: req.realtime_ns,
        };
        let t0 = std::time::Instant::now();
        let r = self
            .sandbox
            .create_sandbox(
                &req.sandbox_id,
                &req.hostname,
                &storages(&req.storages),
                &req.dns,
                &fresh,
            )
            .and_then(|()| {
                let t = std::time::Instant::now();
                let r = crate::pod_network::configure_pod(&req.interfaces, &req.routes);
                log::debug!(
                    "CreateSandbox: {} interfaces, {} routes {:?}; whole request {:?}",
                    req.interfaces.len(),
                    req.routes.len(),
                    t.elapsed(),
                    t0.elapsed()
                );
                r
            });
        reply("CreateSandbox", r.map(|_| Empty::new()))
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let r = self.sandbox.destroy_sandbox();
        if self.sandbox.pid1 {
            crate::init::power_off_soon();
        }
        reply("DestroySandbox", r.map(|_| Empty::new()))
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let r = pod_placement(&req).and_then(|pod| {
            self.sandbox.create_container(
                &req.container_id,
                &req.oci_spec,
                &storages(&req.storages),
                req.stdin,
                &pod,
            )
        });
        reply("CreateContainer", r.map(|_| Empty::new()))
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let r = self.sandbox.get(&req.container_id).and_then(|c| c.start());
        reply(
            "StartContainer",
            r.map(|pid| {
                let mut resp = StartContainerResponse::new();
                resp.pid = pid.as_raw() as u32;
                resp
            }),
        )
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let timeout = Duration::from_secs(if req.timeout_secs == 0 {
            10
        } else {
            req.timeout_secs.min(3600) as u64
        });
        reply(
            "RemoveContainer",
            self.sandbox
                .remove_container(&req.container_id, timeout)
                .map(|_| Empty::new()),
        )
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let r = self
            .sandbox
            .get(&req.container_id)
            .and_then(|c| c.exec(&req.exec_id, &req.process, req.stdin));
        reply(
            "ExecProcess",
            r.map(|pid| {
                let mut resp = ExecProcessResponse::new();
                resp.pid = pid.as_raw() as u32;
                resp
            }),
        )
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let r = self
            .sandbox
            .get(&req.container_id)
            .and_then(|c| c.signal(&req.exec_id, req.signal, req.all));
        reply("SignalProcess", r.map(|_| Empty::new()))
    }

    fn delete_process(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let r = if req.exec_id.is_empty() {
            Err(RequestError::invalid(
                "DeleteProcess takes an exec id; remove the container for its init",
            ))
        } else {
            self.sandbox
                .get(&req.container_id)
                .and_then(|c| c.delete_exec(&req.exec_id))
        };
        reply("DeleteProcess", r.map(|_| Empty::new()))
    }

    fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let r = (|| {
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            let dl = deadline(ctx);
            let cancel = cancelled(ctx);
            loop {
                let slice = Instant::now() + Duration::from_secs(5);
                let until = dl.map_or(slice, |d| d.min(slice));
                if let Some(info) = p.exit.wait(Some(until)) {
                    let mut resp = WaitProcessResponse::new();
                    resp.status = info.status;
                    resp.exited_at_ns = info.exited_at_ns;
                    return Ok(resp);
                }
                if dl.is_some_and(|d| Instant::now() >= d) {
                    return Err(RequestError::deadline(
                        "process still running at the caller's deadline",
                    ));
                }
                if cancel() {
                    return Err(RequestError::deadline("caller went away"));
                }
            }
        })();
        reply("WaitProcess", r)
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let r = self.sandbox.get(&req.container_id).and_then(|c| c.pids());
        reply(
            "ListProcesses",
            r.map(|pids| {
                let mut resp = ListProcessesResponse::new();
                resp.pids = pids;
                resp
            }),
        )
    }

    fn write_stdin(
        &self,
        ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        let r = (|| {
            if req.data.len() > MAX_WRITE {
                return Err(RequestError::invalid(format!(
                    "stdin chunk over {MAX_WRITE} bytes"
                )));
            }
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            let n = p
                .streams
                .write_stdin(&req.data, deadline(ctx), &cancelled(ctx))
                .map_err(stdio_err)?;
            let mut resp = WriteStreamResponse::new();
            resp.len = n as u32;
            Ok(resp)
        })();
        reply("WriteStdin", r)
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        let r = (|| {
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            p.streams.close_stdin().map_err(stdio_err)?;
            Ok(Empty::new())
        })();
        reply("CloseStdin", r)
    }

    fn read_stdout(
        &self,
        ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        reply("ReadStdout", self.read_stream(ctx, &req, false))
    }

    fn read_stderr(
        &self,
        ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        reply("ReadStderr", self.read_stream(ctx, &req, true))
    }

    fn tty_win_resize(
        &self,
        _ctx: &TtrpcContext,
        req: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        let r = (|| {
            let p = self.sandbox.get(&req.container_id)?.process(&req.exec_id)?;
            let (rows, cols) = (u16::try_from(req.rows), u16::try_from(req.cols));
            let (Ok(rows), Ok(cols)) = (rows, cols) else {
                return Err(RequestError::invalid("rows/cols over 65535"));
            };
            p.streams.resize(rows, cols).map_err(stdio_err)?;
            Ok(Empty::new())
        })();
        reply("TtyWinResize", r)
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        let r = self.sandbox.get(&req.container_id).map(|c| {
            let s = c.stats();
            let mut cpu = CpuStats::new();
            cpu.usage_usec = s.cpu_usage_usec;
            cpu.user_usec = s.cpu_user_usec;
            cpu.system_usec = s.cpu_system_usec;
            cpu.throttled_usec = s.cpu_throttled_usec;
            cpu.nr_periods = s.cpu_nr_periods;
            cpu.nr_throttled = s.cpu_nr_throttled;
            let mut mem = MemoryStats::new();
            mem.usage_bytes = s.mem_usage;
            mem.limit_bytes = s.mem_limit;
            mem.max_usage_bytes = s.mem_max_usage;
            mem.anon_bytes = s.mem_anon;
            mem.file_bytes = s.mem_file;
            mem.oom_events = s.oom_events;
            mem.oom_kill_events = s.oom_kill_events;
            let mut pids = PidsStats::new();
            pids.current = s.pids_current;
            pids.limit = s.pids_limit;
            let mut resp = StatsContainerResponse::new();
            resp.cpu = MessageField::some(cpu);
            resp.memory = MessageField::some(mem);
            resp.pids = MessageField::some(pids);
            resp
        });
        reply("StatsContainer", r)
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let r = self
            .sandbox
            .get(&req.container_id)
            .and_then(|c| c.set_paused(true));
        reply("PauseContainer", r.map(|_| Empty::new()))
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        let r = self
            .sandbox
            .get(&req.container_id)
            .and_then(|c| c.set_paused(false));
        reply("ResumeContainer", r.map(|_| Empty::new()))
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let r = self
            .sandbox
            .update_container(&req.container_id, &req.resources);
        reply("UpdateContainer", r.map(|_| Empty::new()))
    }

    fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        reply(
            "UpdateInterface",
            crate::pod_network::update_interface(&req),
        )
    }

    fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<UpdateRoutesRequest> {
        reply(
            "UpdateRoutes",
            crate::pod_network::update_routes(&req.routes).map(|()| req),
        )
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        _req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        let dl = deadline(ctx);
        let cancel = cancelled(ctx);
        let mut ev = OOMEvent::new();
        match self.sandbox.oom.next(dl, &cancel) {
            Some(id) => ev.container_id = id,
            None if cancel() => {
                return reply(
                    "GetOOMEvent",
                    Err(RequestError::deadline("caller went away")),
                )
            }
            // Nothing before the caller's deadline: an empty container_id means "ask again".
            None => {}
        }
        Ok(ev)
    }
}
