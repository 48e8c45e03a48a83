//! IPv4 and IPv6 CIDRs as operators write them, checked strictly.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// The prefix length of the pod CIDR a node is given when its pod CIDR is allocated from the
/// cluster CIDR; the classifier's grid of slots over the cluster CIDR uses the same size.
pub const NODE_POD_PREFIX_LEN: u8 = 24;

/// An IPv4 network: an address with no bits set past the prefix, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// Why a string is not an IPv4 CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    /// No `/` separates address and prefix length.
    #[error("{0:?} is not a CIDR: expected ADDRESS/PREFIX, e.g. 10.244.1.0/24")]
    NoPrefix(String),
    /// The address part does not parse.
    #[error("{0:?} is not a CIDR: {1:?} is not an IPv4 address")]
    Address(String, String),
    /// The prefix length is not a number from 0 to 32.
    #[error("{0:?} is not a CIDR: prefix length must be 0..=32")]
    PrefixLen(String),
    /// Bits are set past the prefix, e.g. `10.0.0.1/24`.
    #[error("{input:?} has host bits set: did you mean {network}?")]
    HostBits {
        /// What was given.
        input: String,
        /// The network it falls in.
        network: Ipv4Cidr,
    },
}

impl Ipv4Cidr {
    /// The network `addr/prefix_len`; fails if bits past the prefix are set.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, CidrError> {
        let input = format!("{addr}/{prefix_len}");
        if prefix_len > 32 {
            return Err(CidrError::PrefixLen(input));
        }
        let network = Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits { input, network });
        }
        Ok(network)
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` is inside this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix_len) == u32::from(self.addr)
    }

    /// Whether every address of `other` is inside this network.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(s.to_owned()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| CidrError::Address(s.to_owned(), addr.to_owned()))?;
        // Only plain decimal: "+24" or "024" would be accepted by u8's parser.
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::PrefixLen(s.to_owned()));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| CidrError::PrefixLen(s.to_owned()))?;
        Ipv4Cidr::new(addr, len).map_err(|e| match e {
            CidrError::HostBits { network, .. } => CidrError::HostBits {
                input: s.to_owned(),
                network,
            },
            CidrError::PrefixLen(_) => CidrError::PrefixLen(s.to_owned()),
            other => other,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The prefix length of the IPv6 pod CIDR Kubernetes gives a node by default
/// (`--node-cidr-mask-size-ipv6`), and the size of the classifier's IPv6 grid slots.
pub const NODE_POD_PREFIX_LEN_V6: u8 = 64;

/// An IPv6 network: an address with no bits set past the prefix, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Cidr {
    addr: Ipv6Addr,
    prefix_len: u8,
}

/// Why a string is not an IPv6 CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ipv6CidrError {
    /// No `/` separates address and prefix length.
    #[error("{0:?} is not a CIDR: expected ADDRESS/PREFIX, e.g. fd00:10:244:1::/64")]
    NoPrefix(String),
    /// The address part does not parse.
    #[error("{0:?} is not a CIDR: {1:?} is not an IPv6 address")]
    Address(String, String),
    /// The prefix length is not a number from 0 to 128.
    #[error("{0:?} is not a CIDR: prefix length must be 0..=128")]
    PrefixLen(String),
    /// Bits are set past the prefix, e.g. `fd00::1/64`.
    #[error("{input:?} has host bits set: did you mean {network}?")]
    HostBits {
        /// What was given.
        input: String,
        /// The network it falls in.
        network: Ipv6Cidr,
    },
}

impl Ipv6Cidr {
    /// The network `addr/prefix_len`; fails if bits past the prefix are set.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Result<Self, Ipv6CidrError> {
        let input = format!("{addr}/{prefix_len}");
        if prefix_len > 128 {
            return Err(Ipv6CidrError::PrefixLen(input));
        }
        let network = Ipv6Cidr {
            addr: Ipv6Addr::from(u128::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        };
        if network.addr != addr {
            return Err(Ipv6CidrError::HostBits { input, network });
        }
        Ok(network)
    }

    /// The netmask of a prefix length, as a number.
    pub fn mask(prefix_len: u8) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` is inside this network.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & Self::mask(self.prefix_len) == u128::from(self.addr)
    }

    /// Whether every address of `other` is inside this network.
    pub fn covers(&self, other: &Ipv6Cidr) -> bool {
        self.prefix_len <= other.prefix_len && self.contains(other.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv6Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = Ipv6CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| Ipv6CidrError::NoPrefix(s.to_owned()))?;
        // Rust's parser takes every RFC 4291 text form, an embedded IPv4 tail included, but no
        // zone ("%eth0"), which a CIDR has no use for.
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| Ipv6CidrError::Address(s.to_owned(), addr.to_owned()))?;
        // Only plain decimal, as for IPv4: no sign, no leading zero.
        let plain = !len.is_empty()
            && len.len() <= 3
            && len.bytes().all(|b| b.is_ascii_digit())
            && (len == "0" || !len.starts_with('0'));
        if !plain {
            return Err(Ipv6CidrError::PrefixLen(s.to_owned()));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| Ipv6CidrError::PrefixLen(s.to_owned()))?;
        Ipv6Cidr::new(addr, len).map_err(|e| match e {
            Ipv6CidrError::HostBits { network, .. } => Ipv6CidrError::HostBits {
                input: s.to_owned(),
                network,
            },
            Ipv6CidrError::PrefixLen(_) => Ipv6CidrError::PrefixLen(s.to_owned()),
            other => other,
        })
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An address family, where xsteer writes one kernel object per family (an `ip rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        })
    }
}

/// A network of either family, where one kernel object takes both: an xfrm selector, a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpCidr {
    /// An IPv4 network.
    V4(Ipv4Cidr),
    /// An IPv6 network.
    V6(Ipv6Cidr),
}

impl IpCidr {
    /// Every IPv4 address: `0.0.0.0/0`.
    pub const ANY_V4: IpCidr = IpCidr::V4(Ipv4Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    });
    /// Every IPv6 address: `::/0`.
    pub const ANY_V6: IpCidr = IpCidr::V6(Ipv6Cidr {
        addr: Ipv6Addr::UNSPECIFIED,
        prefix_len: 0,
    });

    /// The network `addr/prefix_len` of the family of `addr`; `None` if bits past the prefix
    /// are set or the prefix is too long.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<IpCidr> {
        match addr {
            IpAddr::V4(a) => Ipv4Cidr::new(a, prefix_len).ok().map(IpCidr::V4),
            IpAddr::V6(a) => Ipv6Cidr::new(a, prefix_len).ok().map(IpCidr::V6),
        }
    }

    /// The single address `addr`: a /32 or a /128.
    pub fn host(addr: IpAddr) -> IpCidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        IpCidr::new(addr, len).expect("a host prefix has no host bits")
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        match self {
            IpCidr::V4(c) => c.addr().into(),
            IpCidr::V6(c) => c.addr().into(),
        }
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        match self {
            IpCidr::V4(c) => c.prefix_len(),
            IpCidr::V6(c) => c.prefix_len(),
        }
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        matches!(self, IpCidr::V6(_))
    }
}

impl From<Ipv4Cidr> for IpCidr {
    fn from(c: Ipv4Cidr) -> IpCidr {
        IpCidr::V4(c)
    }
}

impl From<Ipv6Cidr> for IpCidr {
    fn from(c: Ipv6Cidr) -> IpCidr {
        IpCidr::V6(c)
    }
}

/// Why a string is not a CIDR of either family.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpCidrError {
    /// It reads as IPv4 (no `:`) and is not a valid IPv4 CIDR.
    #[error(transparent)]
    V4(#[from] CidrError),
    /// It reads as IPv6 and is not a valid IPv6 CIDR.
    #[error(transparent)]
    V6(#[from] Ipv6CidrError),
}

impl FromStr for IpCidr {
    type Err = IpCidrError;

    /// An IPv6 CIDR if the text has a `:`, an IPv4 one otherwise.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s.contains(':') {
            IpCidr::V6(s.parse()?)
        } else {
            IpCidr::V4(s.parse()?)
        })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert_eq!(c.addr(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.prefix_len(), 24);
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix_len(), 0);
        assert_eq!("10.0.0.7/32".parse::<Ipv4Cidr>().unwrap().prefix_len(), 32);
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let host_bits = "10.244.1.5/24".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            host_bits.to_string(),
            "\"10.244.1.5/24\" has host bits set: did you mean 10.244.1.0/24?"
        );
        for bad in [
            "10.244.1.0",
            "10.244.1.0/33",
            "10.244.1.0/",
            "10.244.1.0/+8",
            "x/8",
        ] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn contains_and_overlaps() {
        let a: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.244.3.0/24".parse().unwrap();
        let c: Ipv4Cidr = "10.245.0.0/16".parse().unwrap();
        assert!(a.contains(Ipv4Addr::new(10, 244, 255, 1)));
        assert!(!a.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().overlaps(&c));
        assert!(a.covers(&b) && a.covers(&a) && !b.covers(&a) && !a.covers(&c));
    }

    #[test]
    fn parses_ipv6_networks() {
        let c: Ipv6Cidr = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(c.addr(), Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0));
        assert_eq!(c.prefix_len(), 64);
        assert_eq!(c.to_string(), "fd00:10:244:1::/64");
        assert_eq!("::/0".parse::<Ipv6Cidr>().unwrap().prefix_len(), 0);
        assert_eq!("fd00::7/128".parse::<Ipv6Cidr>().unwrap().prefix_len(), 128);
        assert_eq!(
            "FD00:0010:0244:0001:0:0:0:0/64"
                .parse::<Ipv6Cidr>()
                .unwrap(),
            c,
            "any RFC 4291 spelling of the address"
        );
    }

    #[test]
    fn rejects_bad_ipv6_input_naming_it() {
        let host_bits = "fd00:10:244:1::5/64".parse::<Ipv6Cidr>().unwrap_err();
        assert_eq!(
            host_bits.to_string(),
            "\"fd00:10:244:1::5/64\" has host bits set: did you mean fd00:10:244:1::/64?"
        );
        for bad in [
            "fd00::",
            "fd00::/129",
            "fd00::/",
            "fd00::/+8",
            "fd00::/064",
            "fd00::/1000",
            "fe80::1%eth0/64",
            "10.0.0.0/8",
            "x/8",
        ] {
            let err = bad.parse::<Ipv6Cidr>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn ipv6_contains_and_overlaps() {
        let a: Ipv6Cidr = "fd00:10:244::/48".parse().unwrap();
        let b: Ipv6Cidr = "fd00:10:244:3::/64".parse().unwrap();
        let c: Ipv6Cidr = "fd00:10:245::/48".parse().unwrap();
        assert!(a.contains("fd00:10:244:ffff::1".parse().unwrap()));
        assert!(!a.contains("fd00:10:245::1".parse().unwrap()));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!("::/0".parse::<Ipv6Cidr>().unwrap().overlaps(&c));
        assert!(a.covers(&b) && a.covers(&a) && !b.covers(&a) && !a.covers(&c));
        assert_eq!(Ipv6Cidr::mask(0), 0);
        assert_eq!(Ipv6Cidr::mask(128), u128::MAX);
    }
}
