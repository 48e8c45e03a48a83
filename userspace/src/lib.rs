//! xsteer: an eBPF-accelerated encrypt-steering dataplane for Kubernetes.
//!
//! tc and XDP programs stamp skb marks on pod traffic bound for other nodes; the kernel's xfrm
//! policies and policy routing select on those marks and encrypt with IPsec ESP. This crate is
//! the userspace side: it loads the programs and manages what they read.
//!
//! The modules, from the ground up (docs/architecture.md draws them):
//! - values and rules: [`cidr`], [`keys`], [`protocol`], and [`durable`] files;
//! - what is read: [`config`] (the file), [`state`] (the state directory), [`nodes`] (node
//!   records), put together by [`inputs`] into a [`view`];
//! - what is written: [`kernel`] (xfrm, routing) and [`dataplane`] (the eBPF object, its maps and
//!   links), planned and written by [`reconcile`] and [`apply`];
//! - what runs: [`agent`], the one-shot commands [`status`], [`uninstall`], [`wireshark`],
//!   [`foreign`] (`peer export`) and [`lab`], and the chained CNI plugin [`cni`].

pub mod agent;
pub mod apply;
pub mod cidr;
pub mod cni;
pub mod config;
pub mod dataplane;
pub mod durable;
pub mod foreign;
pub mod inputs;
pub mod kernel;
pub mod keys;
pub mod lab;
pub mod nodes;
pub mod protocol;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod uninstall;
pub mod view;
pub mod watch;
pub mod wireshark;
