//! Opening a NAT's mapping the moment a path through it is set up.
//!
//! A node behind NAT is reachable only through a mapping its own traffic opened. The kernel
//! keeps mappings open with keepalives on SAs that have been idle for their interval, but a
//! fresh SA sends its first one only after that interval (seen in the VM's 6.12), so a peer
//! that sends first finds no mapping for up to 20 s. The agent therefore sends one keepalive
//! itself (RFC 3948's one byte, 0xFF) from the node's ESP-in-UDP port to each peer it has just
//! installed an OUT SA towards; the peer's guard drops it. The socket lives for those sends
//! only: nothing listens on the port (the ingress guard strips ESP in UDP before any socket).

use std::{
    io,
    net::{SocketAddr, UdpSocket},
};

/// The payload of a NAT keepalive.
const KEEPALIVE: [u8; 1] = [0xFF];

/// Sends one NAT keepalive from `from` (the node's IP and ESP-in-UDP port) to each of `to`;
/// stops at the first failure.
pub fn open_mappings(from: SocketAddr, to: &[SocketAddr]) -> io::Result<()> {
    let socket = UdpSocket::bind(from)?;
    for peer in to {
        socket.send_to(&KEEPALIVE, peer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;

    #[test]
    fn each_peer_gets_one_byte_0xff_from_the_nodes_port() {
        let peers: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
            .collect();
        let to: Vec<SocketAddr> = peers.iter().map(|s| s.local_addr().unwrap()).collect();
        // A free port for `from`, released before the call binds it again.
        let from = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        open_mappings(from, &to).unwrap();
        for peer in &peers {
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 16];
            let (n, sender) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], sender), (&KEEPALIVE[..], from));
        }
    }
}
