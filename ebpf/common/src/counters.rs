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
    /// Pod classifier: IPv4, but the destination is not a remote pod; left untouched.
    PodUnmatched = 1,
    /// Pod classifier: not IPv4 (IPv6, ARP, VLAN-tagged, ...); left untouched.
    PodNotIpv4 = 2,
    /// Pod classifier: truncated or invalid Ethernet/IPv4 header; left untouched.
    PodMalformed = 3,
    /// Egress guard: passed.
    EgressPassed = 4,
    /// Egress guard: a local pod's packet to a remote pod about to leave unencrypted; dropped.
    EgressLeakDropped = 5,
    /// Ingress guard: passed (not pod-to-pod, not ESP from a peer, or not parseable).
    IngressPassed = 6,
    /// Ingress guard: ESP from a peer with a currently valid SPI; passed to xfrm.
    IngressEspAccepted = 7,
    /// Ingress guard: unencrypted packet from a remote pod to a local pod; dropped.
    IngressPlaintextDropped = 8,
    /// Ingress guard: ESP from a peer with an SPI not valid for it; dropped.
    IngressBadSpiDropped = 9,
}

impl Counter {
    /// Number of slots in the counters array.
    pub const COUNT: u32 = 10;

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
}
