//! Sandbox-level scenarios: storages and DNS shared with containers, network configuration.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use oci_spec::runtime::MountBuilder;
use vessel_protocol::agent::*;
use vessel_protocol::agent_ttrpc::AgentClient;

use super::{ctx, expect_code, run};
use crate::bundle::ContainerSpec;

/// CreateSandbox mounts a tmpfs storage at `shared` (a path in the agent's filesystem) and
/// keeps DNS for containers; two containers share the storage through bind mounts and see
/// the sandbox's resolv.conf. A second CreateSandbox is ALREADY_EXISTS.
pub fn sandbox_storage_and_dns(client: &AgentClient, rootfs: &Path, shared: &Path) -> Result<()> {
    let mut storage = Storage::new();
    storage.driver = "tmpfs".into();
    storage.source = "vessel-shared".into();
    storage.options = vec!["size=4m".into(), "mode=0777".into()];
    storage.mount_point = shared.display().to_string();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sandbox-test".into();
    req.hostname = "pod-host".into();
    req.storages = vec![storage.clone()];
    req.dns = vec!["nameserver 192.0.2.53".into(), "search example.test".into()];
    client
        .create_sandbox(ctx(), &req)
        .context("CreateSandbox")?;
    expect_code(
        client.create_sandbox(ctx(), &req),
        ttrpc::Code::ALREADY_EXISTS,
        "second CreateSandbox",
    )?;

    let bind = |spec: ContainerSpec| -> ContainerSpec {
        let mut s = spec.spec().clone();
        let mut mounts = s.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/shared")
                .typ("bind")
                .source(shared)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .expect("bind mount"),
        );
        s.set_mounts(Some(mounts));
        ContainerSpec::from_spec(s)
    };
    let writer = run(
        client,
        "writer",
        &bind(ContainerSpec::new(rootfs).shell("echo from-writer > /shared/note")),
        false,
    )?;
    ensure!(writer.wait("")? == 0, "writer failed");
    let reader = run(
        client,
        "reader",
        &bind(ContainerSpec::new(rootfs).shell("cat /shared/note; cat /etc/resolv.conf")),
        false,
    )?;
    let (out, err, status) = reader.output("")?;
    ensure!(status == 0, "reader status {status}: {err}");
    ensure!(
        out.starts_with("from-writer\n"),
        "storage not shared: {out:?}"
    );
    ensure!(
        out.contains("nameserver 192.0.2.53\nsearch example.test\n"),
        "resolv.conf not the sandbox's: {out:?}"
    );
    drop((writer, reader));

    // A storage with an unknown driver is refused before anything is mounted.
    let mut bad = CreateContainerRequest::new();
    bad.container_id = super::unique_id("badstorage");
    bad.oci_spec = ContainerSpec::new(rootfs).shell("true").to_json();
    let mut s = storage;
    s.driver = "nfs-please".into();
    bad.storages = vec![s];
    expect_code(
        client.create_container(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "unknown storage driver",
    )?;

    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .context("DestroySandbox")?;
    Ok(())
}

/// CreateSandbox with host entropy and time, as the runtime sends them to a VM restored
/// from a snapshot, succeeds; out-of-range values are INVALID_ARGUMENT and create nothing.
pub fn sandbox_freshness(client: &AgentClient) -> Result<()> {
    use std::io::Read;
    let mut bad = CreateSandboxRequest::new();
    bad.sandbox_id = "fresh".into();
    bad.entropy = vec![7; 513];
    expect_code(
        client.create_sandbox(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "513 bytes of entropy",
    )?;
    bad.entropy = vec![7; 32];
    bad.realtime_ns = -1;
    expect_code(
        client.create_sandbox(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "negative realtime_ns",
    )?;

    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "fresh".into();
    req.entropy = vec![0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut req.entropy)?;
    req.realtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos()
        .try_into()?;
    client
        .create_sandbox(ctx(), &req)
        .context("CreateSandbox with entropy and realtime")?;
    expect_code(
        client.create_sandbox(ctx(), &req),
        ttrpc::Code::ALREADY_EXISTS,
        "second CreateSandbox (the first one created the sandbox)",
    )?;
    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .context("DestroySandbox")?;
    Ok(())
}

/// UpdateInterface renames, sets MTU and addresses of the link with `mac`; UpdateRoutes adds
/// a subnet route and a default route. Addresses are from documentation ranges.
pub fn network_config(client: &AgentClient, mac: &str) -> Result<()> {
    let mut iface = Interface::new();
    iface.name = "eth0".into();
    iface.hw_addr = mac.into();
    iface.mtu = 1400;
    for (a, p) in [("192.0.2.10", 24), ("2001:db8::10", 64)] {
        let mut ip = IPAddress::new();
        ip.address = a.into();
        ip.prefix_len = p;
        iface.addresses.push(ip);
    }
    let mut req = UpdateInterfaceRequest::new();
    req.interface = protobuf::MessageField::some(iface.clone());
    let got = client
        .update_interface(ctx(), &req)
        .context("UpdateInterface")?;
    ensure!(got.name == "eth0" && got.mtu == 1400, "interface {got:?}");
    ensure!(
        got.hw_addr.eq_ignore_ascii_case(mac),
        "hw_addr {}",
        got.hw_addr
    );
    for want in ["192.0.2.10", "2001:db8::10"] {
        ensure!(
            got.addresses.iter().any(|a| a.address == want),
            "{want} missing from {:?}",
            got.addresses
        );
    }

    let route = |dest: &str, gw: &str| {
        let mut r = Route::new();
        r.dest = dest.into();
        r.gateway = gw.into();
        r.device = "eth0".into();
        r
    };
    let mut routes = UpdateRoutesRequest::new();
    routes.routes = vec![route("default", "192.0.2.1"), route("198.51.100.0/24", "")];
    client
        .update_routes(ctx(), &routes)
        .context("UpdateRoutes")?;

    let mut bad = UpdateRoutesRequest::new();
    bad.routes = vec![route("10.0.0.0/99", "")];
    expect_code(
        client.update_routes(ctx(), &bad),
        ttrpc::Code::INVALID_ARGUMENT,
        "bad route",
    )?;
    let mut missing = req.clone();
    let mut ghost = iface;
    ghost.name = "nope0".into();
    ghost.hw_addr = "02:00:00:00:00:99".into();
    missing.interface = protobuf::MessageField::some(ghost);
    expect_code(
        client.update_interface(ctx(), &missing),
        ttrpc::Code::NOT_FOUND,
        "unknown interface",
    )?;
    Ok(())
}
