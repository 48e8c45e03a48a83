//! Constants and `#[repr(C)]` types shared by xsteer's eBPF programs and its userspace agent.
//!
//! Both sides must agree byte for byte on the skb mark layout, the names of the pinned maps and
//! programs, and the layout of every map key and value. They are defined here, once, in a
//! `no_std` crate that the eBPF programs build for `bpfel-unknown-none` and the agent builds with
//! the `user` feature.
#![no_std]

pub mod counters;
pub mod maps;
pub mod mark;
pub mod programs;
pub mod spi;
