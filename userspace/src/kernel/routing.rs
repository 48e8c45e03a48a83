//! The policy routing xsteer owns: one rule that sends encrypt-marked packets to xsteer's table,
//! and in that table a route per remote pod CIDR with the MTU reduced by the ESP overhead.
//!
//! Ownership, so that reconciling never touches anyone else's rules and routes:
//! - a rule is xsteer's when it matches `fwmark 0xe00/0xf00` (the encrypt magic, any key, any
//!   peer), whatever its priority and table;
//! - a route is xsteer's when it sits in xsteer's table with protocol [`ROUTE_PROTOCOL`].
//!
//! Also here: the lookups that tell the reconcile what the node's network looks like (the
//! uplink, the next hop to each peer).

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{IpVersion, RouteMessageBuilder};
use xsteer_common::mark;

use super::Netlink;
use crate::cidr::{IpCidr, IpFamily};

/// Protocol number of xsteer's routes ("x"), as `ip route` shows it: `proto 0x78`.
pub const ROUTE_PROTOCOL: u8 = 0x78;
/// Priority of the encrypt rule: ahead of the main table (32766) and of the rules CNIs add
/// in the hundreds and thousands.
pub const DEFAULT_RULE_PRIORITY: u32 = 100;

/// `ip [-6] rule add fwmark 0xe00/0xf00 priority P lookup T`: one per family, since marked
/// packets of both families are routed by xsteer's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EncryptRule {
    /// The family of the packets it routes.
    pub family: IpFamily,
    /// Rule priority (lower first).
    pub priority: u32,
    /// The table looked up.
    pub table: u32,
}

impl fmt::Display for EncryptRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rule fwmark {:#x}/{:#x} priority {} lookup {}",
            self.family,
            mark::MAGIC_ENCRYPT,
            mark::MAGIC_MASK,
            self.priority,
            self.table
        )
    }
}

/// A route to a remote pod CIDR in xsteer's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRoute {
    /// The remote pod CIDR, of either family.
    pub dst: IpCidr,
    /// The gateway, when the pod CIDR is of the tunnel's family: the peer node itself on a
    /// shared link, or the router towards it. A route of the other family has none: it only
    /// steers marked packets to their xfrm policy, and the tunnel's own route picks the next
    /// hop.
    pub via: Option<IpAddr>,
    /// Output interface index.
    pub oif: u32,
    /// Path MTU for pod packets: the uplink's, less the ESP tunnel overhead.
    pub mtu: u32,
}

impl fmt::Display for PodRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {}", self.dst)?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        write!(f, " oif {} mtu {}", self.oif, self.mtu)
    }
}

/// How the main routing table reaches an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Output interface index.
    pub oif: u32,
    /// The router, if the address is not on a directly connected network.
    pub gateway: Option<IpAddr>,
}

/// The node's uplink, as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
}

/// Why a routing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The kernel refused a request.
    #[error("{op} {what}: {error}")]
    Kernel {
        /// "adding", "deleting", "listing", ...
        op: &'static str,
        /// The object.
        what: String,
        /// The errno.
        error: io::Error,
    },
    /// The configured uplink does not exist.
    #[error("node.uplink: there is no interface named {name:?} on this node")]
    UnknownUplink {
        /// The configured name.
        name: String,
    },
    /// The uplink is not Ethernet: the guards parse Ethernet frames and would check nothing
    /// on another link type, so xsteer refuses it rather than pass everything.
    #[error(
        "node.uplink: {name} is a {kind} link, not Ethernet: the guards would check nothing \
         on it; name the Ethernet interface the tunnels leave on"
    )]
    NotEthernet {
        /// The configured name.
        name: String,
        /// What it is.
        kind: String,
    },
    /// The kernel has no route to a peer's node IP.
    #[error("no route to peer node IP {ip}: {error}")]
    NoRoute {
        /// The peer's node IP.
        ip: IpAddr,
        /// What the kernel answered.
        error: io::Error,
    },
}

fn errno(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn kernel(
    op: &'static str,
    what: impl fmt::Display,
) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    let what = what.to_string();
    move |e| RoutingError::Kernel {
        op,
        what,
        error: errno(e),
    }
}

/// Whether `link` is a veth.
pub fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// The link named `name`, or `None` if there is none (ENODEV).
pub async fn link_by_name(
    route: &rtnetlink::Handle,
    name: &str,
) -> io::Result<Option<LinkMessage>> {
    let found = route
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(e) => {
            let error = errno(e);
            if error.raw_os_error() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(error)
            }
        }
    }
}

/// Finds the uplink named `name`.
pub async fn uplink(netlink: &Netlink, name: &str) -> Result<Uplink, RoutingError> {
    let link = link_by_name(&netlink.route, name)
        .await
        .map_err(|error| RoutingError::Kernel {
            op: "reading",
            what: format!("link {name}"),
            error,
        })?
        .ok_or_else(|| RoutingError::UnknownUplink {
            name: name.to_owned(),
        })?;
    if link.header.link_layer_type != LinkLayerType::Ether {
        return Err(RoutingError::NotEthernet {
            name: name.to_owned(),
            kind: format!("{:?}", link.header.link_layer_type),
        });
    }
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500);
    Ok(Uplink {
        name: name.to_owned(),
        index: link.header.index,
        mtu,
    })
}

/// Asks the kernel how it routes to `ip` (as `ip route get` does).
pub async fn route_to(netlink: &Netlink, ip: IpAddr) -> Result<NextHop, RoutingError> {
    let query = match ip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let reply = netlink
        .route
        .route()
        .get(query)
        .execute()
        .try_next()
        .await
        .map_err(|e| RoutingError::NoRoute {
            ip,
            error: errno(e),
        })?
        .ok_or_else(|| RoutingError::NoRoute {
            ip,
            error: io::Error::other("empty answer"),
        })?;
    let mut hop = NextHop {
        oif: 0,
        gateway: None,
    };
    for attribute in &reply.attributes {
        match attribute {
            RouteAttribute::Oif(oif) => hop.oif = *oif,
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => hop.gateway = Some((*gw).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => hop.gateway = Some((*gw).into()),
            _ => {}
        }
    }
    if hop.oif == 0 {
        return Err(RoutingError::NoRoute {
            ip,
            error: io::Error::other("the route has no output interface"),
        });
    }
    Ok(hop)
}

fn table_of_rule(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// The encrypt rules present (normally one).
pub async fn encrypt_rules(netlink: &Netlink) -> Result<Vec<EncryptRule>, RoutingError> {
    let mut found = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let rules: Vec<RuleMessage> = netlink
            .route
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(kernel("listing", "rules"))?;
        found.extend(rules.iter().filter_map(encrypt_rule));
    }
    Ok(found)
}

/// The encrypt rule `rule` is, if it is one (it matches `fwmark 0xe00/0xf00`).
pub fn encrypt_rule(rule: &RuleMessage) -> Option<EncryptRule> {
    let has = |want: &RuleAttribute| rule.attributes.contains(want);
    if !(has(&RuleAttribute::FwMark(mark::MAGIC_ENCRYPT))
        && has(&RuleAttribute::FwMask(mark::MAGIC_MASK)))
    {
        return None;
    }
    let family = match rule.header.family {
        AddressFamily::Inet => IpFamily::V4,
        AddressFamily::Inet6 => IpFamily::V6,
        _ => return None,
    };
    Some(EncryptRule {
        family,
        priority: rule
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(0),
        table: table_of_rule(rule),
    })
}

fn rule_message(rule: &EncryptRule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = match rule.family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    };
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(rule.table).unwrap_or(0);
    message.attributes = vec![
        RuleAttribute::Table(rule.table),
        RuleAttribute::Priority(rule.priority),
        RuleAttribute::FwMark(mark::MAGIC_ENCRYPT),
        RuleAttribute::FwMask(mark::MAGIC_MASK),
    ];
    message
}

/// Adds the encrypt rule.
pub async fn add_rule(netlink: &Netlink, rule: &EncryptRule) -> Result<(), RoutingError> {
    netlink.count_write();
    let result = match rule.family {
        IpFamily::V4 => {
            let mut request = netlink.route.rule().add().v4();
            *request.message_mut() = rule_message(rule);
            request.execute().await
        }
        IpFamily::V6 => {
            let mut request = netlink.route.rule().add().v6();
            *request.message_mut() = rule_message(rule);
            request.execute().await
        }
    };
    result.map_err(kernel("adding", rule))
}

/// Removes an encrypt rule.
pub async fn delete_rule(netlink: &Netlink, rule: &EncryptRule) -> Result<(), RoutingError> {
    netlink.count_write();
    netlink
        .route
        .rule()
        .del(rule_message(rule))
        .execute()
        .await
        .map_err(kernel("deleting", rule))
}

fn table_of_route(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Reads one of xsteer's routes back; `None` for a route xsteer would never write.
fn pod_route(route: &RouteMessage) -> Option<PodRoute> {
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    let mut mtu = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => via = Some((*a).into()),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Some(PodRoute {
        dst: IpCidr::new(dst?, route.header.destination_prefix_length)?,
        via,
        oif: oif?,
        mtu: mtu.unwrap_or(0),
    })
}

/// xsteer's routes in `table`.
pub async fn pod_routes(netlink: &Netlink, table: u32) -> Result<Vec<PodRoute>, RoutingError> {
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .build(),
        RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(table)
            .build(),
    ];
    let mut routes: Vec<RouteMessage> = Vec::new();
    for dump in dumps {
        let found: Vec<RouteMessage> = netlink
            .route
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(kernel("listing", format!("routes in table {table}")))?;
        routes.extend(found);
    }
    Ok(routes
        .iter()
        .filter_map(owned_route)
        .filter(|(in_table, _)| *in_table == table)
        .map(|(_, route)| route)
        .collect())
}

/// The table and content of `route` if it is one of xsteer's (protocol [`ROUTE_PROTOCOL`]).
pub fn owned_route(route: &RouteMessage) -> Option<(u32, PodRoute)> {
    if route.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
        return None;
    }
    Some((table_of_route(route), pod_route(route)?))
}

fn route_message(table: u32, route: &PodRoute) -> RouteMessage {
    let mut message = match route.dst {
        IpCidr::V4(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .output_interface(route.oif)
                .table_id(table)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                .scope(RouteScope::Universe)
                .kind(RouteType::Unicast);
            if let Some(IpAddr::V4(via)) = route.via {
                builder = builder.gateway(via);
            }
            builder.build()
        }
        IpCidr::V6(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .output_interface(route.oif)
                .table_id(table)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                .scope(RouteScope::Universe)
                .kind(RouteType::Unicast);
            if let Some(IpAddr::V6(via)) = route.via {
                builder = builder.gateway(via);
            }
            builder.build()
        }
    };
    message
        .attributes
        .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(route.mtu)]));
    message
}

/// Adds `route` to `table`.
pub async fn add_route(
    netlink: &Netlink,
    table: u32,
    route: &PodRoute,
) -> Result<(), RoutingError> {
    write_route(netlink, table, route, false).await
}

/// Replaces the route to `route.dst` in `table` with `route`, in one atomic kernel operation.
pub async fn replace_route(
    netlink: &Netlink,
    table: u32,
    route: &PodRoute,
) -> Result<(), RoutingError> {
    write_route(netlink, table, route, true).await
}

async fn write_route(
    netlink: &Netlink,
    table: u32,
    route: &PodRoute,
    replace: bool,
) -> Result<(), RoutingError> {
    netlink.count_write();
    let request = netlink.route.route().add(route_message(table, route));
    let (request, verb) = if replace {
        (request.replace(), "replacing")
    } else {
        (request, "adding")
    };
    request.execute().await.map_err(kernel(verb, route))
}

/// Removes `route` from `table`.
pub async fn delete_route(
    netlink: &Netlink,
    table: u32,
    route: &PodRoute,
) -> Result<(), RoutingError> {
    netlink.count_write();
    netlink
        .route
        .route()
        .del(route_message(table, route))
        .execute()
        .await
        .map_err(kernel("deleting", route))
}

/// Only for tests that compare with `ip route`: the header fields of a route xsteer writes.
#[cfg(test)]
fn header(table: u32) -> netlink_packet_route::route::RouteHeader {
    route_message(
        table,
        &PodRoute {
            dst: "10.0.0.0/24".parse().unwrap(),
            via: None,
            oif: 1,
            mtu: 1400,
        },
    )
    .header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_carry_the_protocol_and_table_and_read_back() {
        let h = header(200);
        assert_eq!(h.protocol, RouteProtocol::from(ROUTE_PROTOCOL));
        assert_eq!(h.table, 200);
        let route = PodRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: Some(Ipv4Addr::new(192, 168, 1, 2).into()),
            oif: 7,
            mtu: 1446,
        };
        assert_eq!(pod_route(&route_message(1000, &route)), Some(route));
        assert_eq!(table_of_route(&route_message(1000, &route)), 1000);
    }

    #[test]
    fn rules_carry_the_encrypt_magic_and_big_tables() {
        for family in [IpFamily::V4, IpFamily::V6] {
            let rule = EncryptRule {
                family,
                priority: 100,
                table: 1000,
            };
            let m = rule_message(&rule);
            assert!(m.attributes.contains(&RuleAttribute::FwMark(0xE00)));
            assert!(m.attributes.contains(&RuleAttribute::FwMask(0xF00)));
            assert_eq!(table_of_rule(&m), 1000);
            assert_eq!(encrypt_rule(&m), Some(rule));
        }
    }

    #[test]
    fn ipv6_routes_have_no_gateway_and_read_back() {
        let route = PodRoute {
            dst: "fd00:10:244:2::/64".parse().unwrap(),
            via: None,
            oif: 3,
            mtu: 1446,
        };
        let m = route_message(1000, &route);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(pod_route(&m), Some(route));
    }
}
