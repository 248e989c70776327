//! The pod's namespaces: a sandbox container's ipc, uts, net and pid namespaces are joined by
//! the pod's other containers (CreateContainer `pod_sandbox` / `pod_namespaces`).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::AgentClient;

use super::client::*;
use crate::bundle::ContainerSpec;

const NS_SCRIPT: &str =
    "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname; echo $$";

fn create_in_pod(
    client: &AgentClient,
    id: &str,
    spec: &ContainerSpec,
    sandbox: bool,
    join: &[PodNamespace],
) -> ttrpc::Result<Empty> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.to_string();
    req.oci_spec = spec.to_json();
    req.pod_sandbox = sandbox;
    req.pod_namespaces = join.iter().map(|k| (*k).into()).collect();
    client.create_container(ctx(), &req)
}

/// Creates and starts a container placed in the pod.
fn run_in_pod<'a>(
    client: &'a AgentClient,
    name: &str,
    spec: &ContainerSpec,
    sandbox: bool,
    join: &[PodNamespace],
) -> Result<Running<'a>> {
    let id = unique_id(name);
    create_in_pod(client, &id, spec, sandbox, join)
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
            false,
            &[PodNamespace::POD_NAMESPACE_NET],
        ),
        ttrpc::Code::FAILED_PRECONDITION,
        "pod namespaces without a sandbox container",
    )?;

    let pause = run_in_pod(client, "pause", &pause_spec, true, &[])?;
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
        create_in_pod(client, &second, &pause_spec, true, &[]),
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

    let net_ipc_uts = [
        PodNamespace::POD_NAMESPACE_NET,
        PodNamespace::POD_NAMESPACE_IPC,
        PodNamespace::POD_NAMESPACE_UTS,
    ];
    let member = run_in_pod(
        client,
        "member",
        &member_spec(rootfs, NS_SCRIPT),
        false,
        &net_ipc_uts,
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

    let mut with_pid = net_ipc_uts.to_vec();
    with_pid.push(PodNamespace::POD_NAMESPACE_PID);
    let pid_member = run_in_pod(
        client,
        "pidmember",
        &member_spec(rootfs, NS_SCRIPT),
        false,
        &with_pid,
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

    let loner = run_in_pod(client, "loner", &member_spec(rootfs, NS_SCRIPT), false, &[])?;
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
            false,
            &net_ipc_uts,
        ),
        ttrpc::Code::FAILED_PRECONDITION,
        "pod namespaces after the sandbox container is gone",
    )?;
    // And the pod can have a sandbox container again.
    let again = run_in_pod(client, "pause-again", &pause_spec, true, &[])?;
    drop(again);
    check(client)
}
