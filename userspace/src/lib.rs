//! xsteer: an eBPF-accelerated encrypt-steering dataplane for Kubernetes.
//!
//! tc and XDP programs stamp skb marks on pod traffic bound for other nodes; the kernel's xfrm
//! policies and policy routing select on those marks and encrypt with IPsec ESP. This crate is
//! the userspace side: it loads the programs and manages what they read.

pub mod agent;
pub mod apply;
pub mod cidr;
pub mod config;
pub mod dataplane;
pub mod epochs;
pub mod keys;
pub mod lab;
pub mod ledger;
pub mod netlink;
pub mod nodes;
pub mod reconcile;
pub mod retired;
pub mod routing;
mod state_file;
pub mod status;
pub mod uninstall;
pub mod wireshark;
pub mod xfrm;
