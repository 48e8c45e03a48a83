//! The packet counters every program keeps, one slot per verdict.
//!
//! Slots live in the per-CPU array [`crate::maps::COUNTERS`]; the index of a counter is its
//! discriminant, so the order here is an interface: append, never reorder.

/// One verdict of one program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Pod classifier: destination is a remote pod; the encrypt mark was stamped.
    PodMarked = 0,
    /// Pod classifier: IPv4 or IPv6, but the destination is not a remote pod; left untouched.
    PodUnmatched = 1,
    /// Pod classifier: not IP (ARP, VLAN-tagged, ...); left untouched. (The name is older
    /// than IPv6 support.)
    PodNotIpv4 = 2,
    /// Pod classifier: truncated or invalid Ethernet, IPv4 or IPv6 header; left untouched.
    PodMalformed = 3,
    /// Egress guard: passed.
    EgressPassed = 4,
    /// Egress guard: IPv4 or IPv6 to an address in the cluster's pod space of its family that
    /// is not this node's, about to leave unencrypted, whatever its source and protocol (save
    /// the link's IPv6 neighbour discovery); dropped. (With the IPv4 pod space not filled:
    /// IPv4 from one of this node's pods; with the IPv6 one not filled, no IPv6.)
    EgressLeakDropped = 5,
    /// Ingress guard: passed (not IP, nothing from a pod address, not ESP from a peer).
    IngressPassed = 6,
    /// Ingress guard: ESP from a peer with a currently valid SPI; passed to xfrm.
    IngressEspAccepted = 7,
    /// Ingress guard: IPv4 or IPv6 from an address in the cluster's pod space of its family,
    /// whatever its protocol (save the link's IPv6 neighbour discovery): plaintext or spoofed,
    /// as tunnel-mode ESP carries node IPs outside; dropped. (With the IPv4 pod space not
    /// filled: IPv4 to one of this node's pods; with the IPv6 one not filled, no IPv6.)
    IngressPlaintextDropped = 8,
    /// Ingress guard: ESP from a peer with an SPI not valid for it; dropped.
    IngressBadSpiDropped = 9,
    /// Egress guard: IPv4 EtherType but no readable IPv4 header (truncated, not pulled into
    /// the linear area, version not 4, IHL below 5 or past the frame), IPv6 EtherType but no
    /// readable 40-byte IPv6 header (while the IPv6 pod space is filled), or a truncated
    /// Ethernet or VLAN header; dropped.
    EgressMalformedDropped = 10,
    /// Egress guard: still VLAN-tagged after [`crate::programs::VLAN_TAGS_MAX`] tags; dropped.
    EgressVlanDepthDropped = 11,
    /// Ingress guard: IPv4 EtherType but no readable IPv4 header (truncated, version not 4,
    /// IHL below 5 or past the frame), IPv6 EtherType but no readable IPv6 header (while the
    /// IPv6 pod space is filled), IPv6 from a peer's address whose extension headers run past
    /// the walk's bound or the frame (it may be ESP the guard cannot check), or a truncated
    /// Ethernet or VLAN header; dropped.
    IngressMalformedDropped = 12,
    /// Ingress guard: still VLAN-tagged after [`crate::programs::VLAN_TAGS_MAX`] tags; dropped.
    IngressVlanDepthDropped = 13,
    /// Ingress guard at tc: from a pod address, but decrypted by xfrm (it carries the SA's
    /// secpath: tunnel mode hands the inner packet back to the uplink's receive path); passed.
    IngressDecryptedPassed = 14,
    /// Ingress guard: ESP in UDP to this node's encapsulation port
    /// ([`crate::maps::UDP_ENCAP`]) from a peer with a currently valid SPI; at tc, its UDP
    /// header stripped and passed to xfrm as ESP.
    IngressUdpEspAccepted = 15,
    /// Ingress guard: a NAT keepalive (one byte, 0xFF) to the encapsulation port; it only
    /// refreshes the NATs on its way, and nothing listens on the port: dropped.
    IngressKeepaliveDropped = 16,
}

impl Counter {
    /// Number of slots in the counters array.
    pub const COUNT: u32 = 17;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PodMarked,
        Counter::PodUnmatched,
        Counter::PodNotIpv4,
        Counter::PodMalformed,
        Counter::EgressPassed,
        Counter::EgressLeakDropped,
        Counter::IngressPassed,
        Counter::IngressEspAccepted,
        Counter::IngressPlaintextDropped,
        Counter::IngressBadSpiDropped,
        Counter::EgressMalformedDropped,
        Counter::EgressVlanDepthDropped,
        Counter::IngressMalformedDropped,
        Counter::IngressVlanDepthDropped,
        Counter::IngressDecryptedPassed,
        Counter::IngressUdpEspAccepted,
        Counter::IngressKeepaliveDropped,
    ];

    /// The stable snake_case name used in metrics and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PodMarked => "pod_marked",
            Counter::PodUnmatched => "pod_unmatched",
            Counter::PodNotIpv4 => "pod_not_ipv4",
            Counter::PodMalformed => "pod_malformed",
            Counter::EgressPassed => "egress_passed",
            Counter::EgressLeakDropped => "egress_leak_dropped",
            Counter::IngressPassed => "ingress_passed",
            Counter::IngressEspAccepted => "ingress_esp_accepted",
            Counter::IngressPlaintextDropped => "ingress_plaintext_dropped",
            Counter::IngressBadSpiDropped => "ingress_bad_spi_dropped",
            Counter::EgressMalformedDropped => "egress_malformed_dropped",
            Counter::EgressVlanDepthDropped => "egress_vlan_depth_dropped",
            Counter::IngressMalformedDropped => "ingress_malformed_dropped",
            Counter::IngressVlanDepthDropped => "ingress_vlan_depth_dropped",
            Counter::IngressDecryptedPassed => "ingress_decrypted_passed",
            Counter::IngressUdpEspAccepted => "ingress_udp_esp_accepted",
            Counter::IngressKeepaliveDropped => "ingress_keepalive_dropped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn all_lists_every_counter_at_its_index() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index, "{counter:?}");
        }
    }

    #[test]
    fn names_are_unique_and_snake_case() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            let name = a.name();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(name, b.name());
            }
        }
    }
}
