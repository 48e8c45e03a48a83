//! xsteer's chained CNI plugin, `xsteer-cni`, on the node: chaining it into the network's
//! config and copying its binary where the container runtime finds it ([`conflist`] edits the
//! config's text, [`install`] writes the files), so that a pod's veth is guarded from its first
//! packet, before the agent sees it.

pub mod conflist;
pub mod install;
