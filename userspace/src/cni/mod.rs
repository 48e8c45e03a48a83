//! `xsteer-cni`: a chained CNI plugin that classifies a pod's veth before the pod can talk.
//!
//! The agent attaches the classifier to pod veths as it sees them appear, and the guards to the
//! uplink, but pods can start while nothing is attached: after a node reboot the bpffs pins are
//! gone, and until the agent's own pod is up again nothing guards the node, so a pod's traffic
//! to other nodes' pods would leave unmarked, unencrypted and unchecked. Placed after the main
//! plugin (ptp, bridge, ...) in the conflist, `xsteer-cni` closes that window: ADD fails with
//! "try again later" (the runtime retries the pod) until the node's dataplane is loaded and
//! guarded, and then attaches the classifier to the pod's host veth before any of the pod's
//! containers runs.
//!
//! The plugin works from the pinned dataplane, not through the agent: it opens the classifier
//! the agent pinned at `<pin dir>/programs/pod_classifier`, checks that the guards' pinned
//! links are attached to the uplink, and pins its link where the agent pins its own, so the
//! agent adopts it. What must be in place for a pod to start safely is the dataplane, and the
//! pins outlive the agent: a plugin that needed the agent process would fail every pod start
//! during an agent upgrade although the node is fully guarded.

//!
//! The agent installs it: [`install`] copies the binary where the container runtime finds it
//! and chains it into the node's network config, whose text [`conflist`] edits.

pub mod conflist;
pub mod install;
pub mod node;
pub mod plugin;
pub mod spec;
