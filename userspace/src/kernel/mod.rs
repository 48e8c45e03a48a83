//! The kernel objects xsteer owns, as plain values that can be listed, compared and written:
//! xfrm SAs and policies ([`xfrm`]), the encrypt rule and the pod routes ([`routing`]), all
//! through one pair of netlink sockets ([`Netlink`]); and the NAT keepalive that opens a path
//! through a NAT at once ([`nat`]).
//!
//! Nothing here decides what should exist; the reconcile does. Each module recognises xsteer's
//! own objects by a mark of ownership (a reqid, a priority, a protocol number) and never touches
//! anything else.

pub mod events;
pub mod nat;
mod netlink;
pub mod routing;
pub mod xfrm;

pub use netlink::Netlink;
