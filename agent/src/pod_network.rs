//! The pod's network in the guest: the NIC the VMM gives the VM takes the identity of CNI's
//! veth on the host (MAC, name, MTU, addresses), and the routes CNI made there. Used by
//! CreateSandbox (a pod with a network) and by UpdateInterface / UpdateRoutes.
//!
//! The NIC lives in the guest's root network namespace, which is the pod's: the runtime
//! leaves the sandbox container in it (as Kata does), and members join the sandbox's. The
//! agent itself listens only on vsock, which no network namespace sees.

use std::net::IpAddr;
use vessel_protocol::errors::chain;

use vessel_protocol::agent::{IPAddress, Interface, Route, UpdateInterfaceRequest};

use crate::error::{RequestError, RequestResult};
use crate::network::{self, Link, Netlink, NetlinkError, RouteSpec};

/// Bounds on what one request may ask for.
const MAX_ADDRESSES: usize = 64;
const MAX_ROUTES: usize = 256;
const MAX_INTERFACES: usize = 4;
const IFNAMSIZ: usize = 15;

fn net_err(e: NetlinkError) -> RequestError {
    match e {
        NetlinkError::Invalid { .. } => RequestError::invalid(chain(&e)),
        NetlinkError::NoSuchLink(..) => RequestError::not_found(chain(&e)),
        _ => RequestError::internal(chain(&e)),
    }
}

fn parse_addresses(addrs: &[IPAddress]) -> RequestResult<Vec<(IpAddr, u8)>> {
    if addrs.len() > MAX_ADDRESSES {
        return Err(RequestError::invalid(format!(
            "{} addresses (at most {MAX_ADDRESSES})",
            addrs.len()
        )));
    }
    let mut want = Vec::with_capacity(addrs.len());
    for a in addrs {
        let ip = network::parse_ip("address", &a.address)
            .map_err(net_err)?
            .ok_or_else(|| RequestError::invalid("empty address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if a.prefix_len > max {
            return Err(RequestError::invalid(format!(
                "prefix length {} for {}",
                a.prefix_len, a.address
            )));
        }
        want.push((ip, a.prefix_len as u8));
    }
    Ok(want)
}

fn parse_routes(routes: &[Route]) -> RequestResult<Vec<RouteSpec>> {
    if routes.len() > MAX_ROUTES {
        return Err(RequestError::invalid(format!(
            "{} routes (at most {MAX_ROUTES})",
            routes.len()
        )));
    }
    let inv = |e: NetlinkError| RequestError::invalid(chain(&e));
    routes
        .iter()
        .map(|r| {
            Ok(RouteSpec {
                dest: network::parse_dest(&r.dest).map_err(inv)?,
                gateway: network::parse_ip("gateway", &r.gateway).map_err(inv)?,
                device: (!r.device.is_empty()).then(|| r.device.clone()),
                source: network::parse_ip("source", &r.source).map_err(inv)?,
            })
        })
        .collect()
}

fn check_name(name: &str) -> RequestResult<()> {
    if name.len() > IFNAMSIZ || name.contains(['/', '\0']) || name.chars().any(char::is_whitespace)
    {
        return Err(RequestError::invalid(format!("interface name {name:?}")));
    }
    Ok(())
}

/// The interface as it is now.
fn describe(nl: &mut Netlink, link: Link) -> RequestResult<Interface> {
    let now = nl
        .links()
        .map_err(net_err)?
        .into_iter()
        .find(|l| l.index == link.index)
        .unwrap_or(link);
    let mut out = Interface::new();
    out.name = now.name;
    out.hw_addr = now.mac;
    out.mtu = now.mtu;
    for (ip, prefix) in nl.addresses(now.index).map_err(net_err)? {
        let mut a = IPAddress::new();
        a.address = ip.to_string();
        a.prefix_len = u32::from(prefix);
        out.addresses.push(a);
    }
    Ok(out)
}

/// Gives `link` the interface's name, MTU, MAC (when `set_mac`) and addresses, and sets it up.
fn apply(nl: &mut Netlink, link: &Link, iface: &Interface, set_mac: bool) -> RequestResult<()> {
    check_name(&iface.name)?;
    let want = parse_addresses(&iface.addresses)?;
    let mac = if set_mac && !iface.hw_addr.is_empty() {
        Some(network::parse_mac(&iface.hw_addr).map_err(net_err)?)
    } else {
        None
    };
    let rename = (!iface.name.is_empty() && iface.name != link.name).then_some(iface.name.as_str());
    let mtu = (iface.mtu > 0).then_some(iface.mtu);
    let set = |nl: &mut Netlink| nl.set_link(link.index, mtu, rename, mac.as_ref());
    set(nl)
        .or_else(|e| match e {
            // Up already (`nics_up`): the kernel renames only a link that is down.
            NetlinkError::Kernel {
                errno: nix::errno::Errno::EBUSY,
                ..
            } if rename.is_some() => nl.set_link_down(link.index).and_then(|()| set(nl)),
            e => Err(e),
        })
        .map_err(|e| match e {
            NetlinkError::Kernel {
                errno: nix::errno::Errno::EINVAL,
                ..
            } if mtu.is_some() => RequestError::invalid(format!(
                "interface {}: MTU {} is more than the guest's NIC takes ({e})",
                iface.name, iface.mtu
            )),
            e => net_err(e),
        })?;
    nl.set_addresses(link.index, &want).map_err(net_err)
}

/// UpdateInterface: the link named by the request's MAC (or name) gets its MTU, name and
/// addresses.
pub fn update_interface(req: &UpdateInterfaceRequest) -> RequestResult<Interface> {
    let iface = req
        .interface
        .as_ref()
        .ok_or_else(|| RequestError::invalid("interface is missing"))?;
    check_name(&iface.name)?;
    let mut nl = Netlink::open().map_err(net_err)?;
    let link = nl.find_link(&iface.name, &iface.hw_addr).map_err(net_err)?;
    apply(&mut nl, &link, iface, false)?;
    describe(&mut nl, link)
}

/// UpdateRoutes: adds the routes (direct ones first: a route through a gateway needs the
/// gateway's link route).
pub fn update_routes(routes: &[Route]) -> RequestResult<()> {
    let specs = parse_routes(routes)?;
    let mut nl = Netlink::open().map_err(|e| RequestError::internal(chain(&e)))?;
    let (direct, via): (Vec<_>, Vec<_>) = specs.iter().partition(|s| s.gateway.is_none());
    for s in direct.into_iter().chain(via) {
        nl.add_route(s).map_err(|e| match e {
            NetlinkError::NoSuchLink(..) => RequestError::not_found(chain(&e)),
            _ => RequestError::internal(format!("route {s:?}: {e}", e = chain(&e))),
        })?;
    }
    Ok(())
}

/// Sets every guest NIC up, with no address yet: done before a snapshot (`crate::warmup`),
/// so a restored pod's CreateSandbox does not pay the driver's open (virtio-net posts its
/// whole receive ring, 256 buffers, then) on the emulated guest kernel. A NIC that is up
/// and has no address sends nothing (the guest has no IPv6). Returns how many.
pub fn nics_up() -> Result<usize, NetlinkError> {
    let mut nl = Netlink::open()?;
    let nics = guest_nics(nl.links()?);
    for nic in &nics {
        nl.set_link(nic.index, None, None, None)?;
    }
    Ok(nics.len())
}

/// The guest's NICs: every link but loopback, in index order.
fn guest_nics(links: Vec<Link>) -> Vec<Link> {
    let mut nics: Vec<Link> = links.into_iter().filter(|l| l.name != "lo").collect();
    nics.sort_by_key(|l| l.index);
    nics
}

/// CreateSandbox's network: each interface takes the next guest NIC (by index) with its MAC,
/// name, MTU and addresses; then `lo` goes up and the routes are added. Checked first,
/// applied after: a request that cannot be applied changes nothing it could have refused.
pub fn configure_pod(interfaces: &[Interface], routes: &[Route]) -> RequestResult<()> {
    if interfaces.is_empty() {
        return Ok(());
    }
    if interfaces.len() > MAX_INTERFACES {
        return Err(RequestError::invalid(format!(
            "{} interfaces (at most {MAX_INTERFACES})",
            interfaces.len()
        )));
    }
    for i in interfaces {
        check_name(&i.name)?;
        parse_addresses(&i.addresses)?;
        network::parse_mac(&i.hw_addr).map_err(net_err)?;
    }
    parse_routes(routes)?;
    let mut nl = Netlink::open().map_err(net_err)?;
    let nics = guest_nics(nl.links().map_err(net_err)?);
    if nics.len() < interfaces.len() {
        return Err(RequestError::precondition(format!(
            "the pod has {} interface(s), the VM {} NIC(s) ({:?})",
            interfaces.len(),
            nics.len(),
            nics.iter().map(|l| &l.name).collect::<Vec<_>>()
        )));
    }
    for (iface, nic) in interfaces.iter().zip(&nics) {
        apply(&mut nl, nic, iface, true)?;
        log::info!(
            "pod network: {} is {} ({}, MTU {}, {} address(es))",
            nic.name,
            iface.name,
            iface.hw_addr,
            iface.mtu,
            iface.addresses.len()
        );
    }
    network::loopback_up().map_err(net_err)?;
    update_routes(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: i32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn nics_are_every_link_but_lo_in_index_order() {
        let nics = guest_nics(vec![link(3, "eth1"), link(1, "lo"), link(2, "eth0")]);
        let names: Vec<&str> = nics.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
    }

    #[test]
    fn bad_requests_are_refused_before_anything_changes() {
        let mut iface = Interface::new();
        iface.name = "eth0".into();
        iface.hw_addr = "02:00:00:00:00:01".into();
        let mut a = IPAddress::new();
        a.address = "10.0.0.2".into();
        a.prefix_len = 33;
        iface.addresses.push(a);
        let e = configure_pod(std::slice::from_ref(&iface), &[]).unwrap_err();
        assert!(e.message.contains("prefix length 33"), "{}", e.message);
        iface.addresses.clear();
        iface.hw_addr = "02:00:00:00:00".into();
        let e = configure_pod(std::slice::from_ref(&iface), &[]).unwrap_err();
        assert!(e.message.contains("MAC address"), "{}", e.message);
        iface.hw_addr = "02:00:00:00:00:01".into();
        iface.name = "a/b".into();
        let e = configure_pod(std::slice::from_ref(&iface), &[]).unwrap_err();
        assert!(e.message.contains("interface name"), "{}", e.message);
        iface.name = "eth0".into();
        let mut r = Route::new();
        r.dest = "10.0.0.0/99".into();
        let e = configure_pod(std::slice::from_ref(&iface), &[r]).unwrap_err();
        assert!(e.message.contains("10.0.0.0/99"), "{}", e.message);
        let many = vec![iface; MAX_INTERFACES + 1];
        assert!(configure_pod(&many, &[]).is_err());
        assert!(configure_pod(&[], &[]).is_ok(), "no network: nothing to do");
    }
}
