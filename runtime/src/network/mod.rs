//! The pod's network, Kata's tcfilter model: CNI made a veth (with the pod's MAC, addresses
//! and routes) in the pod's network namespace on the host, as for runc. The runtime creates a
//! tap beside it and joins the two with tc: an ingress qdisc on each and a u32 match-all
//! filter whose mirred action redirects every frame to the other's egress. The tap's fd goes
//! to the VMM's virtio-net device; the agent gives the guest's NIC the veth's MAC, addresses,
//! MTU and routes. The veth keeps its addresses (nothing on the host reads them; CNI's
//! teardown finds what it made).
//!
//! Lifetimes: the tap is not persistent, so it exists exactly as long as an fd holds it (the
//! runtime's until the VMM has its own, then the VMM's). Teardown ([`unwire`]) removes the
//! veth's ingress qdisc (its filters go with it) and the tap if it is still there; it runs
//! from the record in the pod's state file, so it also works after a crash, and does
//! nothing once CNI has deleted the namespace.
//!
//! No netns in the spec (`ctr run`'s default): no wiring, the guest has `lo` only. A
//! host-network pod is refused before this (`pod::namespaces`).

pub mod netlink;
mod netns;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vessel_protocol::agent as pb;

use netlink::{Link, NlError, Route, Rtnl};
pub use netns::{in_netns, NetnsError};

/// The tap's name in the pod's namespace (one per pod).
pub const TAP_NAME: &str = "vessel_tap0";
/// The interface CNI makes for a CRI pod.
const CNI_IFNAME: &str = "eth0";

/// Wiring or unwiring a pod's network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod network {netns}: {step}")]
    Netlink {
        netns: String,
        step: &'static str,
        #[source]
        source: NlError,
    },
    #[error("pod network {netns}: no interface to connect to the VM (links: {links:?})")]
    NoInterface { netns: String, links: Vec<String> },
    #[error("pod network {netns}: creating tap {tap}")]
    Tap {
        netns: String,
        tap: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What the runtime makes in a pod's network namespace: recorded in the pod's state file
/// before it exists, so that cleanup can undo it whoever died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The namespace (CNI's path in the sandbox spec).
    pub netns: PathBuf,
    /// CNI's interface, which gets an ingress qdisc.
    pub veth: String,
    /// The tap made beside it.
    pub tap: String,
}

/// The pod's interface as the guest must show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<Route>,
}

/// A wired pod network: the tap's fd (for the VMM) and what the agent configures.
#[derive(Debug)]
pub struct PodNetwork {
    pub record: NetworkRecord,
    pub tap: OwnedFd,
    pub guest: GuestInterface,
}

/// Maps a netlink failure of `step` in namespace `netns`.
fn netlink_error(netns: &str, step: &'static str) -> impl FnOnce(NlError) -> NetworkError {
    let netns = netns.to_string();
    move |source| NetworkError::Netlink {
        netns,
        step,
        source,
    }
}

/// CNI's interface among a namespace's links: `eth0` if there is one, else the only link
/// that is neither loopback nor our tap.
pub fn pick_interface(links: &[Link]) -> Option<&Link> {
    let candidates: Vec<&Link> = links
        .iter()
        .filter(|l| !l.loopback && l.name != TAP_NAME)
        .collect();
    candidates
        .iter()
        .find(|l| l.name == CNI_IFNAME)
        .or_else(|| (candidates.len() == 1).then(|| &candidates[0]))
        .copied()
}

/// The addresses the guest takes over: all but IPv6 link-local ones (the guest kernel makes
/// its own from the MAC).
pub fn guest_addresses(addrs: &[(IpAddr, u8)]) -> Vec<(IpAddr, u8)> {
    addrs
        .iter()
        .filter(|(ip, _)| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .copied()
        .collect()
}

/// The routes the guest takes over: all but the kernel's prefix routes (the guest kernel
/// adds those itself with the addresses).
pub fn guest_routes(routes: &[Route]) -> Vec<Route> {
    routes.iter().filter(|r| !r.kernel).cloned().collect()
}

/// Reads the pod's interface in `netns` (changes nothing).
pub fn discover(netns: &Path) -> Result<GuestInterface, NetworkError> {
    let shown = netns.display().to_string();
    in_netns(netns, || {
        let nl = |step| netlink_error(&shown, step);
        let mut rtnl = Rtnl::open().map_err(nl("netlink socket"))?;
        let links = rtnl.links().map_err(nl("listing links"))?;
        let link = pick_interface(&links)
            .ok_or_else(|| NetworkError::NoInterface {
                netns: shown.clone(),
                links: links.iter().map(|l| l.name.clone()).collect(),
            })?
            .clone();
        let addresses = rtnl
            .addresses(link.index)
            .map_err(nl("listing addresses"))?;
        let routes = rtnl.routes(link.index).map_err(nl("listing routes"))?;
        Ok(GuestInterface {
            name: link.name,
            mac: link.mac,
            mtu: link.mtu,
            addresses: guest_addresses(&addresses),
            routes: guest_routes(&routes),
        })
    })
}

/// Creates the tap beside `veth` in `netns` and the redirects between them; the tap's fd.
/// On failure nothing it made is left (the tap goes with its fd).
pub fn connect(netns: &Path, veth: &str, mtu: u32) -> Result<OwnedFd, NetworkError> {
    let shown = netns.display().to_string();
    in_netns(netns, || {
        let nl = |step| netlink_error(&shown, step);
        let mut rtnl = Rtnl::open().map_err(nl("netlink socket"))?;
        // A tap left by an earlier run of this pod's id (its VMM died holding it: then it
        // is gone already; persistent ones are not ours).
        if let Some(old) = rtnl.link_by_name(TAP_NAME).map_err(nl("listing links"))? {
            rtnl.del_link(old.index)
                .map_err(nl("removing a stale tap"))?;
        }
        let veth_link = rtnl
            .link_by_name(veth)
            .map_err(nl("listing links"))?
            .ok_or_else(|| NetworkError::NoInterface {
                netns: shown.clone(),
                links: vec![],
            })?;
        let tap = crate::sys::open_tap(TAP_NAME).map_err(|source| NetworkError::Tap {
            netns: shown.clone(),
            tap: TAP_NAME,
            source,
        })?;
        let wired = (|| {
            let tap_link = rtnl
                .link_by_name(TAP_NAME)
                .map_err(nl("listing links"))?
                .ok_or_else(|| NetworkError::NoInterface {
                    netns: shown.clone(),
                    links: vec![TAP_NAME.to_string()],
                })?;
            rtnl.set_up(tap_link.index, Some(mtu))
                .map_err(nl("setting the tap up"))?;
            rtnl.add_ingress_qdisc(veth_link.index)
                .map_err(nl("adding the veth's ingress qdisc"))?;
            rtnl.add_ingress_qdisc(tap_link.index)
                .map_err(nl("adding the tap's ingress qdisc"))?;
            rtnl.redirect(veth_link.index, tap_link.index)
                .map_err(nl("redirecting veth → tap"))?;
            rtnl.redirect(tap_link.index, veth_link.index)
                .map_err(nl("redirecting tap → veth"))?;
            Ok(())
        })();
        if let Err(e) = wired {
            // The tap and its qdisc go when `tap` is dropped; the veth's qdisc stays unless
            // removed here.
            let _ = rtnl.del_ingress_qdisc(veth_link.index);
            return Err(e);
        }
        Ok(tap)
    })
}

/// Undoes [`connect`] from its record: the veth's ingress qdisc and the tap, where they
/// still exist. A namespace that is gone (CNI tore it down) leaves nothing to do.
pub fn unwire(rec: &NetworkRecord) -> Result<(), NetworkError> {
    if !rec.netns.exists() {
        return Ok(());
    }
    let shown = rec.netns.display().to_string();
    let result = in_netns(&rec.netns, || {
        let nl = |step| netlink_error(&shown, step);
        let mut rtnl = Rtnl::open().map_err(nl("netlink socket"))?;
        if let Some(veth) = rtnl.link_by_name(&rec.veth).map_err(nl("listing links"))? {
            match rtnl.del_ingress_qdisc(veth.index) {
                // Not there (never made, or removed already).
                Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL)) => {}
                r => r.map_err(nl("removing the veth's ingress qdisc"))?,
            }
        }
        if let Some(tap) = rtnl.link_by_name(&rec.tap).map_err(nl("listing links"))? {
            match rtnl.del_link(tap.index) {
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                r => r.map_err(nl("removing the tap"))?,
            }
        }
        Ok(())
    });
    match result {
        // Removed between the check and the open.
        Err(NetworkError::Netns(NetnsError::Open { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What CreateSandbox tells the agent: the interface and its routes.
pub fn agent_interface(g: &GuestInterface) -> (pb::Interface, Vec<pb::Route>) {
    let iface = pb::Interface {
        name: g.name.clone(),
        hw_addr: mac_string(&g.mac),
        mtu: g.mtu,
        addresses: g
            .addresses
            .iter()
            .map(|(ip, prefix)| pb::IPAddress {
                address: ip.to_string(),
                prefix_len: u32::from(*prefix),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = g
        .routes
        .iter()
        .map(|r| pb::Route {
            dest: r
                .dest
                .map_or_else(String::new, |(ip, len)| format!("{ip}/{len}")),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: g.name.clone(),
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    (iface, routes)
}

#[cfg(test)]
mod tests;
