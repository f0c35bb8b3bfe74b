//! The client's address behind proxies we trust.
//!
//! The login flows are limited per source address. Behind an ingress or load balancer the TCP
//! peer is the proxy, so every client would share one budget; the proxy names the client in
//! `x-forwarded-for`. That header is the client's to write, so it is believed only when the
//! peer is one of `KEEL_GATEWAY_TRUSTED_PROXIES`, and then only as far as the first hop we do
//! not trust: reading right to left (each proxy appends the address it saw), skipping our own
//! proxies, the first other address is the client. Anything a client prepended stays to its left
//! and is never read.

use std::net::IpAddr;
use std::str::FromStr;

/// One trusted range: an address and a prefix length (`10.0.0.0/8`, `::1/128`, or a bare
/// address for a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// The proxies whose `x-forwarded-for` is believed (`KEEL_GATEWAY_TRUSTED_PROXIES`: a
/// comma-separated list of addresses and CIDR ranges; empty: none, the peer is the client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer itself, unless the peer is a trusted proxy that says who
    /// it is forwarding for.
    pub fn client(&self, peer: Option<IpAddr>, headers: &http::HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        // Every x-forwarded-for line, in order, as one list.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Garbage (or a port, or "unknown") ends what can be believed: the last
                // address we reached is the one charged.
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(xff: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7,fd00::/8".parse().unwrap();
        assert!(t.trusts(ip("10.200.3.4")));
        assert!(t.trusts(ip("192.168.1.7")));
        assert!(!t.trusts(ip("192.168.1.8")));
        assert!(t.trusts(ip("fd12::1")));
        assert!(!t.trusts(ip("fe80::1")));
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert!(t.trusts(ip("::ffff:10.1.2.3")));
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/x", "::/129"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains(ip("8.8.8.8")));
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let peer = Some(ip("10.0.0.5"));
        // The ingress appended what it saw.
        assert_eq!(
            t.client(peer, &headers(&["203.0.113.9"])),
            Some(ip("203.0.113.9"))
        );
        // A client's forged entry is to the left of the real one and is never read.
        assert_eq!(
            t.client(peer, &headers(&["1.2.3.4, 203.0.113.9"])),
            Some(ip("203.0.113.9"))
        );
        // Two trusted proxies in a row, over two header lines.
        assert_eq!(
            t.client(peer, &headers(&["198.51.100.2", "10.1.1.1"])),
            Some(ip("198.51.100.2"))
        );
        // No header: the proxy itself.
        assert_eq!(t.client(peer, &headers(&[])), peer);
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            t.client(peer, &headers(&["203.0.113.9, junk"])),
            Some(ip("10.0.0.5"))
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let peer = Some(ip("203.0.113.50"));
        assert_eq!(t.client(peer, &headers(&["10.0.0.1", "1.1.1.1"])), peer);
        assert_eq!(
            TrustedProxies::default().client(peer, &headers(&["1.1.1.1"])),
            peer
        );
        assert_eq!(t.client(None, &headers(&["1.1.1.1"])), None);
    }

    proptest! {
        /// Whatever an untrusted client sends, it is charged as itself; whatever it prepends
        /// behind a trusted proxy, it is charged as the address the proxy saw.
        #[test]
        fn a_client_cannot_choose_its_address(
            forged in proptest::collection::vec("[0-9a-f.:, ]{0,20}", 0..4),
            a in any::<u8>(), b in any::<u8>(),
        ) {
            let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
            let client = ip(&format!("203.0.{a}.{b}"));
            let refs: Vec<&str> = forged.iter().map(String::as_str).collect();
            prop_assert_eq!(t.client(Some(client), &headers(&refs)), Some(client));
            let mut behind = forged.clone();
            behind.push(client.to_string());
            let refs: Vec<&str> = behind.iter().map(String::as_str).collect();
            let mut h = http::HeaderMap::new();
            for v in &refs {
                if let Ok(v) = v.parse() {
                    h.append("x-forwarded-for", v);
                }
            }
            prop_assert_eq!(t.client(Some(ip("10.9.9.9")), &h), Some(client));
        }
    }
}
