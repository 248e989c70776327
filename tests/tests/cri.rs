//! The CRI layer: containerd 1.6's CRI plugin driven as kubelet would (RunPodSandbox,
//! CreateContainer, ExecSync, ...), for the `vessel` runtime handler and, as the control,
//! `runc`. One pod per runtime serves every scenario (a VM pod's operations cost tens of
//! seconds each on KVM-PVM): three containers share net/uts/ipc and talk over localhost, CRI
//! log files, exit codes, ExecSync, ContainerStats, StopContainer escalating to SIGKILL, the
//! pod's network from the host and from a second pod (CNI bridge; vessel: veth ↔ tap ↔
//! virtio-net), its DNS config, and nothing left after StopPodSandbox + RemovePodSandbox
//! (processes, mounts, vessel state, cgroups). vessel only: the sandbox task (the VMM) runs in
//! the pod's cgroup.
//!
//! Needs root, `containerd`, `runc`, `busybox-static`, `containernetworking-plugins`; for
//! vessel also /dev/kvm, `cargo build --workspace --bins` and the guest kernel + initrd
//! (`VESSEL_KERNEL`, `VESSEL_INITRD`). A missing prerequisite fails the test with the reason.
//! Every check of a scenario is run and the failures are reported together; step timings go
//! to stderr (`--nocapture`).

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vessel_tests::containerd::mounts_under;

#[path = "cri/observability.rs"]
mod observability;
use observability::{json_logs_name_the_pod, monitor_scrapes_the_pod};
use vessel_tests::cri::{
    cgroup_path_of, cmdline_of, eventually, http_get, log_messages, parse_log, parse_sandbox_info,
    processes_mentioning, ContainerState, CriContainerd, Pod, PodSandboxState, VesselConfigSpec,
    VesselTestConfig, RUNC_HANDLER, VESSEL_HANDLER,
};

/// Content served by the web container and fetched over localhost by the client.
const TOKEN: &str = "vessel-cri-localhost-token-7f3a";
const PORT: u16 = 8080;

/// Per-runtime bounds: a VM pod is slow here (guest kernel code is emulated).
struct Bounds {
    call: Duration,
    exec_timeout_s: i64,
    exit_wait: Duration,
    stop_slack: Duration,
    settle: Duration,
    /// The client's fetch attempts and each one's `timeout` (s): in a VM starting `wget`
    /// alone takes seconds, and each attempt costs a few forks.
    fetch_tries: u32,
    fetch_timeout_s: u32,
}

fn bounds(handler: &str) -> Bounds {
    if handler == VESSEL_HANDLER {
        Bounds {
            call: Duration::from_secs(600),
            exec_timeout_s: 300,
            exit_wait: Duration::from_secs(600),
            stop_slack: Duration::from_secs(120),
            settle: Duration::from_secs(60),
            fetch_tries: 3,
            fetch_timeout_s: 60,
        }
    } else {
        Bounds {
            call: Duration::from_secs(60),
            exec_timeout_s: 30,
            exit_wait: Duration::from_secs(60),
            stop_slack: Duration::from_secs(15),
            settle: Duration::from_secs(15),
            fetch_tries: 10,
            fetch_timeout_s: 5,
        }
    }
}

/// Soft checks: every one runs, all failures are reported at the end.
struct Checks {
    tag: String,
    failures: Vec<String>,
    timings: Vec<(String, Duration)>,
}

impl Checks {
    fn new(handler: &str) -> Checks {
        Checks {
            tag: format!("[cri {handler}]"),
            failures: Vec::new(),
            timings: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: impl AsRef<str>) -> bool {
        let what = what.as_ref();
        if ok {
            eprintln!("{} ok: {what}", self.tag);
        } else {
            eprintln!("{} FAILED: {what}", self.tag);
            self.failures.push(what.to_string());
        }
        ok
    }

    /// Times `f` as `step`; prints it.
    fn time<T>(&mut self, step: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        eprintln!("{} step {step}: {:.2} s", self.tag, took.as_secs_f64());
        self.timings.push((step.to_string(), took));
        r
    }

    fn finish(self, cri: &CriContainerd) {
        let kept = if self.failures.is_empty() {
            String::new()
        } else {
            let handler = self.tag.trim_start_matches("[cri ").trim_end_matches(']');
            keep(
                &cri.dir().join("containerd.log"),
                &format!("{handler}-containerd.log"),
            )
        };
        let line = self
            .timings
            .iter()
            .map(|(s, d)| format!("{s} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!("{} timings: {line}", self.tag);
        if !self.failures.is_empty() {
            panic!(
                "{} {} check(s) failed:\n- {}\n{kept}--- containerd log tail ---\n{}",
                self.tag,
                self.failures.len(),
                self.failures.join("\n- "),
                cri.log_tail()
            );
        }
    }
}

/// Copies a log worth reading after a failure to `/tmp/vessel-cri-<pid>-<name>` (the temp
/// dirs go with the harness); a line naming it.
fn keep(src: &Path, name: &str) -> String {
    if std::fs::metadata(src).map(|m| m.len() == 0).unwrap_or(true) {
        return format!("{} is empty or missing\n", src.display());
    }
    let dst = format!("/tmp/vessel-cri-{}-{name}", std::process::id());
    match std::fs::copy(src, &dst) {
        Ok(_) => {
            eprintln!("kept {} as {dst}", src.display());
            format!("kept {} as {dst}\n", src.display())
        }
        Err(e) => format!("could not keep {}: {e}\n", src.display()),
    }
}

/// Prerequisites, as a failure with the reason (never a silent skip).
fn preflight(handler: &str) -> Option<VesselTestConfig> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CRI tests need root (containerd, runc, CNI)"
    );
    for (tool, pkg) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ] {
        let found = Path::new(tool).exists()
            || (tool.ends_with("runc") && Path::new("/usr/bin/runc").exists());
        assert!(
            found,
            "{tool} missing: apt-get install {pkg} (scripts/deps.sh)"
        );
    }
    if handler != VESSEL_HANDLER {
        return None;
    }
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm missing: vessel pods need KVM"
    );
    let mut spec = VesselConfigSpec::from_env().unwrap_or_else(|e| panic!("{e:#}"));
    // The shim and the VMM log JSON here (json_logs_name_the_pod); the other layers keep text.
    spec.log_format = "json".into();
    Some(VesselTestConfig::write(&spec).unwrap())
}

/// The program a process runs: the file name of its argv[0].
fn program_of(pid: u32) -> String {
    let cmd = cmdline_of(pid);
    let argv0 = cmd.split(' ').next().unwrap_or_default();
    argv0.rsplit('/').next().unwrap_or_default().to_string()
}

/// `NS <kind> <link>` and `HOST <name>` lines a container printed: (net, uts, ipc, host).
#[derive(Debug, Default, Clone, PartialEq)]
struct Identity {
    net: Option<String>,
    uts: Option<String>,
    ipc: Option<String>,
    host: Option<String>,
}

fn identity(lines: &[String]) -> Identity {
    let mut id = Identity::default();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["NS", "net", v] => id.net = Some(v.to_string()),
            ["NS", "uts", v] => id.uts = Some(v.to_string()),
            ["NS", "ipc", v] => id.ipc = Some(v.to_string()),
            ["HOST", v] => id.host = Some(v.to_string()),
            _ => {}
        }
    }
    id
}

/// Sets `$own` to the shell's cgroup as `/sys/fs/cgroup` shows it: `/` with a cgroup
/// namespace, its path from the root without one (containerd gives none on a cgroup v1 or
/// hybrid host). Builtins only: a fork costs seconds in a guest on KVM-PVM.
const OWN_CGROUP: &str = "read l < /proc/self/cgroup; own=${l#0::}";

const PRINT_IDENTITY: &str = "echo -n 'NS net '; readlink /proc/self/ns/net; \
     echo -n 'NS uts '; readlink /proc/self/ns/uts; \
     echo -n 'NS ipc '; readlink /proc/self/ns/ipc; \
     echo -n 'HOST '; hostname";

/// The stdout and stderr lines of a container's CRI log (every line must parse).
fn read_log(checks: &mut Checks, pod: &Pod, name: &str) -> (Vec<String>, Vec<String>) {
    let path = pod.log_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    match parse_log(&text) {
        Ok(entries) => (
            log_messages(&entries, "stdout"),
            log_messages(&entries, "stderr"),
        ),
        Err(e) => {
            checks.check(
                false,
                format!("{name}'s log {} is CRI's format: {e}", path.display()),
            );
            (Vec::new(), Vec::new())
        }
    }
}

fn scenarios(handler: &str) {
    let vessel = preflight(handler);
    let b = bounds(handler);
    let mut c = Checks::new(handler);
    let cri = CriContainerd::start(vessel.as_ref().map(VesselTestConfig::path))
        .unwrap_or_else(|e| panic!("starting containerd with CRI: {e:#}"));
    cri.client().set_timeout(b.call);
    let v = cri.client().version().unwrap();
    eprintln!(
        "{} {} {} (CRI {}), bridge {} on {}, cgroup parent {}",
        c.tag,
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        cri.bridge(),
        cri.subnet(),
        cri.cgroup_parent()
    );
    let hard = |r: anyhow::Result<String>, what: &str| -> String {
        r.unwrap_or_else(|e| {
            panic!(
                "{what}: {e:#}\n--- containerd log tail ---\n{}",
                cri.log_tail()
            )
        })
    };

    // RunPodSandbox, and what CRI says about the sandbox.
    let pod_name = format!("cri-pod-{handler}");
    let pod = c
        .time("RunPodSandbox", || cri.run_pod(&pod_name, handler))
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e:#}"));
    let status = cri.client().pod_sandbox_status(&pod.id, true).unwrap();
    let st = status.status.clone().unwrap();
    c.check(
        st.state() == PodSandboxState::SandboxReady,
        format!("sandbox READY ({:?})", st.state()),
    );
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    // Traffic must never leave this machine: the pod's address routes via our bridge.
    cri.check_route(&ip)
        .unwrap_or_else(|e| panic!("pod network: {e:#}"));
    let info = parse_sandbox_info(&status.info).unwrap_or_else(|e| panic!("sandbox info: {e}"));
    let expected_cgroup = format!("{}/{}", cri.cgroup_parent(), pod.id);
    c.check(
        info.cgroups_path.as_deref() == Some(expected_cgroup.as_str()),
        format!(
            "sandbox cgroupsPath {:?} is {expected_cgroup}",
            info.cgroups_path
        ),
    );
    let proc_cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", info.pid)).unwrap_or_default();
    let mem_cgroup = cgroup_path_of(&proc_cgroup, "memory");
    c.check(
        mem_cgroup.as_deref() == Some(expected_cgroup.as_str()),
        format!(
            "sandbox task pid {} ({}) is in the pod's memory cgroup {expected_cgroup} (it is in {mem_cgroup:?})",
            info.pid,
            program_of(info.pid)
        ),
    );
    if handler == VESSEL_HANDLER {
        c.check(
            program_of(info.pid) == "vessel-vmm",
            format!(
                "sandbox task pid {} is the VMM: {:?}",
                info.pid,
                program_of(info.pid)
            ),
        );
        if let Some(v) = &vessel {
            jailed_vmm_is_confined(
                &mut c,
                info.pid,
                &v.state_root().join("k8s.io").join(&pod.id),
                &expected_cgroup,
            );
        }
    }

    // Three containers: web (httpd on localhost, ignores SIGTERM), idle (exec target),
    // client (fetches over localhost, prints 1..1000, exits 3).
    let web_script = format!(
        "{OWN_CGROUP}; read c < /sys/fs/cgroup$own/cgroup.controllers; echo \"CONTROLLERS $c\"; \
         {PRINT_IDENTITY}; sed 's/^/RESOLV /' /etc/resolv.conf; \
         mkdir -p /tmp/www && echo {TOKEN} > /tmp/www/index.html; \
         httpd -f -p {PORT} -h /tmp/www & echo WEB-READY; trap '' TERM; exec sleep inf"
    );
    let client_script = format!(
        "{PRINT_IDENTITY}; i=0; while [ $i -lt {} ]; do \
         timeout {} wget -qO- http://127.0.0.1:{PORT}/index.html && break; i=$((i+1)); sleep 1; done; \
         echo FETCH-TRIES $i; seq 1 1000; echo LAST-STDERR >&2; exit 3",
        b.fetch_tries, b.fetch_timeout_s
    );
    // CPU shares as kubelet gives a BestEffort container (2) and a 0.5-CPU request (512):
    // in a vessel pod the `cpu` controller turns on only at the second, different weight.
    let create_start = |c: &mut Checks, name: &str, argv: &[&str], shares: i64| -> String {
        let cfg = vessel_tests::cri::with_cpu_shares(
            vessel_tests::cri::container_config(name, argv),
            shares,
        );
        let id = hard(
            c.time(&format!("CreateContainer({name})"), || {
                cri.client().create_container(&pod.id, &cfg, &pod.config)
            }),
            &format!("CreateContainer {name}"),
        );
        hard(
            c.time(&format!("StartContainer({name})"), || {
                cri.client().start_container(&id).map(|_| String::new())
            }),
            &format!("StartContainer {name}"),
        );
        id
    };
    if let Some(v) = &vessel {
        compromised_guest_cannot_redirect_binds(&mut c, &cri, &pod, &v.state_root());
    }
    let web = create_start(&mut c, "web", &["sh", "-c", &web_script], 2);
    // web reads its cgroup's controllers first thing; idle, which may change them, is created
    // after that line is in the log.
    let controllers_read = eventually(b.settle, || {
        read_log(&mut Checks::new(handler), &pod, "web")
            .0
            .iter()
            .any(|l| l.starts_with("CONTROLLERS"))
    });
    c.check(controllers_read, "web printed its cgroup controllers");
    let idle = create_start(&mut c, "idle", &["sleep", "inf"], 512);
    let client = create_start(&mut c, "client", &["sh", "-c", &client_script], 2);
    if let Some(v) = &vessel {
        let sandbox_dir = v.state_root().join("k8s.io").join(&pod.id);
        json_logs_name_the_pod(&mut c, &cri.log_text(), &sandbox_dir, &pod.id, &web);
        monitor_scrapes_the_pod(&mut c, v.path(), &pod.id, &pod_name, || {
            // Guest work between the scrapes: the VMM's vCPU thread runs it.
            let _ = cri.client().exec_sync(&idle, &["/bin/true"], 60);
        });
    }

    // 5. ExecSync: stdout, exit 0; then a non-zero exit with stderr. Each reads its
    // container's `cpu.weight` (runc's conversion of the shares: 512 → 20, 2 → 1); web's was
    // written when idle's turned the controller on.
    let read_weight =
        format!("{OWN_CGROUP}; read w < /sys/fs/cgroup$own/cpu.weight; echo \"WEIGHT $w\"");
    // And its nice value: 0 as under runc, although vessel's agent runs at -10.
    let identity_and_weight = format!(
        "{PRINT_IDENTITY}; {read_weight}; read s < /proc/self/stat; set -- $s; echo \"NICE ${{19}}\""
    );
    let exec_cmd = ["sh", "-c", &identity_and_weight];
    let ex = c
        .time("ExecSync(identity)", || {
            cri.client().exec_sync(&idle, &exec_cmd, b.exec_timeout_s)
        })
        .unwrap_or_else(|e| panic!("ExecSync: {e:#}\n{}", cri.log_tail()));
    let exec_out = String::from_utf8_lossy(&ex.stdout).into_owned();
    c.check(
        ex.exit_code == 0,
        format!("ExecSync exit code 0 ({})", ex.exit_code),
    );
    let exec_id = identity(&exec_out.lines().map(str::to_string).collect::<Vec<_>>());
    // The guest is cgroup v2; a runc container here is on the host's v1 (`cpu.shares`).
    let vessel_pod = handler == VESSEL_HANDLER;
    if vessel_pod {
        c.check(
            exec_out.lines().any(|l| l == "WEIGHT 20"),
            format!("idle's cpu.weight is 20 for 512 shares: {exec_out:?}"),
        );
    }
    c.check(
        exec_out.lines().any(|l| l == "NICE 0"),
        format!("ExecSync's process runs at nice 0: {exec_out:?}"),
    );
    c.check(
        exec_id.net.is_some() && exec_id.host.is_some(),
        format!("ExecSync stdout has the namespaces and hostname: {exec_out:?}"),
    );
    let ex = c
        .time("ExecSync(exit 7)", || {
            cri.client().exec_sync(
                &web,
                &["sh", "-c", &format!("{read_weight}; echo oops >&2; exit 7")],
                b.exec_timeout_s,
            )
        })
        .unwrap_or_else(|e| panic!("ExecSync: {e:#}"));
    c.check(
        ex.exit_code == 7,
        format!("ExecSync non-zero exit code 7 ({})", ex.exit_code),
    );
    let stderr = String::from_utf8_lossy(&ex.stderr);
    c.check(
        stderr.lines().last() == Some("oops"),
        format!("ExecSync stderr {stderr:?}"),
    );
    if vessel_pod {
        c.check(
            String::from_utf8_lossy(&ex.stdout) == "WEIGHT 1\n" && stderr == "oops\n",
            format!(
                "web's cpu.weight is 1 for 2 shares: {:?}",
                String::from_utf8_lossy(&ex.stdout)
            ),
        );
    }

    // 6. ContainerStats of a running container.
    match cri.client().container_stats(&web) {
        Ok(s) => {
            let ws = s
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value);
            let cpu = s
                .cpu
                .as_ref()
                .and_then(|x| x.usage_core_nano_seconds.as_ref())
                .map(|v| v.value);
            eprintln!(
                "{} ContainerStats(web): working set {ws:?} B, cpu {cpu:?} ns",
                c.tag
            );
            c.check(
                ws.unwrap_or(0) > 0 || cpu.unwrap_or(0) > 0,
                format!("ContainerStats non-zero: working set {ws:?}, cpu {cpu:?}"),
            );
        }
        Err(e) => {
            c.check(false, format!("ContainerStats: {e:#}"));
        }
    }

    // 4. The client exits 3.
    match cri.client().wait_exited(&client, b.exit_wait) {
        Ok(s) => {
            c.check(
                s.state() == ContainerState::ContainerExited && s.exit_code == 3,
                format!("client EXITED with 3 ({:?}, {})", s.state(), s.exit_code),
            );
        }
        Err(e) => {
            c.check(false, format!("client exits: {e:#}"));
        }
    }

    // 3. CRI logs: every line parses; the tail is there.
    let (client_out, client_err) = read_log(&mut c, &pod, "client");
    let numbers: Vec<&String> = client_out
        .iter()
        .skip_while(|l| l.as_str() != "1")
        .collect();
    let expected: Vec<String> = (1..=1000).map(|n| n.to_string()).collect();
    c.check(
        numbers.len() == 1000 && numbers.iter().zip(&expected).all(|(a, b)| *a == b),
        format!(
            "client's log has 1..1000 in order, 1000 last ({} lines from \"1\", last {:?})",
            numbers.len(),
            client_out.last()
        ),
    );
    c.check(
        client_err.last().map(String::as_str) == Some("LAST-STDERR"),
        format!("client's stderr tail in the log: {:?}", client_err.last()),
    );
    let web_ready = eventually(b.settle, || {
        read_log(&mut Checks::new(handler), &pod, "web")
            .0
            .iter()
            .any(|l| l == "WEB-READY")
    });
    let (web_out, _) = read_log(&mut c, &pod, "web");
    c.check(web_ready, format!("web's log has WEB-READY: {web_out:?}"));
    // Alone in the pod with its weight (the pause never runs), web started without the
    // `cpu` controller in a vessel pod.
    if vessel_pod {
        let controllers = web_out.iter().find_map(|l| l.strip_prefix("CONTROLLERS "));
        let has = |name: &str| controllers.is_some_and(|c| c.split_whitespace().any(|w| w == name));
        c.check(
            has("memory") && !has("cpu"),
            format!("web's cgroup controllers at its start: {controllers:?}"),
        );
    }

    // 2. localhost between containers of the pod.
    let tries = client_out.iter().find(|l| l.starts_with("FETCH-TRIES"));
    c.check(
        client_out.iter().any(|l| l == TOKEN),
        format!(
            "client fetched web's page over 127.0.0.1:{PORT} ({tries:?}; client stdout before 1..1000: {:?})",
            client_out.iter().take_while(|l| l.as_str() != "1").collect::<Vec<_>>()
        ),
    );

    // 9. The pod's network from outside the pod (vessel: CNI's veth ↔ tap ↔ virtio-net).
    pod_network_from_outside(&mut c, &cri, &pod, &ip, &web_out, &b, handler);

    // 1. Shared net/uts/ipc and the pod's hostname.
    let web_id = identity(&web_out);
    let client_id = identity(&client_out);
    eprintln!(
        "{} identities: web {web_id:?}, client {client_id:?}, exec in idle {exec_id:?}",
        c.tag
    );
    for (kind, get) in [
        (
            "net",
            (|i: &Identity| i.net.clone()) as fn(&Identity) -> Option<String>,
        ),
        ("uts", |i: &Identity| i.uts.clone()),
        ("ipc", |i: &Identity| i.ipc.clone()),
    ] {
        let (a, b2, x) = (get(&web_id), get(&client_id), get(&exec_id));
        c.check(
            a.is_some() && a == b2 && a == x,
            format!("{kind} namespace shared by web, client and idle: {a:?} {b2:?} {x:?}"),
        );
    }
    for (who, id) in [
        ("web", &web_id),
        ("client", &client_id),
        ("idle (exec)", &exec_id),
    ] {
        c.check(
            id.host.as_deref() == Some(pod_name.as_str()),
            format!("{who}'s hostname is the pod's {pod_name:?}: {:?}", id.host),
        );
    }
    if handler == RUNC_HANDLER {
        let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
        c.check(
            web_id.net.as_deref() != Some(host_net.to_string_lossy().as_ref()),
            format!("the pod's netns is not the host's ({host_net:?})"),
        );
    }

    // 7. StopContainer with a 2 s grace on a container that ignores SIGTERM.
    match cri.client().container_status(&web) {
        Ok(s) => c.check(
            s.state() == ContainerState::ContainerRunning,
            format!(
                "web still RUNNING before StopContainer: {:?} (exit code {}, reason {:?})",
                s.state(),
                s.exit_code,
                s.reason
            ),
        ),
        Err(e) => c.check(false, format!("ContainerStatus(web): {e:#}")),
    };
    let t = Instant::now();
    let stopped = c.time("StopContainer(web, timeout 2)", || {
        cri.client().stop_container(&web, 2)
    });
    let took = t.elapsed();
    c.check(
        stopped.is_ok(),
        format!("StopContainer(web, 2): {stopped:?}"),
    );
    c.check(
        took >= Duration::from_millis(1900) && took <= Duration::from_secs(2) + b.stop_slack,
        format!(
            "StopContainer waited the 2 s grace then SIGKILLed: {:.2} s (bound {:?})",
            took.as_secs_f64(),
            Duration::from_secs(2) + b.stop_slack
        ),
    );
    match cri.client().container_status(&web) {
        Ok(s) => c.check(
            s.state() == ContainerState::ContainerExited && s.exit_code == 137,
            format!(
                "web EXITED by SIGKILL (137): {:?} {}",
                s.state(),
                s.exit_code
            ),
        ),
        Err(e) => c.check(false, format!("ContainerStatus(web): {e:#}")),
    };

    if !c.failures.is_empty() {
        if let Some(v) = &vessel {
            keep(
                &v.state_root().join(&pod.id).join("console.log"),
                &format!("{handler}-console.log"),
            );
        }
    }

    // 8. Stop and remove everything; nothing may be left.
    let _ = cri.client().stop_container(&idle, 0);
    for (name, id) in [("web", &web), ("idle", &idle), ("client", &client)] {
        let r = c.time(&format!("RemoveContainer({name})"), || {
            cri.client().remove_container(id)
        });
        c.check(r.is_ok(), format!("RemoveContainer({name}): {r:?}"));
    }
    let left = cri
        .client()
        .list_containers(Some(&pod.id))
        .unwrap_or_default();
    c.check(
        left.is_empty(),
        format!("ListContainers of the pod empty: {left:?}"),
    );
    let r = c.time("StopPodSandbox", || cri.client().stop_pod_sandbox(&pod.id));
    c.check(r.is_ok(), format!("StopPodSandbox: {r:?}"));
    let r = c.time("RemovePodSandbox", || {
        cri.client().remove_pod_sandbox(&pod.id)
    });
    c.check(r.is_ok(), format!("RemovePodSandbox: {r:?}"));
    let pods = cri.client().list_pod_sandbox().unwrap_or_default();
    c.check(
        !pods.iter().any(|p| p.id == pod.id),
        format!(
            "ListPodSandbox no longer has the pod: {:?}",
            pods.iter().map(|p| &p.id).collect::<Vec<_>>()
        ),
    );
    let state_root = vessel.as_ref().map(VesselTestConfig::state_root);
    let leftovers = || -> Vec<String> {
        let mut found = Vec::new();
        for id in [&pod.id, &web, &idle, &client] {
            found.extend(
                processes_mentioning(id)
                    .into_iter()
                    .map(|p| format!("process {p}")),
            );
        }
        if let Some(root) = &state_root {
            let r = root.display().to_string();
            found.extend(
                processes_mentioning(&r)
                    .into_iter()
                    .map(|p| format!("process {p}")),
            );
            found.extend(mounts_under(root).into_iter().map(|m| format!("mount {m}")));
            found.extend(
                vessel
                    .as_ref()
                    .map(VesselTestConfig::leftovers)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| format!("state root entry {e}")),
            );
        }
        found.extend(
            mounts_under(cri.dir())
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        found.extend(
            cri.cgroups_left()
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
        if Path::new(&format!("/proc/{}", info.pid)).exists()
            && cmdline_of(info.pid).contains(if handler == VESSEL_HANDLER {
                "vessel-vmm"
            } else {
                "sleep"
            })
        {
            found.push(format!(
                "sandbox task {} still runs: {}",
                info.pid,
                cmdline_of(info.pid)
            ));
        }
        found
    };
    eventually(b.settle, || leftovers().is_empty());
    let left = leftovers();
    c.check(
        left.is_empty(),
        format!("nothing left of the pod: {left:#?}"),
    );
    c.finish(&cri);
}

/// The pod's network as its users see it: the DNS config CRI gave the pod is in its
/// containers' `/etc/resolv.conf`; the host fetches web's page at the pod's IP; a container
/// of a second pod fetches it too.
fn pod_network_from_outside(
    c: &mut Checks,
    cri: &CriContainerd,
    pod: &Pod,
    ip: &str,
    web_out: &[String],
    b: &Bounds,
    handler: &str,
) {
    let dns = pod.config.dns_config.clone().unwrap_or_default();
    let resolv: Vec<&str> = web_out
        .iter()
        .filter_map(|l| l.strip_prefix("RESOLV "))
        .collect();
    let has = |want: &str| {
        resolv
            .iter()
            .any(|l| l.split_whitespace().eq(want.split_whitespace()))
    };
    c.check(
        !dns.servers.is_empty()
            && dns.servers.iter().all(|s| has(&format!("nameserver {s}")))
            && has(&format!("search {}", dns.searches.join(" "))),
        format!("the pod's resolv.conf is CRI's DNS config {dns:?}: {resolv:?}"),
    );

    let timeout = Duration::from_secs(u64::from(b.fetch_timeout_s));
    let fetched = c.time("host GET pod IP", || {
        let mut last = String::new();
        for _ in 0..b.fetch_tries {
            match http_get(ip, PORT, "/index.html", timeout) {
                Ok(body) if body.contains(TOKEN) => return Ok(body),
                Ok(body) => last = format!("answer without the page: {body:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Err(last)
    });
    c.check(
        fetched.is_ok(),
        format!("the host fetched web's page at the pod IP {ip}:{PORT}: {fetched:?}"),
    );

    let peer_name = format!("cri-peer-{handler}");
    let peer = match c.time("RunPodSandbox(peer)", || cri.run_pod(&peer_name, handler)) {
        Ok(p) => p,
        Err(e) => {
            c.check(false, format!("RunPodSandbox(peer): {e:#}"));
            return;
        }
    };
    let script = format!(
        "i=0; while [ $i -lt {} ]; do timeout {} wget -qO- http://{ip}:{PORT}/index.html && break; \
         i=$((i+1)); sleep 1; done; echo PEER-TRIES $i",
        b.fetch_tries, b.fetch_timeout_s
    );
    let fetch = c.time("CreateContainer+StartContainer(peer fetch)", || {
        cri.create_and_start(&peer, "fetch", &["sh", "-c", &script])
    });
    match fetch {
        Ok(id) => {
            let exited = cri.client().wait_exited(&id, b.exit_wait);
            let (out, err) = read_log(c, &peer, "fetch");
            c.check(
                exited.is_ok() && out.iter().any(|l| l == TOKEN),
                format!(
                    "a container of a second pod fetched web's page at {ip}:{PORT}: {exited:?} {out:?} {err:?}"
                ),
            );
        }
        Err(e) => {
            c.check(false, format!("peer fetch container: {e:#}"));
        }
    }
    let stopped = c.time("StopPodSandbox(peer)", || {
        cri.client().stop_pod_sandbox(&peer.id)
    });
    c.check(
        stopped.is_ok(),
        format!("StopPodSandbox(peer): {stopped:?}"),
    );
    let removed = cri.client().remove_pod_sandbox(&peer.id);
    c.check(
        removed.is_ok(),
        format!("RemovePodSandbox(peer): {removed:?}"),
    );
}

/// The control: every scenario passes with runc.
#[test]
fn cri_runc_pod() {
    scenarios(RUNC_HANDLER);
}

/// The same scenarios through the vessel handler: one VM pod.
#[test]
fn cri_vessel_pod() {
    scenarios(VESSEL_HANDLER);
}

/// The compromised guest, played by the test: while the pod runs, it plants symlinks where the
/// runtime will make the next containers' binds (it can write the whole shared directory over
/// virtio-fs): `shared/<cid>` → a host dir, and `shared/<cid>/volumes/0` → a host dir (every
/// CRI container has volumes: /etc/hosts, hostname, resolv.conf). Each StartContainer must fail
/// on the host before anything reaches the guest; no mount may land on (or below) the symlink
/// targets, they stay untouched, and nothing stays mounted under the vessel state root for
/// those containers. The pod itself keeps working (the scenarios that follow use it).
fn compromised_guest_cannot_redirect_binds(
    c: &mut Checks,
    cri: &CriContainerd,
    pod: &Pod,
    state_root: &Path,
) {
    let shared = state_root.join("k8s.io").join(&pod.id).join("shared");
    c.check(
        shared.is_dir(),
        format!("the pod's shared dir {}", shared.display()),
    );
    for (name, plant) in [("evil-dir", ""), ("evil-volume", "volumes/0")] {
        let victim = tempfile::Builder::new()
            .prefix("vessel-victim")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(victim.path().join("precious"), b"host data").unwrap();
        let cfg = vessel_tests::cri::container_config(name, &["true"]);
        let id = match cri.client().create_container(&pod.id, &cfg, &pod.config) {
            Ok(id) => id,
            Err(e) => {
                c.check(false, format!("CreateContainer {name}: {e:#}"));
                continue;
            }
        };
        let at = if plant.is_empty() {
            shared.join(&id)
        } else {
            shared.join(&id).join(plant)
        };
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(victim.path(), &at).unwrap();
        let started = c.time(&format!("StartContainer({name}, planted symlink)"), || {
            cri.client().start_container(&id).map(|_| String::new())
        });
        c.check(
            started.is_err(),
            format!("{name}: StartContainer refused the planted {plant:?} symlink: {started:?}"),
        );
        if let Err(e) = &started {
            let msg = format!("{e:#}");
            c.check(
                msg.contains("symbolic link"),
                format!("{name}: the error names the symlink: {msg}"),
            );
        }
        let under_victim = mounts_under(victim.path());
        c.check(
            under_victim.is_empty(),
            format!("{name}: no mount on the symlink's target: {under_victim:?}"),
        );
        let entries: Vec<_> = std::fs::read_dir(victim.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        c.check(
            entries.len() == 1
                && std::fs::read(victim.path().join("precious")).unwrap() == b"host data",
            format!("{name}: the symlink's target is untouched: {entries:?}"),
        );
        let left: Vec<String> = mounts_under(&shared)
            .into_iter()
            .filter(|m| m.contains(&id))
            .collect();
        c.check(
            left.is_empty(),
            format!("{name}: nothing of it mounted: {left:?}"),
        );
        if let Err(e) = cri.client().remove_container(&id) {
            c.check(false, format!("RemoveContainer {name}: {e:#}"));
        }
        c.check(
            victim.path().join("precious").exists(),
            format!("{name}: cleanup did not follow the symlink"),
        );
    }
}

/// The VMM runs jailed: the task pid is the jail's waiter, its one child the VMM proper, in
/// pid/mount/net namespaces of its own, holding only the virtio-fs capabilities, with
/// no_new_privs and a seccomp filter on every thread, seeing none of the host's files but
/// what the VM needs, in the pod's cgroup with the VMM's memory limit.
fn jailed_vmm_is_confined(c: &mut Checks, task_pid: u32, sandbox_dir: &Path, pod_cgroup: &str) {
    let children = std::fs::read_to_string(format!("/proc/{task_pid}/task/{task_pid}/children"))
        .unwrap_or_default();
    let kids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    c.check(
        kids.len() == 1,
        format!("the jail's waiter has one child, the VMM: {kids:?}"),
    );
    let Some(&vmm) = kids.first() else { return };
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_SETGID, CAP_SETUID.
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        c.check(
            field(set) == "00000000000000cf",
            format!(
                "jailed VMM {set} only the virtio-fs capabilities: {}",
                field(set)
            ),
        );
    }
    c.check(
        field("NoNewPrivs:") == "1",
        format!("jailed VMM NoNewPrivs: {}", field("NoNewPrivs:")),
    );
    let threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{vmm}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                    let mode = st
                        .lines()
                        .find_map(|l| l.strip_prefix("Seccomp:"))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default();
                    (comm.trim().to_string(), mode)
                })
                .collect()
        })
        .unwrap_or_default();
    c.check(
        !threads.is_empty() && threads.iter().all(|(_, m)| m == "2"),
        format!("every VMM thread runs under a seccomp filter: {threads:?}"),
    );
    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok();
        let jailed = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).ok();
        c.check(
            jailed.is_some() && jailed != host,
            format!("jailed VMM has its own {ns} namespace ({jailed:?} vs host {host:?})"),
        );
    }
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for host_path in ["/etc/passwd", "/usr/bin", "/root", "/var/lib"] {
        c.check(
            !inside(Path::new(host_path)).exists(),
            format!("the jail does not show the host's {host_path}"),
        );
    }
    c.check(
        inside(&sandbox_dir.join("vsock.sock")).exists(),
        format!(
            "the jail holds the pod's vsock socket {}",
            sandbox_dir.display()
        ),
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap_or_default();
    c.check(
        cgroup_path_of(&cgroup, "memory").as_deref() == Some(pod_cgroup),
        format!("the jailed VMM is in the pod's cgroup {pod_cgroup}: {cgroup:?}"),
    );
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{pod_cgroup}/memory.limit_in_bytes"
    ))
    .unwrap_or_default();
    let limit: u64 = limit.trim().parse().unwrap_or(u64::MAX);
    c.check(
        limit < 1 << 40,
        format!("the pod's VMM cgroup has a memory limit: {limit}"),
    );
}
