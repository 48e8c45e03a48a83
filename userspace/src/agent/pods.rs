//! Which interfaces are pod veths, and when they come and go.
//!
//! A CNI gives each pod a veth pair and moves one end into the pod's network namespace; the end
//! left on the node is where pod traffic enters the node, so that is where the classifier goes.
//! By default a pod veth is a veth whose peer lives in another namespace (the kernel reports
//! the peer's namespace id, IFLA_LINK_NETNSID, only then). Operators whose CNI names its veths
//! (`cali*`, `lxc*`, `veth*`) can give name prefixes instead. The uplink is never a pod veth,
//! whatever it looks like (the agent skips it).

use futures::TryStreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
};

use crate::kernel::routing;

/// Why pod veths could not be listed or followed.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    /// The kernel would not list the links.
    #[error("listing links: {0}")]
    List(rtnetlink::Error),
    /// No subscription to link notifications.
    #[error("subscribing to link events: {0}")]
    Subscribe(std::io::Error),
    /// The subscription ended.
    #[error("the link notification socket closed")]
    Closed,
}

/// How pod veths are recognised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodVeths {
    /// Name prefixes; empty means "a veth whose peer is in another network namespace".
    pub prefixes: Vec<String>,
}

/// A link appearing or going, as far as pod veths are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// A pod veth exists (new, or changed).
    Up(String),
    /// A link with this name was deleted.
    Gone(String),
}

fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

impl PodVeths {
    /// The name of `link` if it is a pod veth.
    pub fn pod_name<'a>(&self, link: &'a LinkMessage) -> Option<&'a str> {
        let name = name(link)?;
        if !self.prefixes.is_empty() {
            return self
                .prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
                .then_some(name);
        }
        let is_veth = routing::is_veth(link);
        let peer_elsewhere = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
        (is_veth && peer_elsewhere).then_some(name)
    }

    /// The pod veths present now.
    pub async fn list(&self, handle: &Handle) -> Result<Vec<String>, LinksError> {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(LinksError::List)?;
        Ok(links
            .iter()
            .filter_map(|l| self.pod_name(l).map(str::to_owned))
            .collect())
    }

    /// Turns one message of the link multicast group into an event, if it concerns pod veths.
    pub fn event(&self, message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<PodEvent> {
        match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => self
                .pod_name(link)
                .map(|name| PodEvent::Up(name.to_owned())),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                name(link).map(|name| PodEvent::Gone(name.to_owned()))
            }
            _ => None,
        }
    }
}

/// A subscription to link notifications (`ip monitor link`).
pub struct LinkWatch {
    /// Kept so the connection task keeps running.
    _handle: Handle,
    /// Raw notifications.
    pub messages: UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

/// Subscribes to link notifications; the connection runs on the current tokio runtime.
pub fn watch() -> Result<LinkWatch, LinksError> {
    let (connection, handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(LinksError::Subscribe)?;
    tokio::spawn(connection);
    Ok(LinkWatch {
        _handle: handle,
        messages,
    })
}
