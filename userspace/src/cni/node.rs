//! What the plugin asks the node: whether the dataplane is loaded and guarded, which interfaces
//! are veths, and whether a veth runs the classifier.
//!
//! A pin alone proves little: it can hold a link whose interface was deleted (and perhaps
//! re-created under the same name). So every check asks the kernel what actually runs on the
//! interface and compares program ids with the pinned link's.

use std::path::Path;

use aya::programs::{SchedClassifier, TcAttachType};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use xsteer_common::programs;

use super::spec::CniError;
use crate::{
    dataplane::{links, program_pin_path},
    kernel::routing,
};

/// A route netlink connection in the plugin's network namespace (the node's).
pub struct Node {
    handle: rtnetlink::Handle,
}

fn kernel(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |error| CniError::Kernel { what, error }
}

/// Opens the pod classifier the agent pinned under `pin_dir`. Its absence means the dataplane
/// is not loaded (yet): try again later.
pub fn pod_classifier(pin_dir: &Path) -> Result<SchedClassifier, CniError> {
    let path = program_pin_path(pin_dir, programs::POD_CLASSIFIER);
    if !path.exists() {
        return Err(CniError::NotReady(format!(
            "the xsteer dataplane is not loaded on this node: no pinned pod classifier at {} \
             (is the xsteer agent running?)",
            path.display()
        )));
    }
    SchedClassifier::from_pin(&path).map_err(|error| CniError::Program {
        what: format!("opening the pinned pod classifier {}", path.display()),
        error,
    })
}

/// The ids of the programs attached with TCX to `interface` in `direction`.
fn tcx_program_ids(interface: &str, direction: TcAttachType) -> Result<Vec<u32>, CniError> {
    let (_, infos) =
        SchedClassifier::query_tcx(interface, direction).map_err(|error| CniError::Program {
            what: format!("listing the tc {direction:?} programs of {interface}"),
            error,
        })?;
    Ok(infos.iter().map(|info| info.id()).collect())
}

/// Whether the link pinned for `program` on `interface` is attached there: its program is
/// among those the kernel lists for the interface in `direction`. `Ok(false)` without a pin.
pub fn tc_link_attached(
    pin_dir: &Path,
    program: &'static str,
    interface: &str,
    direction: TcAttachType,
) -> Result<bool, CniError> {
    let Some(id) = links::pinned_program_id(pin_dir, program, interface)
        .map_err(|e| CniError::Link(Box::new(e)))?
    else {
        return Ok(false);
    };
    Ok(tcx_program_ids(interface, direction)?.contains(&id))
}

impl Node {
    /// Connects; the connection runs on the current tokio runtime.
    pub fn connect() -> Result<Node, CniError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(kernel("opening a route netlink socket".into()))?;
        tokio::spawn(connection);
        Ok(Node { handle })
    }

    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, CniError> {
        routing::link_by_name(&self.handle, name)
            .await
            .map_err(kernel(format!("reading link {name}")))
    }

    /// The uplink the guards run on: an interface with pinned links of both guards whose
    /// programs the kernel confirms are attached (the egress guard at tc egress, the ingress
    /// guard as its XDP program or at tc ingress). Otherwise [`CniError::NotReady`], naming what
    /// is missing.
    pub async fn guarded_uplink(&self, pin_dir: &Path) -> Result<String, CniError> {
        let egress = links::pinned_interfaces(pin_dir, programs::EGRESS_GUARD);
        let mut ingress = links::pinned_interfaces(pin_dir, programs::INGRESS_GUARD);
        ingress.extend(links::pinned_interfaces(
            pin_dir,
            programs::INGRESS_GUARD_TC,
        ));
        let dir = links::links_dir(pin_dir);
        let dir = dir.display();
        for (pinned, program) in [
            (&egress, programs::EGRESS_GUARD),
            (&ingress, programs::INGRESS_GUARD),
        ] {
            if pinned.is_empty() {
                return Err(CniError::NotReady(format!(
                    "the {} is not attached to any uplink: no {program}@<uplink> pin in {dir} \
                     (is the xsteer agent running?)",
                    program.replace('_', " ")
                )));
            }
        }
        let mut problems = Vec::new();
        for uplink in egress.iter().filter(|i| ingress.contains(i)) {
            match self.guards_attached(pin_dir, uplink).await? {
                None => return Ok(uplink.clone()),
                Some(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            problems.push(format!(
                "the guards are pinned for different interfaces (egress guard: {}; ingress \
                 guard: {})",
                egress.join(", "),
                ingress.join(", ")
            ));
        }
        Err(CniError::NotReady(format!(
            "the xsteer guards are not attached to any uplink: {} (the agent attaches them at \
             its start)",
            problems.join("; ")
        )))
    }

    /// What is wrong with the guards pinned for `uplink`; `None` when both are attached.
    async fn guards_attached(
        &self,
        pin_dir: &Path,
        uplink: &str,
    ) -> Result<Option<String>, CniError> {
        match tc_link_attached(
            pin_dir,
            programs::EGRESS_GUARD,
            uplink,
            TcAttachType::Egress,
        ) {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Some(format!(
                    "the pinned egress guard link of {uplink} is not attached to its tc egress"
                )));
            }
            Err(e) => return Ok(Some(e.to_string())),
        }
        // A veth uplink runs the ingress guard at tc ingress, a NIC as its XDP program.
        match tc_link_attached(
            pin_dir,
            programs::INGRESS_GUARD_TC,
            uplink,
            TcAttachType::Ingress,
        ) {
            Ok(true) => return Ok(None),
            Ok(false) => {}
            Err(e) => return Ok(Some(e.to_string())),
        }
        let pinned = match links::pinned_program_id(pin_dir, programs::INGRESS_GUARD, uplink) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Ok(Some(format!(
                    "no pinned ingress guard link of {uplink} attached at XDP or tc ingress"
                )));
            }
            Err(e) => return Ok(Some(e.to_string())),
        };
        let Some(link) = self.link(uplink).await? else {
            return Ok(Some(format!("the uplink {uplink} does not exist")));
        };
        if xdp_program_ids(&link).contains(&pinned) {
            Ok(None)
        } else {
            Ok(Some(format!(
                "the pinned ingress guard link of {uplink} is not its XDP program"
            )))
        }
    }
}

/// The XDP programs attached to `link`: the kernel reports one id for a single mode, one per
/// mode (driver, generic, offload) when several are in use.
fn xdp_program_ids(link: &LinkMessage) -> Vec<u32> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        })
        .flatten()
        .filter_map(|x| match x {
            LinkXdp::ProgId(id)
            | LinkXdp::DrvProgId(id)
            | LinkXdp::SkbProgId(id)
            | LinkXdp::HwProgId(id) => Some(*id),
            _ => None,
        })
        .filter(|id| *id != 0)
        .collect()
}
