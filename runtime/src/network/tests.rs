//! The wiring plan without privileges, then the real thing as root in network namespaces the
//! test makes itself (a "pod" namespace with CNI's veth, a "host" namespace with its peer; a
//! private /24 on those two interfaces only): frames written on the tap, as the guest would,
//! reach the host side through the redirects, the answers come back through the tap, and
//! teardown leaves neither tap nor filter.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use super::netlink::{Link, Route, Rtnl};
use super::*;

fn link(index: u32, name: &str, loopback: bool) -> Link {
    Link {
        index,
        name: name.into(),
        loopback,
        ..Default::default()
    }
}

#[test]
fn the_cni_interface_is_eth0_or_the_only_other_link() {
    let lo = link(1, "lo", true);
    let eth0 = link(3, "eth0", false);
    let other = link(4, "net1", false);
    let tap = link(5, TAP_NAME, false);
    let pick = |links: &[Link]| pick_interface(links).map(|l| l.name.clone());
    assert_eq!(
        pick(&[lo.clone(), other.clone(), eth0.clone()]),
        Some("eth0".into())
    );
    assert_eq!(
        pick(&[lo.clone(), other.clone(), tap.clone()]),
        Some("net1".into())
    );
    assert_eq!(
        pick(&[lo.clone(), tap.clone()]),
        None,
        "our tap is never CNI's"
    );
    assert_eq!(
        pick(&[lo.clone(), other.clone(), link(6, "net2", false)]),
        None
    );
    assert_eq!(pick(&[lo]), None);
}

#[test]
fn the_guest_gets_global_addresses_and_non_kernel_routes() {
    let v4: IpAddr = "10.88.0.5".parse().unwrap();
    let ll: IpAddr = "fe80::1".parse().unwrap();
    let v6: IpAddr = "fd00::5".parse().unwrap();
    assert_eq!(
        guest_addresses(&[(v4, 16), (ll, 64), (v6, 64)]),
        vec![(v4, 16), (v6, 64)]
    );
    let gw: IpAddr = "10.88.0.1".parse().unwrap();
    let default = Route {
        dest: None,
        gateway: Some(gw),
        source: None,
        kernel: false,
    };
    let prefix = Route {
        dest: Some(("10.88.0.0".parse().unwrap(), 16)),
        gateway: None,
        source: Some(v4),
        kernel: true,
    };
    assert_eq!(guest_routes(&[prefix, default.clone()]), vec![default]);
}

#[test]
fn the_agent_is_told_mac_addresses_and_routes() {
    let g = GuestInterface {
        name: "eth0".into(),
        mac: vec![0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05],
        mtu: 1450,
        addresses: vec![("10.88.0.5".parse().unwrap(), 16)],
        routes: vec![
            Route {
                dest: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                source: None,
                kernel: false,
            },
            Route {
                dest: Some(("192.168.7.0".parse().unwrap(), 24)),
                gateway: None,
                source: Some("10.88.0.5".parse().unwrap()),
                kernel: false,
            },
        ],
    };
    let (iface, routes) = agent_interface(&g);
    assert_eq!(iface.name, "eth0");
    assert_eq!(iface.hw_addr, "0a:58:0a:58:00:05");
    assert_eq!(iface.mtu, 1450);
    assert_eq!(iface.addresses.len(), 1);
    assert_eq!(
        (
            iface.addresses[0].address.as_str(),
            iface.addresses[0].prefix_len
        ),
        ("10.88.0.5", 16)
    );
    let r: Vec<(&str, &str, &str, &str)> = routes
        .iter()
        .map(|r| {
            (
                r.dest.as_str(),
                r.gateway.as_str(),
                r.device.as_str(),
                r.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        r,
        [
            ("", "10.88.0.1", "eth0", ""),
            ("192.168.7.0/24", "", "eth0", "10.88.0.5")
        ]
    );
}

// ---- as root, in namespaces of the test's own ----

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, veth, tap, tc): run the suite as root"
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip(8)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: "pod" (`eth0`, .2) and "host" (`peer`, .1).
struct Fixture {
    pod: String,
    host: String,
    subnet: u8,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        need_root();
        let n = std::process::id() % 200 + 20;
        let f = Fixture {
            pod: format!("vessel-nt-pod-{tag}-{}", std::process::id()),
            host: format!("vessel-nt-host-{tag}-{}", std::process::id()),
            subnet: u8::try_from(n).unwrap_or(20),
        };
        let _ = Command::new("ip").args(["netns", "del", &f.pod]).output();
        let _ = Command::new("ip").args(["netns", "del", &f.host]).output();
        ip(&["netns", "add", &f.pod]);
        ip(&["netns", "add", &f.host]);
        ip(&[
            "-n", &f.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer", "netns",
            &f.host,
        ]);
        let (pod_ip, host_ip) = (f.addr(2), f.addr(1));
        ip(&[
            "-n",
            &f.pod,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &f.pod, "link", "set", "eth0", "up"]);
        ip(&["-n", &f.pod, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &f.pod,
            "route",
            "add",
            "default",
            "via",
            &host_ip.to_string(),
        ]);
        ip(&[
            "-n",
            &f.host,
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            "peer",
        ]);
        ip(&["-n", &f.host, "link", "set", "peer", "up"]);
        f
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, host)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }

    /// (MAC of `dev` in namespace `ns`).
    fn mac(&self, ns: &str, dev: &str) -> Vec<u8> {
        in_netns(&PathBuf::from("/var/run/netns").join(ns), || {
            let mut r = Rtnl::open().map_err(|e| NetworkError::Netlink {
                netns: ns.into(),
                step: "test",
                source: e,
            })?;
            Ok::<_, NetworkError>(r.link_by_name(dev).unwrap().expect("link").mac)
        })
        .expect("mac")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.pod])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .output();
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame with an ICMP echo request from `src` to `dst`.
fn echo_request(src_mac: &[u8], dst_mac: &[u8], src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"vessel tc redirect");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    let total = (20 + icmp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Reads frames from the tap until `want` holds for one, up to a few seconds.
/// The tap's `virtio_net_hdr` before each frame: the kernel's default size (10 bytes, the
/// legacy header), which the VMM raises to 12 on its copy of the fd.
const TAP_HDR_LEN: usize = 10;

/// Reads frames (their header stripped) until `want` takes one.
fn read_until(tap: &OwnedFd, want: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(tap),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        if let Ok(n) = nix::unistd::read(tap, &mut buf) {
            if n >= TAP_HDR_LEN && want(&buf[TAP_HDR_LEN..n]) {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_pod_network_is_wired_to_a_tap_and_unwired() {
    let f = Fixture::new("wire");
    let guest = discover(&f.path()).expect("discover");
    assert_eq!(guest.name, "eth0");
    assert_eq!(guest.mac, f.mac(&f.pod, "eth0"));
    assert_eq!(guest.addresses, vec![(IpAddr::V4(f.addr(2)), 24)]);
    assert_eq!(
        guest.routes,
        vec![Route {
            dest: None,
            gateway: Some(IpAddr::V4(f.addr(1))),
            source: None,
            kernel: false,
        }],
        "the default route; the prefix route is the kernel's"
    );
    let tap = connect(&f.path(), "eth0", guest.mtu).expect("connect");
    let (filters, qdiscs) = in_netns(&f.path(), || {
        let mut r = Rtnl::open().expect("netlink");
        let veth = r.link_by_name("eth0").unwrap().expect("veth");
        let t = r.link_by_name(TAP_NAME).unwrap().expect("tap exists");
        assert_eq!(t.mtu, guest.mtu);
        Ok::<_, NetworkError>((
            (
                r.ingress_filters(veth.index).unwrap(),
                r.ingress_filters(t.index).unwrap(),
            ),
            (r.qdiscs(veth.index).unwrap(), r.qdiscs(t.index).unwrap()),
        ))
    })
    .unwrap();
    assert!(
        filters.0.iter().any(|k| k == "u32"),
        "veth filters {filters:?}"
    );
    assert!(
        filters.1.iter().any(|k| k == "u32"),
        "tap filters {filters:?}"
    );
    assert!(
        qdiscs.0.iter().any(|k| k == "ingress"),
        "veth qdiscs {qdiscs:?}"
    );
    assert!(
        qdiscs.1.iter().any(|k| k == "ingress"),
        "tap qdiscs {qdiscs:?}"
    );

    // The guest's side: the tap carries the veth's identity. The host answers an echo
    // request written on the tap; the answer comes back through the tap.
    let peer_mac = f.mac(&f.host, "peer");
    ip(&[
        "-n",
        &f.host,
        "neigh",
        "replace",
        &f.addr(2).to_string(),
        "lladdr",
        &mac_string(&guest.mac),
        "dev",
        "peer",
    ]);
    let id = 0x5a17;
    // The tap was made with a vnet header (what the VMM requires): a zero one, nothing to
    // offload, goes before the frame.
    let mut req = vec![0u8; TAP_HDR_LEN];
    req.extend_from_slice(&echo_request(
        &guest.mac,
        &peer_mac,
        f.addr(2),
        f.addr(1),
        id,
    ));
    assert_eq!(
        nix::unistd::write(&tap, &req).expect("write on the tap"),
        req.len()
    );
    let is_reply = |fr: &[u8]| {
        fr.len() >= 42
            && fr[12..14] == [0x08, 0x00]
            && fr[23] == 1
            && fr[26..30] == f.addr(1).octets()
            && fr[34] == 0
            && fr[38..40] == id.to_be_bytes()
    };
    assert!(
        read_until(&tap, is_reply),
        "no echo reply came back through the tap (fd {})",
        tap.as_raw_fd()
    );

    let rec = NetworkRecord {
        netns: f.path(),
        veth: "eth0".into(),
        tap: TAP_NAME.into(),
    };
    unwire(&rec).expect("unwire");
    let (tap_left, veth_qdiscs) = in_netns(&f.path(), || {
        let mut r = Rtnl::open().expect("netlink");
        let veth = r.link_by_name("eth0").unwrap().expect("veth");
        Ok::<_, NetworkError>((
            r.link_by_name(TAP_NAME).unwrap(),
            r.qdiscs(veth.index).unwrap(),
        ))
    })
    .unwrap();
    assert_eq!(
        tap_left, None,
        "the tap is gone although its fd is still open"
    );
    assert!(
        !veth_qdiscs.iter().any(|k| k == "ingress"),
        "the veth's ingress qdisc is gone: {veth_qdiscs:?}"
    );
    drop(tap);
    unwire(&rec).expect("unwiring twice is fine");
    drop(f);
    unwire(&rec).expect("a namespace that is gone leaves nothing to do");
}

#[test]
fn wiring_a_namespace_without_an_interface_fails_and_leaves_nothing() {
    let f = Fixture::new("bare");
    ip(&["-n", &f.pod, "link", "del", "eth0"]);
    let err = discover(&f.path()).unwrap_err();
    assert!(matches!(err, NetworkError::NoInterface { .. }), "{err}");
    let err = connect(&f.path(), "eth0", 1500).unwrap_err();
    assert!(matches!(err, NetworkError::NoInterface { .. }), "{err}");
    let left = in_netns(&f.path(), || {
        let mut r = Rtnl::open().expect("netlink");
        Ok::<_, NetworkError>(r.link_by_name(TAP_NAME).unwrap())
    })
    .unwrap();
    assert_eq!(left, None);
    let missing = PathBuf::from("/var/run/netns/vessel-no-such-netns");
    assert!(matches!(
        discover(&missing),
        Err(NetworkError::Netns(NetnsError::Open { .. }))
    ));
}
