//! Guest network configuration over rtnetlink, by hand: link up / MTU / rename, addresses,
//! routes. Messages are built byte by byte (all little-endian host order on x86_64).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const IFF_UP: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket")]
    Socket(#[source] nix::Error),
    #[error("netlink {op}: {errno}")]
    Kernel {
        op: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("malformed netlink reply")]
    Malformed,
    #[error("no interface named {0:?} or with address {1:?}")]
    NoSuchLink(String, String),
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
}

/// A route to install. `dest` None = default route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
    pub source: Option<IpAddr>,
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

struct Msg(Vec<u8>);

impl Msg {
    fn new(typ: u16, flags: u16, seq: u32) -> Msg {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&typ.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        Msg(b)
    }
    fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn attr(&mut self, typ: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&typ.to_ne_bytes());
        self.bytes(data)
    }
    fn finish(&mut self) -> &[u8] {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        &self.0
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// Iterates (type, payload) over rtattrs.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let typ = u16::from_ne_bytes([b[2], b[3]]);
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((typ, payload))
    })
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(NetlinkError::Socket)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends a request and collects reply payloads (type, body after nlmsghdr) until the ack
    /// or end of dump.
    fn request(
        &mut self,
        op: &'static str,
        mut msg: Msg,
    ) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
        send(self.fd.as_raw_fd(), msg.finish(), MsgFlags::empty()).map_err(NetlinkError::Socket)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(NetlinkError::Socket)?;
            let mut b = &buf[..n];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let typ = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || len > b.len() {
                    return Err(NetlinkError::Malformed);
                }
                let body = &b[16..len];
                match typ {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            body.get(0..4)
                                .ok_or(NetlinkError::Malformed)?
                                .try_into()
                                .map_err(|_| NetlinkError::Malformed)?,
                        );
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Kernel {
                            op,
                            errno: nix::errno::Errno::from_raw(-code),
                        });
                    }
                    _ => out.push((typ, body.to_vec())),
                }
                b = &b[((len + 3) & !3).min(b.len())..];
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, self.next_seq());
        m.bytes(&ifinfomsg(0, 0, 0));
        let replies = self.request("dump links", m)?;
        let mut links = Vec::new();
        for (typ, body) in replies {
            if typ != RTM_NEWLINK || body.len() < 16 {
                continue;
            }
            let mut l = Link {
                index: i32::from_ne_bytes([body[4], body[5], body[6], body[7]]),
                ..Default::default()
            };
            for (t, p) in attrs(&body[16..]) {
                match t {
                    IFLA_IFNAME => {
                        l.name = String::from_utf8_lossy(p.split(|c| *c == 0).next().unwrap_or(&[]))
                            .into_owned()
                    }
                    IFLA_ADDRESS => {
                        l.mac = p
                            .iter()
                            .map(|x| format!("{x:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    }
                    IFLA_MTU if p.len() >= 4 => {
                        l.mtu = u32::from_ne_bytes([p[0], p[1], p[2], p[3]])
                    }
                    _ => {}
                }
            }
            links.push(l);
        }
        Ok(links)
    }

    /// Finds a link by MAC address (preferred, names change across guests) or name.
    pub fn find_link(&mut self, name: &str, mac: &str) -> Result<Link, NetlinkError> {
        let links = self.links()?;
        let by_mac = links
            .iter()
            .find(|l| !mac.is_empty() && l.mac.eq_ignore_ascii_case(mac));
        let by_name = links.iter().find(|l| !name.is_empty() && l.name == name);
        by_mac
            .or(by_name)
            .cloned()
            .ok_or_else(|| NetlinkError::NoSuchLink(name.into(), mac.into()))
    }

    /// Sets the link up, with an MTU, name and MAC address if given (the kernel renames
    /// before it sets the link up, so a link that is down can be renamed here).
    pub fn set_link(
        &mut self,
        index: i32,
        mtu: Option<u32>,
        name: Option<&str>,
        mac: Option<&[u8; 6]>,
    ) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, self.next_seq());
        m.bytes(&ifinfomsg(index, IFF_UP, IFF_UP));
        if let Some(mtu) = mtu {
            m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(mac) = mac {
            m.attr(IFLA_ADDRESS, mac);
        }
        if let Some(n) = name {
            let mut b = n.as_bytes().to_vec();
            b.push(0);
            m.attr(IFLA_IFNAME, &b);
        }
        self.request("set link", m).map(|_| ())
    }

    /// Sets the link down (a link that is up cannot be renamed).
    pub fn set_link_down(&mut self, index: i32) -> Result<(), NetlinkError> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, self.next_seq());
        m.bytes(&ifinfomsg(index, 0, IFF_UP));
        self.request("set link down", m).map(|_| ())
    }

    /// Addresses (address, prefix) currently on a link.
    pub fn addresses(&mut self, index: i32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, self.next_seq());
        m.bytes(&[0u8; 8]);
        let mut out = Vec::new();
        for (typ, body) in self.request("dump addresses", m)? {
            if typ != RTM_NEWADDR || body.len() < 8 {
                continue;
            }
            let idx = i32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
            if idx != index {
                continue;
            }
            let prefix = body[1];
            let mut addr = None;
            for (t, p) in attrs(&body[8..]) {
                let ip = match p.len() {
                    4 => Some(IpAddr::from(
                        <[u8; 4]>::try_from(p).map_err(|_| NetlinkError::Malformed)?,
                    )),
                    16 => Some(IpAddr::from(
                        <[u8; 16]>::try_from(p).map_err(|_| NetlinkError::Malformed)?,
                    )),
                    _ => None,
                };
                if t == IFA_LOCAL || (t == IFA_ADDRESS && addr.is_none()) {
                    addr = ip.or(addr);
                }
            }
            if let Some(a) = addr {
                out.push((a, prefix));
            }
        }
        Ok(out)
    }

    fn addr_msg(&mut self, typ: u16, flags: u16, index: i32, ip: &IpAddr, prefix: u8) -> Msg {
        let mut m = Msg::new(typ, flags, self.next_seq());
        let mut ifa = [0u8; 8];
        ifa[0] = family(ip);
        ifa[1] = prefix;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        m.bytes(&ifa);
        let b = ip_bytes(ip);
        if ip.is_ipv4() {
            m.attr(IFA_LOCAL, &b);
        }
        m.attr(IFA_ADDRESS, &b);
        m
    }

    /// Makes the link's addresses exactly `want`.
    pub fn set_addresses(&mut self, index: i32, want: &[(IpAddr, u8)]) -> Result<(), NetlinkError> {
        for (ip, prefix) in self.addresses(index)? {
            // Keep IPv6 link-local addresses the kernel assigns.
            let link_local = matches!(ip, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80);
            if !link_local && !want.contains(&(ip, prefix)) {
                let m = self.addr_msg(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, index, &ip, prefix);
                self.request("delete address", m)?;
            }
        }
        for (ip, prefix) in want {
            let m = self.addr_msg(
                RTM_NEWADDR,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                index,
                ip,
                *prefix,
            );
            self.request("add address", m)?;
        }
        Ok(())
    }

    pub fn add_route(&mut self, r: &RouteSpec) -> Result<(), NetlinkError> {
        let ip_for_family = r.dest.map(|d| d.0).or(r.gateway).or(r.source);
        let fam = ip_for_family
            .as_ref()
            .map(family)
            .unwrap_or(libc::AF_INET as u8);
        let oif = match &r.device {
            Some(name) => Some(self.find_link(name, "")?.index),
            None => None,
        };
        let mut m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            self.next_seq(),
        );
        let mut rtm = [0u8; 12];
        rtm[0] = fam;
        rtm[1] = r.dest.map(|d| d.1).unwrap_or(0);
        rtm[4] = libc::RT_TABLE_MAIN;
        rtm[5] = libc::RTPROT_BOOT;
        rtm[6] = if r.gateway.is_some() {
            libc::RT_SCOPE_UNIVERSE
        } else {
            libc::RT_SCOPE_LINK
        };
        rtm[7] = libc::RTN_UNICAST;
        m.bytes(&rtm);
        if let Some((dst, _)) = &r.dest {
            m.attr(RTA_DST, &ip_bytes(dst));
        }
        if let Some(gw) = &r.gateway {
            m.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        if let Some(i) = oif {
            m.attr(RTA_OIF, &(i as u32).to_ne_bytes());
        }
        if let Some(src) = &r.source {
            m.attr(RTA_PREFSRC, &ip_bytes(src));
        }
        self.request("add route", m).map(|_| ())
    }
}

/// Parses "10.0.0.0/24", "default" or "" (default route).
/// Brings up `lo` in the caller's network namespace (a new one has it down; CNI's loopback
/// plugin does the same for a runc pod).
pub fn loopback_up() -> Result<(), NetlinkError> {
    let mut nl = Netlink::open()?;
    let lo = nl.find_link("lo", "")?;
    nl.set_link(lo.index, None, None, None)
}

pub fn parse_dest(s: &str) -> Result<Option<(IpAddr, u8)>, NetlinkError> {
    let s = s.trim();
    if s.is_empty() || s == "default" {
        return Ok(None);
    }
    let invalid = || NetlinkError::Invalid {
        what: "route destination",
        value: s.to_string(),
    };
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (
            ip.parse::<IpAddr>().map_err(|_| invalid())?,
            p.parse::<u8>().map_err(|_| invalid())?,
        ),
        None => {
            let ip = s.parse::<IpAddr>().map_err(|_| invalid())?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    if prefix > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(invalid());
    }
    Ok(Some((ip, prefix)))
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetlinkError> {
    let invalid = || NetlinkError::Invalid {
        what: "MAC address",
        value: s.to_string(),
    };
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(invalid)?;
        if p.len() != 2 {
            return Err(invalid());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(out)
}

pub fn parse_ip(what: &'static str, s: &str) -> Result<Option<IpAddr>, NetlinkError> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim()
        .parse()
        .map(Some)
        .map_err(|_| NetlinkError::Invalid {
            what,
            value: s.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(parse_dest("default").unwrap(), None);
        assert_eq!(parse_dest("").unwrap(), None);
        assert_eq!(
            parse_dest("10.1.0.0/16").unwrap(),
            Some(("10.1.0.0".parse().unwrap(), 16))
        );
        assert_eq!(
            parse_dest("fd00::1").unwrap(),
            Some(("fd00::1".parse().unwrap(), 128))
        );
        assert!(parse_dest("10.0.0.0/33").is_err());
        assert!(parse_dest("nonsense").is_err());
    }

    #[test]
    fn attributes_are_aligned_and_parsed_back() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST, 7);
        m.bytes(&ifinfomsg(3, IFF_UP, IFF_UP));
        m.attr(IFLA_IFNAME, b"eth0\0");
        m.attr(IFLA_MTU, &1500u32.to_ne_bytes());
        let b = m.finish().to_vec();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            b.len()
        );
        let parsed: Vec<_> = attrs(&b[32..]).collect();
        assert_eq!(
            parsed,
            vec![
                (IFLA_IFNAME, &b"eth0\0"[..]),
                (IFLA_MTU, &1500u32.to_ne_bytes()[..])
            ]
        );
    }
}
