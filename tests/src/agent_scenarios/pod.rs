//! The pod's namespaces: a sandbox container's ipc, uts, net and pid namespaces are joined by
//! the pod's other containers (CreateContainer `pod_sandbox` / `pod_namespaces`).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::AgentClient;

use super::client::*;
use crate::bundle::ContainerSpec;

/// What a CRI member joins by default, and with a shared pid namespace.
const NET_IPC_UTS: [PodNamespace; 3] = [
    PodNamespace::POD_NAMESPACE_NET,
    PodNamespace::POD_NAMESPACE_IPC,
    PodNamespace::POD_NAMESPACE_UTS,
];
const ALL_FOUR: [PodNamespace; 4] = [
    PodNamespace::POD_NAMESPACE_NET,
    PodNamespace::POD_NAMESPACE_IPC,
    PodNamespace::POD_NAMESPACE_UTS,
    PodNamespace::POD_NAMESPACE_PID,
];

const NS_SCRIPT: &str =
    "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname; echo $$";

/// The pod's place of a new container: its sandbox (with the pause image's program, or the
/// agent's built-in pause), or a member.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Sandbox,
    BuiltinPause,
    Member,
}

fn create_in_pod(
    client: &AgentClient,
    id: &str,
    spec: &ContainerSpec,
    role: Role,
    join: &[PodNamespace],
) -> ttrpc::Result<Empty> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.to_string();
    req.oci_spec = spec.to_json();
    req.pod_sandbox = role != Role::Member;
    req.builtin_pause = role == Role::BuiltinPause;
    req.pod_namespaces = join.iter().map(|k| (*k).into()).collect();
    client.create_container(ctx(), &req)
}

/// Creates and starts a container placed in the pod.
fn run_in_pod<'a>(
    client: &'a AgentClient,
    name: &str,
    spec: &ContainerSpec,
    role: Role,
    join: &[PodNamespace],
) -> Result<Running<'a>> {
    let id = unique_id(name);
    create_in_pod(client, &id, spec, role, join)
        .with_context(|| format!("CreateContainer {id}"))?;
    let mut running = Running {
        client,
        id: id.clone(),
        pid: 0,
    };
    let mut req = StartContainerRequest::new();
    req.container_id = id.clone();
    running.pid = client
        .start_container(ctx(), &req)
        .with_context(|| format!("StartContainer {id}"))?
        .pid;
    Ok(running)
}

/// The spec of a pod member: no hostname of its own (CRI sets it on the sandbox only).
fn member_spec(rootfs: &Path, script: &str) -> ContainerSpec {
    let mut s = ContainerSpec::new(rootfs).shell(script).spec().clone();
    s.set_hostname(None);
    ContainerSpec::from_spec(s)
}

/// The namespace links, hostname and `$$` a container printed.
struct Seen {
    net: String,
    ipc: String,
    uts: String,
    pid: String,
    hostname: String,
    shell_pid: String,
}

fn seen(out: &str) -> Result<Seen> {
    let l: Vec<&str> = out.lines().collect();
    ensure!(l.len() == 6, "expected 6 lines, got {out:?}");
    Ok(Seen {
        net: l[0].into(),
        ipc: l[1].into(),
        uts: l[2].into(),
        pid: l[3].into(),
        hostname: l[4].into(),
        shell_pid: l[5].into(),
    })
}

/// Members join the sandbox container's net/ipc/uts (and pid when asked); a container that
/// asks for none shares nothing; the pod needs its sandbox container, only one, and its
/// namespaces go with it.
pub fn pod_namespaces(client: &AgentClient, rootfs: &Path) -> Result<()> {
    let mut pause_spec = ContainerSpec::new(rootfs)
        .shell("sleep 1000")
        .spec()
        .clone();
    pause_spec.set_hostname(Some("pod-host".into()));
    let pause_spec = ContainerSpec::from_spec(pause_spec);

    // Nothing to join before the pod has its sandbox container.
    let early = unique_id("early");
    expect_code(
        create_in_pod(
            client,
            &early,
            &member_spec(rootfs, "true"),
            Role::Member,
            &[PodNamespace::POD_NAMESPACE_NET],
        ),
        ttrpc::Code::FAILED_PRECONDITION,
        "pod namespaces without a sandbox container",
    )?;

    let pause = run_in_pod(client, "pause", &pause_spec, Role::Sandbox, &[])?;
    // The pause's own view, through an exec (which joins the container's namespaces).
    let probe = member_spec(rootfs, NS_SCRIPT);
    pause
        .exec("probe", &probe, false)
        .context("ExecProcess in the sandbox container")?;
    let (out, err, status) = pause.output("probe")?;
    ensure!(status == 0, "probe exec: status {status}, stderr {err:?}");
    let pod = seen(&out)?;
    ensure!(
        pod.hostname == "pod-host",
        "pod hostname {:?}",
        pod.hostname
    );

    let second = unique_id("pause2");
    expect_code(
        create_in_pod(client, &second, &pause_spec, Role::Sandbox, &[]),
        ttrpc::Code::ALREADY_EXISTS,
        "a second sandbox container",
    )?;
    let mut bad = CreateContainerRequest::new();
    bad.container_id = unique_id("badkind");
    bad.oci_spec = member_spec(rootfs, "true").to_json();
    bad.pod_namespaces = vec![PodNamespace::POD_NAMESPACE_UNSPECIFIED.into()];
    expect_code(
        client.create_container(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "an unspecified pod namespace kind",
    )?;

    let member = run_in_pod(
        client,
        "member",
        &member_spec(rootfs, NS_SCRIPT),
        Role::Member,
        &NET_IPC_UTS,
    )?;
    let (out, err, status) = member.output("")?;
    ensure!(status == 0, "member: status {status}, stderr {err:?}");
    let m = seen(&out)?;
    ensure!(m.net == pod.net, "member net {} vs pod {}", m.net, pod.net);
    ensure!(m.ipc == pod.ipc, "member ipc {} vs pod {}", m.ipc, pod.ipc);
    ensure!(m.uts == pod.uts, "member uts {} vs pod {}", m.uts, pod.uts);
    ensure!(m.hostname == "pod-host", "member hostname {:?}", m.hostname);
    ensure!(
        m.pid != pod.pid && m.shell_pid == "1",
        "member pid ns {} ({})",
        m.pid,
        m.shell_pid
    );

    let pid_member = run_in_pod(
        client,
        "pidmember",
        &member_spec(rootfs, NS_SCRIPT),
        Role::Member,
        &ALL_FOUR,
    )?;
    let (out, _, status) = pid_member.output("")?;
    ensure!(status == 0, "pid member: status {status}");
    let p = seen(&out)?;
    ensure!(
        p.pid == pod.pid,
        "pid member pid ns {} vs pod {}",
        p.pid,
        pod.pid
    );
    ensure!(
        p.shell_pid != "1",
        "in the pod's pid namespace the pause is pid 1, not the member"
    );

    let loner = run_in_pod(
        client,
        "loner",
        &member_spec(rootfs, NS_SCRIPT),
        Role::Member,
        &[],
    )?;
    let (out, _, status) = loner.output("")?;
    ensure!(status == 0, "loner: status {status}");
    let l = seen(&out)?;
    ensure!(
        l.net != pod.net && l.ipc != pod.ipc && l.uts != pod.uts,
        "a container outside the pod shares its namespaces: {out:?}"
    );

    // Removing the sandbox container takes the pod's namespaces with it.
    drop(pause);
    let late = unique_id("late");
    expect_code(
        create_in_pod(
            client,
            &late,
            &member_spec(rootfs, "true"),
            Role::Member,
            &NET_IPC_UTS,
        ),
        ttrpc::Code::FAILED_PRECONDITION,
        "pod namespaces after the sandbox container is gone",
    )?;
    // And the pod can have a sandbox container again: the agent's built-in pause this time.
    builtin_pause(client, rootfs, Some(&pod))?;
    check(client)
}

/// The built-in pause on its own, in an agent whose sandbox has no pod yet (the VM
/// scenarios: the image's pause is covered there by the CRI pod).
pub fn builtin_pause_pod(client: &AgentClient, rootfs: &Path) -> Result<()> {
    builtin_pause(client, rootfs, None)?;
    check(client)
}

/// What a pod member sees of a built-in pause through the pod's pid namespace: PID 1's
/// identity and confinement, then whether an orphan it left was reaped.
const PID1_SCRIPT: &str =
    "grep -E '^(Name|Uid|NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/1/status; \
     echo OomScoreAdj: $(cat /proc/1/oom_score_adj); readlink /proc/self/ns/ipc; hostname; \
     p=$( (sleep 0 >/dev/null 2>&1 & echo $!) ); i=0; \
     while [ -e /proc/$p ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
     [ -e /proc/$p ] && echo orphan $p left || echo orphan reaped";

/// The agent's built-in pause as the pod's sandbox: members get its namespaces and hostname,
/// it is PID 1 of the pod's pid namespace, confined (uid 65535, no capabilities, seccomp,
/// no new privileges) with the spec's `oom_score_adj`, it reaps orphans, an exec into it is
/// refused, SIGTERM ends it with 0.
/// `image_pod`: the pod the image's pause made before, whose ipc namespace must not be reused.
fn builtin_pause(client: &AgentClient, rootfs: &Path, image_pod: Option<&Seen>) -> Result<()> {
    let mut spec = ContainerSpec::new(rootfs).shell("exit 99").spec().clone();
    spec.set_hostname(Some("builtin-pod".into()));
    if let Some(p) = spec.process_mut() {
        p.user_mut().set_uid(65535);
        p.user_mut().set_gid(65535);
        // Raised, not lowered: lowering needs CAP_SYS_RESOURCE, which the host-agent test
        // machines lack (in a VM the agent has it; CRI asks for -998).
        p.set_oom_score_adj(Some(123));
    }
    let pause = run_in_pod(
        client,
        "builtin-pause",
        &ContainerSpec::from_spec(spec),
        Role::BuiltinPause,
        &[],
    )?;
    expect_code(
        pause.exec("probe", &member_spec(rootfs, "true"), false),
        ttrpc::Code::FAILED_PRECONDITION,
        "an exec into the built-in pause",
    )?;
    let mut bad = CreateContainerRequest::new();
    bad.container_id = unique_id("notsandbox");
    bad.oci_spec = member_spec(rootfs, "true").to_json();
    bad.builtin_pause = true;
    expect_code(
        client.create_container(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "builtin_pause without pod_sandbox",
    )?;

    let member = run_in_pod(
        client,
        "pid1-probe",
        &member_spec(rootfs, PID1_SCRIPT),
        Role::Member,
        &ALL_FOUR,
    )?;
    let (out, err, status) = member.output("")?;
    ensure!(status == 0, "probe: status {status}, stderr {err:?}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .unwrap_or("")
            .to_string()
    };
    let uids = field("Uid:");
    ensure!(
        uids.split_whitespace().count() == 4 && uids.split_whitespace().all(|u| u == "65535"),
        "PID 1 runs as 65535: {out:?}"
    );
    for (name, want) in [
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
        ("CapEff:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("OomScoreAdj:", "123"),
    ] {
        ensure!(field(name) == want, "PID 1's {name} is {want}: {out:?}");
    }
    ensure!(
        out.lines().any(|l| l == "builtin-pod"),
        "the member has the pod's hostname: {out:?}"
    );
    ensure!(
        out.contains("ipc:[") && image_pod.is_none_or(|p| !out.lines().any(|l| l == p.ipc)),
        "the built-in pause made a new ipc namespace: {out:?}"
    );
    ensure!(
        out.lines().any(|l| l == "orphan reaped"),
        "PID 1 reaped the member's orphan: {out:?}"
    );
    drop(member);

    pause
        .signal("", libc::SIGTERM, false)
        .context("SIGTERM to the built-in pause")?;
    let code = pause.wait("")?;
    ensure!(
        code == 0,
        "the built-in pause ends with 0 on SIGTERM, not {code}"
    );
    Ok(())
}
