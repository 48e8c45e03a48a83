//! Captures what a node puts on the wire: the lab's AF_PACKET capture on its wire-side interface,
//! which keeps the frames it sends (not the ones it receives: those show decrypted on ingress
//! too).

pub use xsteer::lab::capture::Packet;

use crate::support::Netns;

/// A running capture of the frames sent out of one interface.
pub struct Capture(xsteer::lab::capture::Capture);

impl Capture {
    /// Starts capturing what `ifname` in `netns` sends.
    pub fn start(netns: &Netns, ifname: &'static str) -> Capture {
        Capture(
            xsteer::lab::capture::Capture::start(&netns.name, ifname).expect("opening the capture"),
        )
    }

    /// Every outgoing IPv4 packet captured since the last call.
    pub fn take(&self) -> Vec<Packet> {
        self.0.take().expect("reading the capture")
    }
}
