//! A small synchronous rtnetlink client: the messages come from `netlink-packet-route`
//! (the rust-netlink project's, which `rtnetlink` builds on), the socket from `netlink-sys`.
//! Synchronous because the runtime is: `rtnetlink` itself needs a tokio reactor, for the
//! dozen requests a pod's wiring makes once.
//!
//! The socket belongs to the network namespace of the thread that opened it
//! ([`super::netns::in_netns`] opens it inside the pod's).

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;
/// `ETH_P_ALL` in network byte order, as tc's `protocol all`.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Bounds on what the kernel's answers may make us hold.
const MAX_REPLIES: usize = 4096;

/// A request the kernel refused, or a socket failure.
#[derive(Debug, thiserror::Error)]
#[error("netlink {op}")]
pub struct NlError {
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl NlError {
    fn new(op: &'static str, source: io::Error) -> NlError {
        NlError { op, source }
    }

    /// The kernel's errno, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub loopback: bool,
}

/// A route of the main table through one link (`dest` None: the default route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    /// Made by the kernel for an address's prefix (the guest makes its own).
    pub kernel: bool,
}

pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl, NlError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| NlError::new("socket", e))?;
        sock.bind_auto().map_err(|e| NlError::new("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| NlError::new("connect", e))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` and collects the answers: a dump's messages, or nothing for an ACKed
    /// change. A kernel error comes back as the errno.
    fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|e| NlError::new(op, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| NlError::new(op, e))?
                .min(self.buf.len());
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| NlError::new(op, io::Error::other(e.to_string())))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(NlError::new(op, io::Error::other("zero-length message")));
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => {
                                Err(NlError::new(op, io::Error::from_raw_os_error(-code.get())))
                            }
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        if replies.len() >= MAX_REPLIES {
                            return Err(NlError::new(op, io::Error::other("too many replies")));
                        }
                        replies.push(inner);
                        if !dump {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn change(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NlError> {
        self.request(op, msg, NLM_F_ACK | flags).map(drop)
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let replies = self.request(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// The addresses of link `index` (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NlError> {
        let replies = self.request(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address where it differs (point-to-point).
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(addr) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The main table's unicast routes out of link `index`.
    pub fn routes(&mut self, index: u32) -> Result<Vec<Route>, NlError> {
        let replies = self.request(
            "dump routes",
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if table != RT_TABLE_MAIN || oif != Some(index) || r.header.kind != RouteType::Unicast {
                continue;
            }
            let ip = |a: &RouteAddress| match a {
                RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
                RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
                _ => None,
            };
            let mut route = Route {
                dest: None,
                gateway: None,
                source: None,
                kernel: r.header.protocol == RouteProtocol::Kernel,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        route.dest = ip(d).map(|d| (d, r.header.destination_prefix_length));
                    }
                    RouteAttribute::Gateway(g) => route.gateway = ip(g),
                    RouteAttribute::PrefSource(s) => route.source = ip(s),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    /// Sets link `index` up, with `mtu` if given.
    pub fn set_up(&mut self, index: u32, mtu: Option<u32>) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.change("set link up", RouteNetlinkMessage::SetLink(m), 0)
    }

    pub fn del_link(&mut self, index: u32) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.change("delete link", RouteNetlinkMessage::DelLink(m), 0)
    }

    fn ingress_qdisc(index: u32) -> TcMessage {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::INGRESS;
        m.header.handle = INGRESS_HANDLE;
        m.attributes.push(TcAttribute::Kind("ingress".to_string()));
        m
    }

    /// `tc qdisc add dev <index> ingress`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), NlError> {
        self.change(
            "add ingress qdisc",
            RouteNetlinkMessage::NewQueueDiscipline(Self::ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `tc qdisc del dev <index> ingress` (its filters go with it).
    pub fn del_ingress_qdisc(&mut self, index: u32) -> Result<(), NlError> {
        self.change(
            "delete ingress qdisc",
            RouteNetlinkMessage::DelQueueDiscipline(Self::ingress_qdisc(index)),
            0,
        )
    }

    /// `tc filter add dev <from> parent ffff: protocol all u32 match u8 0 0 action mirred
    /// egress redirect dev <to>`: every frame arriving on `from` leaves through `to`.
    pub fn redirect(&mut self, from: u32, to: u32) -> Result<(), NlError> {
        let mut m = TcMessage::with_index(from as i32);
        m.header.parent = INGRESS_HANDLE;
        m.header.info = u32::from(TcHandle {
            major: 1,
            minor: ETH_P_ALL_BE,
        });
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        m.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.change(
            "add redirect filter",
            RouteNetlinkMessage::NewTrafficFilter(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The kinds of the filters on link `index`'s ingress qdisc (tests and diagnostics).
    pub fn ingress_filters(&mut self, index: u32) -> Result<Vec<String>, NlError> {
        let mut q = TcMessage::with_index(index as i32);
        q.header.parent = INGRESS_HANDLE;
        let replies = self.request(
            "dump filters",
            RouteNetlinkMessage::GetTrafficFilter(q),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == index as i32 => {
                    f.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The kinds of link `index`'s qdiscs.
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<String>, NlError> {
        let replies = self.request(
            "dump qdiscs",
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index as i32 => {
                    q.attributes.iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        loopback: l.header.flags.contains(LinkFlags::Loopback),
        ..Default::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(m) => link.mac = m.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    link
}
