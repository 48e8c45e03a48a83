//! xsteer's eBPF programs: parse, look up, mark, count.
//!
//! One file per program, named after it, as the packet travels:
//! - [`pod_classifier`]: tc ingress of a pod's host-side veth; stamps the encrypt mark.
//! - [`egress_guard`]: tc egress of the uplink; drops what would leave unencrypted.
//! - [`ingress_guard`]: XDP (`ingress_guard`) or tc ingress (`ingress_tc`) of the uplink; drops
//!   plaintext from peers' pods and ESP with a bad SPI.
//!
//! Policy (which CIDRs, which SPIs, which peers) lives in userspace and reaches the programs
//! only through the maps in [`maps`]. On the host the crate builds an empty binary so that a
//! workspace-wide `cargo clippy` works; the real build is `cargo xtask build-ebpf`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod egress_guard;
#[cfg(target_arch = "bpf")]
mod ingress_guard;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod pod_classifier;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

/// Programs attached with `tc` carry this license so they may use GPL-only helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
