//! Names of the eBPF programs, as they appear in the object, in `bpftool prog` and in pin paths.
//!
//! Kernel object names are cut at 15 bytes; every name here fits.

/// tc ingress of a pod's host-side veth (traffic leaving the pod): stamps the encrypt mark.
pub const POD_CLASSIFIER: &str = "pod_classifier";
/// tc egress of the uplink: drops pod-to-remote-pod packets that would leave unencrypted.
pub const EGRESS_GUARD: &str = "egress_guard";
/// XDP on the uplink: drops plaintext pod traffic from peers and ESP with an invalid SPI.
pub const INGRESS_GUARD: &str = "ingress_guard";
