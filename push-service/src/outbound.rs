//! Outbound-target policy: which URLs and addresses a server may connect to when a *user*
//! chose the target (push webhooks and Web Push endpoints today; message-service's hooks
//! later). Pure and self-contained (std and `http::Uri` only), so it can move to a shared
//! crate unchanged.
//!
//! The rules (unless [`Policy::allow_private`], a development switch):
//! - the URL is `https://`, on port 443, with no user-info part;
//! - the host is not `localhost` (or a name under `.localhost`, RFC 6761);
//! - every address the host resolves to is a public unicast address ([`is_public`]):
//!   no loopback, private (RFC 1918), CGNAT, link-local (including the cloud metadata
//!   address 169.254.169.254), unique-local, unspecified, multicast, broadcast, reserved,
//!   documentation or benchmarking address, and none of those hidden in an IPv6 form
//!   (IPv4-mapped, IPv4-compatible, NAT64, 6to4).
//!
//! Check at registration ([`check_url`], then [`check_resolved`] on what the name resolves
//! to) *and* again when connecting, against the addresses actually connected to: a name may
//! answer differently the second time (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which targets are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Development and tests only: also `http://`, any port, and loopback/private
    /// addresses (`INDABA_OUTBOUND_ALLOW_PRIVATE=true`).
    pub allow_private: bool,
}

/// Why a target is refused. The text names the rule, never anything learned by connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an absolute `scheme://host` URL.
    NotUrl,
    /// Not `https://`.
    Scheme,
    /// Not port 443.
    Port,
    /// `user:password@` in the URL.
    UserInfo,
    /// A host name that always means this machine (`localhost`).
    LocalName,
    /// An address that is not public.
    Address(IpAddr),
    /// The name resolves to nothing (or could not be resolved).
    Unresolved,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotUrl => f.write_str("not an absolute URL"),
            Refusal::Scheme => f.write_str("the URL must be https"),
            Refusal::Port => f.write_str("the URL must use port 443"),
            Refusal::UserInfo => f.write_str("the URL must not carry user:password@"),
            Refusal::LocalName => f.write_str("the host must not be localhost"),
            Refusal::Address(ip) => write!(f, "{ip} is not a public address"),
            Refusal::Unresolved => f.write_str("the host does not resolve to a public address"),
        }
    }
}

impl std::error::Error for Refusal {}

/// A URL that passed [`check_url`]: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` (false: `http`, only with `allow_private`).
    pub https: bool,
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    /// Port (443 unless `allow_private`).
    pub port: u16,
}

impl Target {
    /// The host as an address, when it is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Checks a URL's form (scheme, port, user-info, literal address, `localhost`). A host
/// name still has to be resolved and its addresses checked ([`check_resolved`]).
pub fn check_url(policy: Policy, url: &str) -> Result<Target, Refusal> {
    let uri: http::Uri = url.parse().map_err(|_| Refusal::NotUrl)?;
    check_uri(policy, &uri)
}

/// [`check_url`] for a parsed URI.
pub fn check_uri(policy: Policy, uri: &http::Uri) -> Result<Target, Refusal> {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Refusal::NotUrl);
    };
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" if policy.allow_private => false,
        _ => return Err(Refusal::Scheme),
    };
    if authority.as_str().contains('@') {
        return Err(Refusal::UserInfo);
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port != 443 && !policy.allow_private {
        return Err(Refusal::Port);
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(Refusal::NotUrl);
    }
    let target = Target { https, host, port };
    if !policy.allow_private {
        if let Some(ip) = target.ip() {
            check_ip(policy, ip)?;
        } else {
            let name = target.host.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(Refusal::LocalName);
            }
        }
    }
    Ok(target)
}

/// Checks one address.
pub fn check_ip(policy: Policy, ip: IpAddr) -> Result<(), Refusal> {
    if policy.allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(Refusal::Address(ip))
    }
}

/// Checks what a name resolved to: at least one address, and every one allowed (an answer
/// mixing a public and a private address is refused, not filtered, so the connection can
/// never land on the private one).
pub fn check_resolved(policy: Policy, addrs: &[IpAddr]) -> Result<(), Refusal> {
    if addrs.is_empty() {
        return Err(Refusal::Unresolved);
    }
    addrs.iter().try_for_each(|ip| check_ip(policy, *ip))
}

/// Whether an address is public unicast: reachable on the internet, and so no way into
/// this server's own network.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const REFUSED: [([u8; 4], u32); 16] = [
        ([0, 0, 0, 0], 8),       // "this network", 0.0.0.0
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT (shared address space)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata (169.254.169.254)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
        ([255, 255, 255, 255], 32),
    ];
    !REFUSED.iter().any(|(net, p)| in_v4(ip, *net, *p))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d): the IPv4 rules apply.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // ::/96 — unspecified, loopback, and the deprecated IPv4-compatible form.
    if s[..6] == [0; 6] {
        return false;
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 6to4 (2002::/16) embeds an IPv4 address in the next 32 bits.
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    let refused = [
        (s[0] & 0xfe00) == 0xfc00,        // unique local fc00::/7
        (s[0] & 0xffc0) == 0xfe80,        // link-local fe80::/10
        (s[0] & 0xffc0) == 0xfec0,        // site-local (deprecated) fec0::/10
        (s[0] & 0xff00) == 0xff00,        // multicast ff00::/8
        s[0] == 0x2001 && s[1] == 0x0db8, // documentation 2001:db8::/32
        // IETF protocol assignments 2001::/23: Teredo (tunnels anywhere), ORCHID, …
        s[0] == 0x2001 && (s[1] & 0xfe00) == 0,
        s[..3] == [0x64, 0xff9b, 1], // local-use NAT64 64:ff9b:1::/48
        s[..4] == [0x100, 0, 0, 0],  // discard-only 100::/64
    ];
    !refused.iter().any(|r| *r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_private: false,
    };
    const DEV: Policy = Policy {
        allow_private: true,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn refused_addresses() {
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff05::2",
            "2001:db8::1",
            "2001::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "100::1",
        ] {
            assert!(!is_public(ip(a)), "{a} must be refused");
            assert_eq!(check_ip(STRICT, ip(a)), Err(Refusal::Address(ip(a))));
            assert_eq!(check_ip(DEV, ip(a)), Ok(()), "{a} with allow_private");
        }
    }

    #[test]
    fn public_addresses() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.255.255",
            "192.169.0.1",
            "11.0.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn urls() {
        let ok = check_url(STRICT, "https://hooks.example.com/x?y=1").unwrap();
        assert_eq!(
            ok,
            Target {
                https: true,
                host: "hooks.example.com".into(),
                port: 443
            }
        );
        assert!(ok.ip().is_none());
        assert!(check_url(STRICT, "https://hooks.example.com:443/x").is_ok());
        assert!(check_url(STRICT, "HTTPS://1.1.1.1/x").is_ok());
        for (url, why) in [
            ("http://hooks.example.com/x", Refusal::Scheme),
            ("ftp://hooks.example.com/x", Refusal::Scheme),
            ("https://hooks.example.com:8443/x", Refusal::Port),
            ("https://hooks.example.com:80/x", Refusal::Port),
            ("https://u:p@hooks.example.com/x", Refusal::UserInfo),
            ("https://localhost/x", Refusal::LocalName),
            ("https://LOCALHOST./x", Refusal::LocalName),
            ("https://api.localhost/x", Refusal::LocalName),
            ("https://127.0.0.1/x", Refusal::Address(ip("127.0.0.1"))),
            (
                "https://169.254.169.254/latest/meta-data/",
                Refusal::Address(ip("169.254.169.254")),
            ),
            ("https://[::1]/x", Refusal::Address(ip("::1"))),
            (
                "https://[::ffff:10.0.0.1]/x",
                Refusal::Address(ip("::ffff:10.0.0.1")),
            ),
            ("/relative", Refusal::NotUrl),
            ("not a url", Refusal::NotUrl),
        ] {
            assert_eq!(check_url(STRICT, url), Err(why), "{url}");
        }
        let dev = check_url(DEV, "http://127.0.0.1:8080/x").unwrap();
        assert_eq!(
            (dev.https, dev.port, dev.ip()),
            (false, 8080, Some(ip("127.0.0.1")))
        );
        assert_eq!(check_url(DEV, "http://[::1]/x").unwrap().port, 80);
        assert_eq!(check_url(DEV, "ftp://x/"), Err(Refusal::Scheme));
    }

    #[test]
    fn resolved_answers() {
        assert_eq!(check_resolved(STRICT, &[]), Err(Refusal::Unresolved));
        assert_eq!(check_resolved(STRICT, &[ip("1.1.1.1")]), Ok(()));
        // One private answer among public ones refuses the whole name.
        assert_eq!(
            check_resolved(STRICT, &[ip("1.1.1.1"), ip("10.0.0.5")]),
            Err(Refusal::Address(ip("10.0.0.5")))
        );
        assert_eq!(check_resolved(DEV, &[ip("127.0.0.1")]), Ok(()));
    }
}
