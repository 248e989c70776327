//! The CNI network of one CRI containerd: a bridge of its own on a private /24 nothing on
//! this host routes, checked before use.
//!
//! The subnet is `10.213.<k>.0/24`, the bridge `vcri<k>`; `k` is held by an exclusive
//! `flock` on `/tmp/vessel-cri-net/<k>.lock` for the network's lifetime, so concurrent test
//! processes never share one. The conflist is bridge + host-local (`isGateway`, no
//! masquerade, no default route in pods: nothing a pod sends can leave this machine);
//! containerd 1.6 adds the loopback plugin itself (`cni.WithLoNetwork`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::run_text;

/// An IPv4 prefix: address (host order) and length.
pub type Prefix = (u32, u8);

/// The second octet of every subnet the harness uses: 10.213.x.0/24.
const SECOND_OCTET: u32 = 213;
/// Where the per-subnet lock files live (empty files, left in place: removing a lock file
/// another process may have open would let two processes hold the same subnet).
const LOCK_DIR: &str = "/tmp/vessel-cri-net";

/// Parses `a.b.c.d` or `a.b.c.d/n`.
pub fn parse_prefix(s: &str) -> Option<Prefix> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    if len > 32 {
        return None;
    }
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    Some((u32::from(ip), len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// Whether two prefixes share any address.
pub fn overlaps(a: Prefix, b: Prefix) -> bool {
    let m = mask(a.1.min(b.1));
    a.0 & m == b.0 & m
}

/// The destination prefixes of `ip -4 route show table all` output, default routes left out
/// (everything "overlaps" a default route; what matters is a more specific one).
pub fn routed_prefixes(routes: &str) -> Vec<Prefix> {
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    routes
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let mut first = words.next()?;
            if TYPES.contains(&first) {
                first = words.next()?;
            }
            if first == "default" {
                return None;
            }
            parse_prefix(first)
        })
        .filter(|p| p.1 > 0)
        .collect()
}

/// The prefixes of `ip -4 -o addr show` output (`inet a.b.c.d/n`).
pub fn address_prefixes(addrs: &str) -> Vec<Prefix> {
    addrs
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            parse_prefix(w.next()?)
        })
        .collect()
}

/// The third octets `k` whose 10.213.k.0/24 overlaps nothing in `taken`, starting at `seed`.
pub fn free_subnets(taken: &[Prefix], seed: u32) -> Vec<u8> {
    (0..254u32)
        .map(|i| ((seed + i) % 254 + 1) as u8)
        .filter(|k| {
            let net = (10u32 << 24) | (SECOND_OCTET << 16) | (u32::from(*k) << 8);
            !taken.iter().any(|t| overlaps(*t, (net, 24)))
        })
        .collect()
}

/// One containerd's network: bridge `vcri<k>`, 10.213.k.0/24, gateway .1 on the bridge.
pub struct CniNet {
    pub bridge: String,
    third: u8,
    _lock: Flock<std::fs::File>,
    /// Whether net.ipv4.ip_forward was 0 before (the bridge plugin sets it with isGateway).
    forward_was_off: bool,
}

impl CniNet {
    /// Picks a /24 no route or address on this host overlaps, whose bridge name is unused.
    pub fn pick() -> Result<CniNet> {
        let routes = run_text(Command::new("ip").args(["-4", "route", "show", "table", "all"]))
            .context("ip route (apt-get install iproute2)")?;
        let addrs = run_text(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
        let links = run_text(Command::new("ip").args(["-o", "link", "show"]))?;
        let mut taken = routed_prefixes(&routes);
        taken.extend(address_prefixes(&addrs));
        let forward_was_off = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .map(|v| v.trim() == "0")
            .unwrap_or(false);
        for k in free_subnets(&taken, std::process::id()) {
            let bridge = format!("vcri{k}");
            if links.contains(&format!(": {bridge}:")) || links.contains(&format!(": {bridge}@")) {
                continue;
            }
            std::fs::create_dir_all(LOCK_DIR)?;
            let file = std::fs::File::create(format!("{LOCK_DIR}/{k}.lock"))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(CniNet {
                    bridge,
                    third: k,
                    _lock: lock,
                    forward_was_off,
                });
            }
        }
        bail!("no free 10.{SECOND_OCTET}.x.0/24 on this host:\n{routes}")
    }

    pub fn subnet(&self) -> String {
        format!("10.{SECOND_OCTET}.{}.0/24", self.third)
    }

    pub fn gateway(&self) -> String {
        format!("10.{SECOND_OCTET}.{}.1", self.third)
    }

    /// The CNI conflist (bridge + host-local with its data in `ipam_dir`).
    pub fn conflist(&self, ipam_dir: &Path) -> String {
        let v = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.bridge,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet(), "gateway": self.gateway()}]],
                    "dataDir": ipam_dir.display().to_string(),
                },
            }],
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// `ip` must be in this subnet and route through this bridge.
    pub fn check_route(&self, ip: &str) -> Result<()> {
        let addr = parse_prefix(ip).with_context(|| format!("pod IP {ip:?}"))?;
        let (net, _) = parse_prefix(&self.subnet()).context("own subnet")?;
        if !overlaps(addr, (net, 24)) {
            bail!("pod IP {ip} is not in {}", self.subnet());
        }
        let out = run_text(Command::new("ip").args(["-4", "route", "get", ip]))?;
        if !out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["dev", self.bridge.as_str()])
        {
            bail!(
                "pod IP {ip} does not route through {}: {}",
                self.bridge,
                out.trim()
            );
        }
        Ok(())
    }

    /// Deletes the bridge (the CNI bridge plugin made it; nothing else uses the name), and
    /// puts ip_forward back when no other `vcri*` bridge is left.
    pub fn remove_bridge(&self) {
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
        let others = std::fs::read_dir("/sys/class/net")
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("vcri"))
            })
            .unwrap_or(true);
        if self.forward_was_off && !others {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_overlap() {
        assert_eq!(parse_prefix("10.0.0.0/8"), Some((10 << 24, 8)));
        assert_eq!(parse_prefix("192.0.2.2"), Some((0xc000_0202, 32)));
        assert_eq!(parse_prefix("10.0.0.0/33"), None);
        assert_eq!(parse_prefix("default"), None);
        let a = parse_prefix("10.213.5.0/24").unwrap();
        assert!(overlaps(a, parse_prefix("10.0.0.0/8").unwrap()));
        assert!(overlaps(a, parse_prefix("10.213.5.77").unwrap()));
        assert!(!overlaps(a, parse_prefix("10.213.6.0/24").unwrap()));
        assert!(overlaps(a, (0, 0)));
    }

    #[test]
    fn routes_of_this_host() {
        let routes = "default via 192.0.2.1 dev eth0\n\
                      192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
                      local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1\n\
                      broadcast 192.0.2.255 dev eth0 table local proto kernel scope link\n\
                      10.213.7.0/24 dev vcri7 proto kernel scope link src 10.213.7.1\n";
        let p = routed_prefixes(routes);
        assert_eq!(p.len(), 4, "{p:?}");
        let free = free_subnets(&p, 6);
        assert_eq!(free[0], 8, "7 is taken: {free:?}");
        assert!(!free.contains(&7));
        assert_eq!(free.len(), 253);
        // A /16 covering them all leaves nothing.
        assert!(free_subnets(&[parse_prefix("10.213.0.0/16").unwrap()], 0).is_empty());
    }

    #[test]
    fn addresses() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";
        assert_eq!(address_prefixes(out), [(0x7f00_0001, 8), (0xc000_0202, 24)]);
    }
}
