//! The kernel's notifications of xfrm and routing objects going away, so that something that
//! removes xsteer's objects behind its back (an `ip xfrm state flush`, a deleted rule or route,
//! a hard expiry) is noticed at once instead of at the next periodic resync.
//!
//! Only removals are reported, and only what could be xsteer's: whether it actually was (and
//! not a change xsteer made itself) is for the caller to tell against the state it left.

use std::io;

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_xfrm::{
    XFRMNLGRP_EXPIRE, XFRMNLGRP_POLICY, XFRMNLGRP_SA, XfrmMessage, constants::IPPROTO_ESP,
};
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    sys::{AsyncSocket, SocketAddr},
};

use super::{
    routing::{self, EncryptRule, PodRoute},
    xfrm::{self, PolicyKey, StateKey},
};

/// Something the kernel removed that may have been xsteer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// One SA.
    State(StateKey),
    /// Every SA (a flush).
    AllStates,
    /// One policy.
    Policy(PolicyKey),
    /// Every policy (a flush).
    AllPolicies,
    /// An encrypt rule.
    Rule(EncryptRule),
    /// One of xsteer's routes, in the table it was in.
    Route {
        /// The table.
        table: u32,
        /// The route.
        route: PodRoute,
    },
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removed::State(key) => write!(f, "SA to {} spi {:#010x}", key.dst, key.spi),
            Removed::AllStates => write!(f, "every SA (a flush)"),
            Removed::Policy(key) => {
                write!(f, "a policy {:?} {} -> {}", key.direction, key.src, key.dst)
            }
            Removed::AllPolicies => write!(f, "every policy (a flush)"),
            Removed::Rule(rule) => write!(f, "the {rule}"),
            Removed::Route { table, route } => {
                write!(f, "the route to {} in table {table}", route.dst)
            }
        }
    }
}

/// A subscription to the kernel's xfrm and routing notifications.
pub struct Events {
    xfrm: UnboundedReceiver<(NetlinkMessage<XfrmMessage>, SocketAddr)>,
    route: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// Kept: a connection whose handles are all gone stops reading.
    _handles: (xfrmnetlink::Handle, rtnetlink::Handle),
}

/// Subscribes to SA, policy and expiry notifications, and to rule and route ones of both
/// families; the
/// connections run on the current tokio runtime.
pub fn subscribe() -> io::Result<Events> {
    let (mut xfrm_conn, xfrm_handle, xfrm) = xfrmnetlink::new_connection()?;
    // Joined at bind time, as `ip xfrm monitor` does: group n is bit n - 1.
    let groups = [XFRMNLGRP_SA, XFRMNLGRP_POLICY, XFRMNLGRP_EXPIRE]
        .iter()
        .fold(0, |bits, group| bits | 1 << (group - 1));
    xfrm_conn
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))?;
    tokio::spawn(xfrm_conn);
    let (route_conn, route_handle, route) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Rule,
        MulticastGroup::Ipv6Route,
    ])?;
    tokio::spawn(route_conn);
    Ok(Events {
        xfrm,
        route,
        _handles: (xfrm_handle, route_handle),
    })
}

impl Events {
    /// The next removal; `None` once a subscription has ended.
    pub async fn next(&mut self) -> Option<Removed> {
        loop {
            let removed = tokio::select! {
                message = self.xfrm.next() => match message?.0.payload {
                    NetlinkPayload::InnerMessage(m) => removed_xfrm(&m),
                    _ => None,
                },
                message = self.route.next() => match message?.0.payload {
                    NetlinkPayload::InnerMessage(m) => removed_route(&m),
                    _ => None,
                },
            };
            if removed.is_some() {
                return removed;
            }
        }
    }
}

fn removed_xfrm(message: &XfrmMessage) -> Option<Removed> {
    match message {
        XfrmMessage::DeleteSa(m) if m.user_sa_id.proto == IPPROTO_ESP => {
            Some(Removed::State(StateKey {
                dst: m.user_sa_id.daddr.to_ipv4(),
                spi: m.user_sa_id.spi,
            }))
        }
        XfrmMessage::Expire(m) if m.expire.hard != 0 => Some(Removed::State(StateKey {
            dst: m.expire.state.id.daddr.to_ipv4(),
            spi: m.expire.state.id.spi,
        })),
        XfrmMessage::FlushSa(_) => Some(Removed::AllStates),
        XfrmMessage::DeletePolicy(m) => xfrm::policy_key(
            &m.user_policy_id.selector,
            m.user_policy_id.direction,
            &m.nlas,
        )
        .map(Removed::Policy),
        XfrmMessage::FlushPolicy(_) => Some(Removed::AllPolicies),
        _ => None,
    }
}

fn removed_route(message: &RouteNetlinkMessage) -> Option<Removed> {
    match message {
        RouteNetlinkMessage::DelRule(rule) => routing::encrypt_rule(rule).map(Removed::Rule),
        RouteNetlinkMessage::DelRoute(route) => {
            routing::owned_route(route).map(|(table, route)| Removed::Route { table, route })
        }
        _ => None,
    }
}
