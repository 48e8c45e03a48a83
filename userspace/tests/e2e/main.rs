//! End-to-end tests that need a kernel with ESP: they run inside the VM bed, booted once for all
//! of them by `cargo xtask test` (`--include-ignored --test-threads=1`). On the host they are
//! ignored: its kernel has no ESP.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

#[path = "../lab_pod/mod.rs"]
mod lab_pod;

mod agent;
mod apply_tunnel;
mod cluster;
mod cni;
mod esn;
mod esp_smoke;
mod fail_closed;
mod guards;
mod interop;
mod ipv6;
mod lab;
mod labs;
mod nat;
mod podman;
mod records;
mod rekey;
mod rotation;
mod streams;
mod wire;
mod wireshark;
