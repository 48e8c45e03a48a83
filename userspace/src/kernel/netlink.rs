//! One place that opens the kernel's netlink sockets and counts what is written through them.
//!
//! Reconciling must be provably idempotent ("the same desired state twice makes zero kernel
//! changes"), so every write to the kernel goes through a [`Netlink`] and bumps its counter.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

/// Handles to the route and xfrm netlink families, with a count of writes made.
pub struct Netlink {
    /// rtnetlink: links, addresses, routes, rules.
    pub route: rtnetlink::Handle,
    /// xfrm: SAs and policies.
    pub xfrm: xfrmnetlink::Handle,
    writes: AtomicU64,
}

impl Netlink {
    /// Opens both sockets in the calling thread's network namespace and spawns their
    /// connection tasks on the current tokio runtime.
    pub fn connect() -> io::Result<Netlink> {
        let (route_conn, route, _) = rtnetlink::new_connection()?;
        tokio::spawn(route_conn);
        let (xfrm_conn, xfrm, _) = xfrmnetlink::new_connection()?;
        tokio::spawn(xfrm_conn);
        Ok(Netlink {
            route,
            xfrm,
            writes: AtomicU64::new(0),
        })
    }

    /// Records one write (add, replace or delete) sent to the kernel.
    pub fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes sent so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
