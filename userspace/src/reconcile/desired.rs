//! The kernel state that a node's view, its keys and the local network call for.
//!
//! Per peer R, per key generation g in the key file, and per pairing of the two nodes' epochs
//! (one each, two while a node re-keys), an SA set each way (docs/marks.md):
//! - OUT local→R: a shared SA that any CPU may use and, with per-CPU SAs, one per CPU, each
//!   with its own SPI and key; the OUT policies' templates name the set in use by its reqid;
//! - IN R→local: one SA for each SA R sends on (as many per-CPU ones as its record says),
//!   found by SPI alone (the wire SPI names the sender, so it is unique per receiver);
//! - the set's shared SPI in `peer_spis`, and R's CPU slots, so the ingress guard accepts them.
//!
//! Per peer and generation: an OUT policy per R pod CIDR with that mark and a tunnel template
//! local→R that names the OUT set in use ([`sending_epochs`]).
//!
//! Per peer, whatever the generation:
//! - IN and FWD policies that require ESP from R for traffic from R's pods and from R's node
//!   IP to local pods, and an IN policy for R's pods to this node's IP;
//! - OUT policies by destination alone, below the marked ones, to R's pod CIDRs and (from local
//!   pods) to R's node IP, naming the SA in use: so that what the classifier never sees — the
//!   node's own packets and ICMP errors, Service traffic after DNAT — is encrypted too;
//! - a route per R pod CIDR in xsteer's table with the MTU left by the costliest generation's
//!   ESP overhead, R in `peer_nodes`, and R's CIDRs in `remote_pod_cidrs` with the generation
//!   R can receive.
//!
//! Once per node: the catch-all block policy, the encrypt rule, the local pod CIDR, and the
//! cluster's pod space for the guards.
//!
//! In a dual-stack cluster the peer's IPv6 pod CIDRs get the same policies, routes and map
//! entries, in the same tunnels: an SA carries both families (see
//! [`crate::kernel::xfrm::add_state`]), so IPv6 needs no SA, SPI or key of its own, and no two
//! SAs ever share a key. The block policy and the encrypt rule then exist for IPv6 too. The
//! tunnels join the node IPs, IPv4 or IPv6 (then with the IPv6 outer header's MTU, and routes
//! by the tunnel's next hop only for pod CIDRs of its family).

use std::{collections::BTreeMap, net::IpAddr};

use xsteer_common::{
    maps::{LocalPodCidr, PeerNode, RemotePodCidr},
    mark,
};

use super::{
    mtu::{EspTransform, inner_mtu},
    plan::Snapshot,
};
use crate::{
    cidr::{IpCidr, IpFamily},
    dataplane::spi_owner,
    kernel::{
        routing::{EncryptRule, NextHop, PodRoute, Uplink},
        xfrm::{
            BLOCK_POLICY_PRIORITY, Cipher, Crypto, Direction, EspInUdp, Mark, PEER_POLICY_PRIORITY,
            Policy, PolicyAction, State, UNMARKED_POLICY_PRIORITY, set_reqid,
        },
    },
    keys::{Algorithm, DeriveError, Generation, GenerationError, KeyFile, SaKey, SaKeyId},
    protocol::{cpu_spi, epochs, sending_epochs, sending_generation, wire_spi},
    view::View,
};

/// Bytes ESP in UDP adds to every packet: the UDP header.
const UDP_HEADER: u32 = 8;

/// What the network around the node looks like, as read from the kernel.
pub struct Surroundings<'a> {
    /// The uplink named in the config.
    pub uplink: &'a Uplink,
    /// How the main table reaches each peer's node IP.
    pub next_hops: &'a BTreeMap<IpAddr, NextHop>,
    /// Priority of the encrypt rule.
    pub rule_priority: u32,
    /// The cipher the kernel offers: with [`Cipher::CbcHmacSha256`], GCM generations are
    /// installed as cbc(aes)+hmac(sha256) with keys derived for that (see docs/keys.md).
    pub cipher: Cipher,
    /// Whether SAs get 64-bit extended sequence numbers.
    pub esn: bool,
    /// Whether the kernel binds outbound SAs to CPUs: without, the node sends on one SA per
    /// set whatever its config asks for.
    pub per_cpu: bool,
    /// Seconds between the kernel's NAT keepalives on SAs that send ESP in UDP; 0 where the
    /// kernel has none (before Linux 6.11).
    pub nat_keepalive_secs: u32,
}

/// Why the desired state cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The key file's generations do not say which is newest.
    #[error(transparent)]
    Generations(#[from] GenerationError),
    /// A key could not be derived.
    #[error(transparent)]
    Derive(#[from] DeriveError),
    /// No route to a peer's node IP was read.
    #[error("no route to peer {name} at {ip}")]
    NoRoute {
        /// The peer's name.
        name: String,
        /// Its node IP.
        ip: IpAddr,
    },
}

fn encrypt_mark(generation: Generation, node_id: u16) -> Mark {
    Mark {
        value: mark::encrypt(generation.get(), node_id),
        mask: mark::OWNED_MASK,
    }
}

fn crypto(key: SaKey) -> Crypto {
    match key {
        SaKey::Gcm { key, icv_bits } => Crypto::Gcm {
            key: key.into_secret(),
            icv_bits: u32::from(icv_bits),
        },
        SaKey::CbcHmacSha256 { enc, auth } => Crypto::CbcHmacSha256 {
            enc_key: enc.into_secret(),
            auth_key: auth.into_secret(),
        },
    }
}

fn transform(algorithm: Algorithm) -> EspTransform {
    match algorithm {
        Algorithm::Gcm { icv_bits, .. } => EspTransform::Gcm {
            icv_bytes: u32::from(icv_bits) / 8,
        },
        Algorithm::CbcHmacSha256 { .. } => EspTransform::CbcHmacSha256,
    }
}

/// Computes everything xsteer should own in the kernel.
pub fn desired(
    view: &View,
    keys: &KeyFile,
    around: &Surroundings<'_>,
) -> Result<Snapshot, DesiredError> {
    let local = &view.node;
    // A key file that does not say which generation is newest installs nothing.
    keys.newest()?;
    let cbc_fallback = around.cipher == Cipher::CbcHmacSha256;
    // Any generation in service may carry a peer's traffic (an older one until the peer has
    // the newest), so the routes take the smallest MTU of them all: it shrinks as soon as a
    // generation with more overhead is installed, and grows only once the last one is gone.
    // ESP in UDP takes 8 bytes more of every packet.
    let route_mtu = |udp: bool| {
        let outer_mtu = around.uplink.mtu - if udp { UDP_HEADER } else { 0 };
        keys.generations()
            .iter()
            .map(|g| {
                let esp = if cbc_fallback {
                    EspTransform::CbcHmacSha256
                } else {
                    transform(g.algorithm())
                };
                inner_mtu(outer_mtu, esp, IpFamily::of(local.ip))
            })
            .min()
            .unwrap_or(outer_mtu)
    };
    let mut s = Snapshot::default();
    // Per-CPU SAs towards every peer, if the config asks and the kernel can.
    let local_cpus = if around.per_cpu { local.per_cpu_sas } else { 0 };

    let dual_stack = !view.cluster_cidrs_v6.is_empty();
    let families: &[(IpFamily, IpCidr)] = if dual_stack {
        &[
            (IpFamily::V4, IpCidr::ANY_V4),
            (IpFamily::V6, IpCidr::ANY_V6),
        ]
    } else {
        &[(IpFamily::V4, IpCidr::ANY_V4)]
    };
    for &(family, any) in families {
        let block = Policy {
            direction: Direction::Out,
            src: any,
            dst: any,
            mark: Some(Mark {
                value: mark::MAGIC_ENCRYPT,
                mask: mark::MAGIC_MASK,
            }),
            priority: BLOCK_POLICY_PRIORITY,
            action: PolicyAction::Block,
        };
        s.policies.insert(block.key(), block);
        s.rules.insert(EncryptRule {
            family,
            priority: around.rule_priority,
            table: view.route_table,
        });
    }
    s.maps.udp_encap_port = local.encap.map(|encap| encap.port);
    s.maps.cluster_pod_cidrs = view
        .cluster_cidrs
        .iter()
        .map(|&c| c.into())
        .chain(view.cluster_cidrs_v6.iter().map(|&c| c.into()))
        .collect();
    let local_pods: Vec<IpCidr> = std::iter::once(local.pod_cidr.into())
        .chain(local.pod_cidr_v6.map(IpCidr::from))
        .collect();
    for &cidr in &local_pods {
        s.maps.local_pod_cidrs.insert(
            cidr,
            LocalPodCidr {
                node_id: local.id,
                flags: 0,
            },
        );
    }

    for peer in &view.peers {
        // The peer's node IP names it inside tunnels and in key derivation; ESP itself goes
        // to `outer`, its NAT's address when the pair speaks ESP in UDP.
        let (outer, peer_port) = peer.path(local);
        // Keepalives only from behind a NAT, which they keep open.
        let encap = local.encap.zip(peer_port).map(|(mine, dport)| EspInUdp {
            sport: mine.port,
            dport,
            keepalive_secs: match mine.behind_nat(local.ip) {
                true => around.nat_keepalive_secs,
                false => 0,
            },
        });
        let route_mtu = route_mtu(encap.is_some());
        // ESN only when both ends take it: each end's IN SA must number as the other's OUT SA.
        let esn = around.esn && peer.esn;
        let hop = around
            .next_hops
            .get(&outer)
            .ok_or_else(|| DesiredError::NoRoute {
                name: peer.name.clone(),
                ip: outer,
            })?;
        s.maps.peer_nodes.insert(
            outer,
            PeerNode {
                node_id: peer.id,
                flags: 0,
            },
        );
        let tunnel_family = IpFamily::of(outer);
        let sending = sending_generation(keys, peer.generations.as_deref())?;
        let peer_pods: Vec<IpCidr> = peer
            .pod_cidrs
            .iter()
            .map(|&c| c.into())
            .chain(peer.pod_cidrs_v6.iter().map(|&c| c.into()))
            .collect();
        let from_peer = PolicyAction::Tunnel {
            src: outer,
            dst: local.ip,
            reqid: 0,
        };
        // The guard accepts the peer's shared SAs and its per-CPU ones.
        if peer.per_cpu_sas > 0 {
            s.maps
                .peer_per_cpu_sas
                .insert(peer.id, u16::from(peer.per_cpu_sas));
        }
        let mut require = |direction, src, dst| {
            let p = Policy {
                direction,
                src,
                dst,
                mark: None,
                priority: PEER_POLICY_PRIORITY,
                action: from_peer,
            };
            s.policies.insert(p.key(), p);
        };
        // What the peer's node itself sends to local pods (its ICMP errors, host processes)
        // arrives in the tunnel with its node IP inside.
        // A selector's two sides are of one family: each peer CIDR pairs with this node's pod
        // CIDR of its family, if it has one.
        let local_pods_of = |family| local_pods.iter().find(|c| c.family() == family).copied();
        let peer_host = host(peer.ip);
        if let Some(local_pods) = local_pods_of(tunnel_family) {
            for direction in [Direction::In, Direction::Fwd] {
                require(direction, peer_host, local_pods);
            }
        }
        for &cidr in &peer_pods {
            if let Some(local_pods) = local_pods_of(cidr.family()) {
                for direction in [Direction::In, Direction::Fwd] {
                    require(direction, cidr, local_pods);
                }
            }
            // The peer's pods to this node's own address (replies to its host, hostNetwork).
            if cidr.family() == tunnel_family {
                require(Direction::In, cidr, host(local.ip));
            }
        }
        for &cidr in &peer_pods {
            // A route of the tunnel's family goes by the tunnel's next hop; one of the other
            // family names none, and the tunnel's own route picks it.
            let via = (cidr.family() == tunnel_family).then(|| hop.gateway.unwrap_or(outer));
            s.routes.insert(PodRoute {
                dst: cidr,
                via,
                oif: hop.oif,
                mtu: route_mtu,
            });
            // Marking starts only with a generation the peer can receive; with none (it has not
            // caught up with our key file at all) its pods stay unmarked and the egress guard
            // holds their traffic back.
            if let Some(spi) = sending {
                s.maps.remote_pod_cidrs.insert(
                    cidr,
                    RemotePodCidr {
                        node_id: peer.id,
                        generation: spi.get(),
                        flags: 0,
                    },
                );
            }
        }

        let (send_local, send_peer) = sending_epochs(local, peer);
        for generation in keys.generations() {
            let g = generation.generation();
            let derive = |id: &SaKeyId| {
                if cbc_fallback {
                    generation.derive_cbc(id)
                } else {
                    generation.derive(id)
                }
            };
            // Every pairing of the two nodes' epochs has its SAs, so that either side can
            // re-key while the other does too.
            for local_epoch in epochs(local.epoch, local.next_epoch) {
                for peer_epoch in epochs(peer.epoch, peer.next_epoch) {
                    // Node IPs, not `outer`: both ends know both, NAT or not.
                    let out_id = |cpu_slot| SaKeyId {
                        src: local.ip,
                        dst: peer.ip,
                        generation: g,
                        src_epoch: local_epoch,
                        dst_epoch: peer_epoch,
                        cpu_slot,
                    };
                    // The set's shared SA, then one per CPU. No mark: the OUT policies name
                    // the set by reqid, and the one that selects by destination alone must be
                    // able to use it for unmarked packets too.
                    let out_set = wire_spi(local.id, g, &local_epoch, &peer_epoch);
                    for slot in 0..=local_cpus {
                        let out = State {
                            src: local.ip,
                            dst: outer,
                            spi: cpu_spi(out_set, slot),
                            mark: None,
                            crypto: crypto(derive(&out_id(slot))?),
                            esn,
                            cpu: slot.checked_sub(1).map(u32::from),
                            encap,
                        };
                        s.states.insert(out.key(), out);
                    }
                    // An IN SA for each SA the peer sends on, by SPI alone.
                    let in_set = wire_spi(peer.id, g, &peer_epoch, &local_epoch);
                    for slot in 0..=peer.per_cpu_sas {
                        // Plain ESP by the time xfrm sees it: the guard strips the UDP.
                        let inbound = State {
                            src: outer,
                            dst: local.ip,
                            spi: cpu_spi(in_set, slot),
                            mark: None,
                            crypto: crypto(derive(&out_id(slot).reversed())?),
                            esn,
                            cpu: None,
                            encap: None,
                        };
                        s.states.insert(inbound.key(), inbound);
                    }
                    s.maps.peer_spis.insert((spi_owner(outer), in_set));
                }
            }
            // The OUT SAs of all pairings share one mark: the policy's template names the set
            // in use by reqid, so moving over to a re-keyed set is one atomic policy update.
            let to_peer = PolicyAction::Tunnel {
                src: local.ip,
                dst: outer,
                reqid: set_reqid(wire_spi(local.id, g, &send_local, &send_peer)),
            };
            for &cidr in &peer_pods {
                let p = Policy {
                    direction: Direction::Out,
                    src: any_of(cidr),
                    dst: cidr,
                    mark: Some(encrypt_mark(g, peer.id)),
                    priority: PEER_POLICY_PRIORITY,
                    action: to_peer,
                };
                s.policies.insert(p.key(), p);
            }
        }
        // Whatever the classifier did not mark — the node's own packets and ICMP errors, a
        // Service's traffic after kube-proxy's DNAT, pod replies to a peer's host — still goes
        // into the tunnel: OUT policies by destination alone, naming the SA in use, below the
        // marked ones. A peer that shares no generation gets none: its traffic is refused by
        // the guards instead.
        if let Some(g) = sending {
            let to_peer = PolicyAction::Tunnel {
                src: local.ip,
                dst: outer,
                reqid: set_reqid(wire_spi(local.id, g, &send_local, &send_peer)),
            };
            let selectors = peer_pods
                .iter()
                .map(|&cidr| (any_of(cidr), cidr))
                .chain(local_pods_of(tunnel_family).map(|c| (c, host(peer.ip))));
            for (src, dst) in selectors {
                let p = Policy {
                    direction: Direction::Out,
                    src,
                    dst,
                    mark: None,
                    priority: UNMARKED_POLICY_PRIORITY,
                    action: to_peer,
                };
                s.policies.insert(p.key(), p);
            }
        }
    }
    Ok(s)
}

/// The /32 or /128 of one address.
fn host(ip: IpAddr) -> IpCidr {
    IpCidr::host(ip)
}

/// Every address of the family of `cidr`.
fn any_of(cidr: IpCidr) -> IpCidr {
    match cidr {
        IpCidr::V4(_) => IpCidr::ANY_V4,
        IpCidr::V6(_) => IpCidr::ANY_V6,
    }
}

/// Desired states for the unit tests of other modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// The desired state of `view` with `keys`, on a 1500-byte uplink with every peer on link.
    pub fn desired_for(view: &View, keys: &KeyFile, cipher: Cipher) -> Snapshot {
        let uplink = Uplink {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
        };
        let on_link = NextHop {
            oif: 2,
            gateway: None,
        };
        let next_hops = view
            .peers
            .iter()
            .map(|p| (p.path(&view.node).0, on_link))
            .collect();
        let around = Surroundings {
            uplink: &uplink,
            next_hops: &next_hops,
            rule_priority: 100,
            cipher,
            esn: true,
            per_cpu: true,
            nat_keepalive_secs: 20,
        };
        desired(view, keys, &around).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::net::Ipv4Addr;

    use super::*;

    use crate::{
        config::LocalEncap,
        keys::Epoch,
        view::{Peer, fixtures::two_nodes},
    };

    use super::fixtures::desired_for;

    fn g(n: u8) -> Generation {
        Generation::new(n).unwrap()
    }

    fn snapshot(cipher: Cipher) -> Snapshot {
        let view = two_nodes();
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        desired_for(&view, &keys, cipher)
    }

    /// Node a behind a NAT (203.0.113.1:4501 reaches it) and node b, both with ESP in UDP,
    /// each as the other's record shows it: every SA one sends on is the other's IN SA under
    /// the same SPI and key (derived from the node IPs, which neither NAT changes); what goes
    /// out is ESP in UDP to where the peer receives it, what comes in is plain ESP (the guard
    /// stripped the UDP) from where the peer's ESP appears to come from.
    #[test]
    fn a_pair_through_a_nat_sends_esp_in_udp_that_the_other_end_takes_as_its_own() {
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let a_ip: IpAddr = Ipv4Addr::new(192, 168, 0, 1).into();
        let b_ip: IpAddr = Ipv4Addr::new(192, 168, 0, 2).into();
        let a_public: std::net::SocketAddr = "203.0.113.1:4501".parse().unwrap();
        let b_public: std::net::SocketAddr = "192.168.0.2:4500".parse().unwrap();
        let mut at_a = two_nodes();
        at_a.node.encap = Some(LocalEncap {
            port: 4500,
            public: a_public,
        });
        at_a.peers[0].esp_in_udp = Some(b_public);
        let mut at_b = at_a.clone();
        std::mem::swap(&mut at_b.node.name, &mut at_b.peers[0].name);
        std::mem::swap(&mut at_b.node.id, &mut at_b.peers[0].id);
        std::mem::swap(&mut at_b.node.epoch, &mut at_b.peers[0].epoch);
        at_b.node.ip = b_ip;
        at_b.peers[0].ip = a_ip;
        at_b.node.pod_cidr = at_a.peers[0].pod_cidrs[0];
        at_b.peers[0].pod_cidrs = vec![at_a.node.pod_cidr];
        at_b.node.encap = Some(LocalEncap {
            port: 4500,
            public: b_public,
        });
        at_b.peers[0].esp_in_udp = Some(a_public);

        let a = desired_for(&at_a, &keys, Cipher::Gcm);
        let b = desired_for(&at_b, &keys, Cipher::Gcm);
        let sas = |s: &Snapshot, out_of: IpAddr| -> Vec<State> {
            s.states
                .values()
                .filter(|sa| sa.src == out_of)
                .cloned()
                .collect()
        };
        let (a_out, b_out) = (sas(&a, a_ip), sas(&b, b_ip));
        assert_eq!((a_out.len(), b_out.len()), (1, 1));
        let a_in: Vec<State> = a
            .states
            .values()
            .filter(|sa| sa.dst == a_ip)
            .cloned()
            .collect();
        let b_in: Vec<State> = b
            .states
            .values()
            .filter(|sa| sa.dst == b_ip)
            .cloned()
            .collect();
        let a_encap = EspInUdp {
            sport: 4500,
            dport: 4500,
            keepalive_secs: 20,
        };
        // a sends from behind the NAT to b's node IP; b sees it come from the NAT.
        assert_eq!((a_out[0].dst, a_out[0].encap), (b_ip, Some(a_encap)));
        assert_eq!(b_in[0].src, a_public.ip());
        assert_eq!(b_in[0].encap, None);
        assert_eq!(
            (b_in[0].spi, &b_in[0].crypto),
            (a_out[0].spi, &a_out[0].crypto)
        );
        // b sends to the NAT's address and port; a takes it as from b.
        // b is not behind a NAT: it sends no keepalives.
        let b_encap = EspInUdp {
            dport: 4501,
            keepalive_secs: 0,
            ..a_encap
        };
        assert_eq!(
            (b_out[0].dst, b_out[0].encap),
            (a_public.ip(), Some(b_encap))
        );
        assert_eq!((a_in[0].src, a_in[0].encap), (b_ip, None));
        assert_eq!(
            (a_in[0].spi, &a_in[0].crypto),
            (b_out[0].spi, &b_out[0].crypto)
        );
        // b's guard knows a by the NAT's address, and its policies tunnel to it.
        assert!(b.maps.peer_nodes.contains_key(&a_public.ip()));
        assert!(
            b.maps
                .peer_spis
                .iter()
                .all(|(ip, _)| IpAddr::from(*ip) == a_public.ip())
        );
        for p in b.policies.values() {
            if let PolicyAction::Tunnel { src, dst, .. } = p.action {
                assert!(
                    (src, dst) == (a_public.ip(), b_ip) || (src, dst) == (b_ip, a_public.ip()),
                    "{p}"
                );
            }
        }
        // Both decapsulate on their port; 8 bytes of UDP come off the routes' MTU.
        assert_eq!(
            (a.maps.udp_encap_port, b.maps.udp_encap_port),
            (Some(4500), Some(4500))
        );
        for route in a.routes.iter().chain(&b.routes) {
            assert_eq!(route.mtu, 1438, "{route:?}");
        }

        // With b's ESP in UDP off, a's record reader sees no endpoint for b: the pair falls
        // back to plain ESP between node IPs, both ways, and a's port stays open for others.
        at_a.peers[0].esp_in_udp = None;
        let a = desired_for(&at_a, &keys, Cipher::Gcm);
        let a_out = sas(&a, a_ip);
        assert_eq!((a_out[0].dst, a_out[0].encap), (b_ip, None));
        assert_eq!(a.maps.udp_encap_port, Some(4500));
        assert!(a.routes.iter().all(|route| route.mtu == 1446));
    }

    /// A peer without ESN gets 32-bit SAs both ways; a peer with it keeps ESN.
    #[test]
    fn esn_is_used_with_a_peer_only_when_both_ends_take_it() {
        let mut view = two_nodes();
        let mut without = view.peers[0].clone();
        without.name = "c".into();
        without.id = 3;
        without.ip = Ipv4Addr::new(192, 168, 0, 3).into();
        without.pod_cidrs = vec!["10.244.3.0/24".parse().unwrap()];
        without.esn = false;
        view.peers.push(without);
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let want = desired_for(&view, &keys, Cipher::Gcm);
        let c: IpAddr = Ipv4Addr::new(192, 168, 0, 3).into();
        for sa in want.states.values() {
            let with_c = sa.src == c || sa.dst == c;
            assert_eq!(sa.esn, !with_c, "{sa}");
        }
        assert_eq!(want.states.len(), 4);
    }

    /// A kernel that cannot bind SAs to CPUs gets the shared SAs only, whatever the config
    /// asks; the peer's per-CPU SAs still get their IN SAs and their place in the guard.
    #[test]
    fn without_kernel_support_a_node_sends_on_shared_sas_only() {
        let mut view = two_nodes();
        view.node.per_cpu_sas = 4;
        view.peers[0].per_cpu_sas = 2;
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let uplink = Uplink {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
        };
        let next_hops = view
            .peers
            .iter()
            .map(|p| {
                let hop = NextHop {
                    oif: 2,
                    gateway: None,
                };
                (p.ip, hop)
            })
            .collect();
        let around = Surroundings {
            uplink: &uplink,
            next_hops: &next_hops,
            rule_priority: 100,
            cipher: Cipher::Gcm,
            esn: true,
            per_cpu: false,
            nat_keepalive_secs: 0,
        };
        let want = desired(&view, &keys, &around).unwrap();
        let out: Vec<&State> = want
            .states
            .values()
            .filter(|s| s.src == view.node.ip)
            .collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].cpu, None);
        let inbound = want.states.values().filter(|s| s.dst == view.node.ip);
        assert_eq!(
            inbound.count(),
            3,
            "the peer's shared SA and its two per-CPU ones"
        );
        assert_eq!(want.maps.peer_per_cpu_sas, BTreeMap::from([(2, 2)]));
    }

    /// Every SA of a three-node cluster, each node re-keying and two generations in service,
    /// with per-CPU SAs in different numbers: no receiver ever has two SAs under one SPI, every
    /// OUT SA is its receiver's IN SA with the same SPI and key, and no key is on two SAs.
    #[test]
    fn no_two_sas_of_a_cluster_share_an_spi_or_a_key() {
        let keys = KeyFile::parse(
            "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
             4 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n",
        )
        .unwrap();
        let template = two_nodes();
        let ids: [u16; 3] = [1, 2, 3];
        let cpus: [u8; 3] = [3, 0, 2];
        let ip = |id: u16| IpAddr::from(Ipv4Addr::new(192, 168, 0, id as u8));
        let cidr = |id: u16| format!("10.244.{id}.0/24").parse().unwrap();
        let epochs: Vec<(Epoch, Epoch)> = ids
            .iter()
            .map(|_| {
                let current = Epoch::random().unwrap();
                (current, Epoch::random_after(&current).unwrap())
            })
            .collect();
        // (receiver, SPI) -> (sender, key fingerprint), over every node's SAs.
        let mut seen: BTreeMap<(IpAddr, u32), (IpAddr, String)> = BTreeMap::new();
        let mut installed = 0;
        for (i, &id) in ids.iter().enumerate() {
            let mut view = template.clone();
            view.node.id = id;
            view.node.ip = ip(id);
            view.node.pod_cidr = cidr(id);
            (view.node.epoch, view.node.next_epoch) = (epochs[i].0, Some(epochs[i].1));
            view.node.per_cpu_sas = cpus[i];
            view.peers = (0..ids.len())
                .filter(|&j| j != i)
                .map(|j| Peer {
                    name: format!("n{}", ids[j]),
                    ip: ip(ids[j]),
                    id: ids[j],
                    pod_cidrs: vec![cidr(ids[j])],
                    epoch: epochs[j].0,
                    next_epoch: Some(epochs[j].1),
                    per_cpu_sas: cpus[j],
                    ..template.peers[0].clone()
                })
                .collect();
            let want = desired_for(&view, &keys, Cipher::Gcm);
            for (j, &peer) in ids.iter().enumerate().filter(|&(j, _)| j != i) {
                // Two generations, four pairings, a shared SA and the sender's per-CPU ones.
                let from_peer = want.states.values().filter(|s| s.src == ip(peer)).count();
                assert_eq!(from_peer, 2 * 4 * (1 + usize::from(cpus[j])));
                // And the same towards it from this node, each per-CPU SA bound to its CPU.
                let to_peer: Vec<Option<u32>> = want
                    .states
                    .values()
                    .filter(|s| s.dst == ip(peer))
                    .map(|s| s.cpu)
                    .collect();
                assert_eq!(to_peer.len(), 2 * 4 * (1 + usize::from(cpus[i])));
                let bound: BTreeSet<Option<u32>> = to_peer.into_iter().collect();
                let want_cpus = std::iter::once(None).chain((0..u32::from(cpus[i])).map(Some));
                assert_eq!(bound, want_cpus.collect());
            }
            for state in want.states.values() {
                installed += 1;
                let key = state.crypto.fingerprint().to_string();
                match seen.get(&(state.dst, state.spi)) {
                    // The other end of the same SA: same sender, same key.
                    Some(other) => assert_eq!(other, &(state.src, key), "{state}"),
                    None => {
                        seen.insert((state.dst, state.spi), (state.src, key));
                    }
                }
            }
        }
        // Every SA is installed at both ends, and each is one of its own.
        assert_eq!(installed, 2 * seen.len());
        let distinct_keys: BTreeSet<&String> = seen.values().map(|(_, key)| key).collect();
        assert_eq!(distinct_keys.len(), seen.len(), "a key on two SAs");
        let spis_per_receiver = |r: u16| seen.keys().filter(|(dst, _)| *dst == ip(r)).count();
        // Receiver 1 hears from 2 (no per-CPU SAs) and 3 (two): 2 x 4 x (1 + 3).
        assert_eq!(spis_per_receiver(1), 8 * (1 + 3));
    }

    #[test]
    fn gcm_keys_fall_back_to_cbc_when_the_kernel_lacks_gcm() {
        let gcm = snapshot(Cipher::Gcm);
        let cbc = snapshot(Cipher::CbcHmacSha256);
        assert_eq!(gcm.states.len(), 2);
        assert!(
            gcm.states
                .values()
                .all(|s| matches!(s.crypto, Crypto::Gcm { .. }))
        );
        assert!(
            cbc.states
                .values()
                .all(|s| matches!(s.crypto, Crypto::CbcHmacSha256 { .. }))
        );
        // Same SAs otherwise: same SPIs, marks and policies.
        assert_eq!(
            gcm.states.keys().collect::<Vec<_>>(),
            cbc.states.keys().collect::<Vec<_>>()
        );
        assert_eq!(gcm.policies, cbc.policies);
        // The route MTU follows the transform: 1446 for GCM, 1438 for CBC+HMAC.
        let mtus = |s: &Snapshot| s.routes.iter().map(|r| r.mtu).collect::<Vec<_>>();
        assert_eq!((mtus(&gcm), mtus(&cbc)), (vec![1446], vec![1438]));
    }

    #[test]
    fn routes_take_the_mtu_of_the_costliest_generation_in_service() {
        let view = two_nodes();
        let mtu = |text: &str| {
            let keys = KeyFile::parse(text).unwrap();
            let s = desired_for(&view, &keys, Cipher::Gcm);
            s.routes.iter().map(|r| r.mtu).collect::<Vec<_>>()
        };
        let gcm = "3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n";
        let cbc = "4 hmac(sha256) 000102030405060708090a0b0c0d0e0f cbc(aes) 101112131415161718191a1b1c1d1e1f\n";
        assert_eq!(mtu(gcm), [1446]);
        // Rotating GCM to CBC: smaller at once, while the peer may still get GCM.
        assert_eq!(mtu(&format!("{gcm}{cbc}")), [1438]);
        // Rotating CBC to GCM: still the CBC MTU until the CBC generation is gone.
        let gcm5 = gcm.replacen('3', "5", 1);
        assert_eq!(mtu(&format!("{cbc}{gcm5}")), [1438]);
        assert_eq!(mtu(&gcm5), [1446]);
    }

    #[test]
    fn marking_waits_for_the_peer_to_advertise_the_newest_generation() {
        let keys = KeyFile::parse(
            "14 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n\
             15 rfc4106(gcm(aes)) 101112131415161718191a1b1c1d1e1f20212223 128\n\
             1 rfc4106(gcm(aes)) 202122232425262728292a2b2c2d2e2f30313233 128\n",
        )
        .unwrap();
        // In the desired state: the map says 15 until the peer advertises 1, while the SAs of
        // every generation are there all along.
        let mut view = two_nodes();
        view.peers[0].generations = Some(vec![g(14), g(15)]);
        let want = desired_for(&view, &keys, Cipher::Gcm);
        let spis: Vec<u8> = want
            .maps
            .remote_pod_cidrs
            .values()
            .map(|v| v.generation)
            .collect();
        assert_eq!(spis, [15]);
        assert_eq!(
            want.states.len(),
            6,
            "IN and OUT SAs of all three generations"
        );
    }

    #[test]
    fn a_rekey_installs_every_pairing_and_sends_under_the_new_epoch_once_acked() {
        let mut view = two_nodes();
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let out_spi = |s: &Snapshot| {
            let spis: Vec<_> = s
                .policies
                .values()
                .filter(|p| p.direction == Direction::Out && p.mark.is_some())
                .filter_map(|p| match p.action {
                    PolicyAction::Tunnel { reqid, .. } => Some(reqid),
                    PolicyAction::Block => None,
                })
                .collect();
            assert_eq!(spis.len(), 1, "one OUT policy: {spis:?}");
            spis[0]
        };
        let (a_old, b_old) = (view.node.epoch, view.peers[0].epoch);
        let before = desired_for(&view, &keys, Cipher::Gcm);
        assert_eq!(
            out_spi(&before),
            set_reqid(wire_spi(1, g(3), &a_old, &b_old))
        );

        // a re-keys: SAs of both a's epochs, still sent under the old one.
        let a_new = Epoch::random_after(&a_old).unwrap();
        view.node.next_epoch = Some(a_new);
        let rekeying = desired_for(&view, &keys, Cipher::Gcm);
        assert_eq!(
            rekeying.states.len(),
            4,
            "in and out under each of a's epochs"
        );
        assert!(rekeying.states.values().all(|s| s.esn));
        assert_eq!(out_spi(&rekeying), out_spi(&before));
        assert!(
            rekeying.maps.peer_spis.contains(&(
                Ipv4Addr::new(192, 168, 0, 2),
                wire_spi(2, g(3), &b_old, &a_new)
            )),
            "b may send under a's new epoch at once"
        );

        // b acks: the OUT policy names the new SA; b re-keys too: all four pairings.
        view.peers[0].acked_epoch = Some(a_new);
        let b_new = Epoch::random_after(&b_old).unwrap();
        view.peers[0].next_epoch = Some(b_new);
        let both = desired_for(&view, &keys, Cipher::Gcm);
        assert_eq!(both.states.len(), 8);
        assert_eq!(out_spi(&both), set_reqid(wire_spi(1, g(3), &a_new, &b_new)));
        let spis: BTreeSet<u32> = both.states.keys().map(|k| k.spi).collect();
        assert_eq!(spis.len(), 8, "no two SAs share an SPI");
        // The new SAs' keys differ from the old ones'.
        let fingerprints: BTreeSet<_> = both
            .states
            .values()
            .map(|s| s.crypto.fingerprint())
            .collect();
        assert_eq!(fingerprints.len(), 8);
    }

    #[test]
    fn what_the_classifier_never_sees_is_encrypted_by_destination() {
        let mut view = two_nodes();
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let want = desired_for(&view, &keys, Cipher::Gcm);
        let in_use = wire_spi(1, g(3), &view.node.epoch, &view.peers[0].epoch);
        let cidr = |c: &str| c.parse::<IpCidr>().unwrap();
        let unmarked: Vec<(IpCidr, IpCidr)> = want
            .policies
            .values()
            .filter(|p| p.priority == UNMARKED_POLICY_PRIORITY)
            .map(|p| {
                assert_eq!((p.direction, p.mark), (Direction::Out, None));
                assert_eq!(
                    p.action,
                    PolicyAction::Tunnel {
                        src: view.node.ip,
                        dst: view.peers[0].ip,
                        reqid: set_reqid(in_use)
                    }
                );
                (p.src, p.dst)
            })
            .collect();
        assert_eq!(
            unmarked,
            [
                (cidr("0.0.0.0/0"), cidr("10.244.2.0/24")),
                (cidr("10.244.1.0/24"), cidr("192.168.0.2/32"))
            ],
            "to b's pods from anywhere, to b's node from a's pods"
        );
        let required: Vec<(Direction, IpCidr, IpCidr)> = want
            .policies
            .values()
            .filter(|p| p.direction != Direction::Out)
            .map(|p| (p.direction, p.src, p.dst))
            .collect();
        for needed in [
            (Direction::In, cidr("10.244.2.0/24"), cidr("10.244.1.0/24")),
            (Direction::Fwd, cidr("10.244.2.0/24"), cidr("10.244.1.0/24")),
            (Direction::In, cidr("192.168.0.2/32"), cidr("10.244.1.0/24")),
            (
                Direction::Fwd,
                cidr("192.168.0.2/32"),
                cidr("10.244.1.0/24"),
            ),
            (Direction::In, cidr("10.244.2.0/24"), cidr("192.168.0.1/32")),
        ] {
            assert!(required.contains(&needed), "{needed:?} in {required:?}");
        }

        // A peer that shares no generation gets no unmarked policy: the guards refuse its
        // traffic instead.
        view.peers[0].generations = Some(vec![g(9)]);
        let want = desired_for(&view, &keys, Cipher::Gcm);
        assert!(
            want.policies
                .values()
                .all(|p| p.priority != UNMARKED_POLICY_PRIORITY)
        );
    }

    #[test]
    fn ipv6_pods_ride_the_ipv4_tunnels_with_their_own_rule_routes_and_maps() {
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let v4_only = desired_for(&two_nodes(), &keys, Cipher::Gcm);
        let mut view = two_nodes();
        let cidr = |c: &str| c.parse::<IpCidr>().unwrap();
        view.cluster_cidrs_v6 = vec!["fd00:10:244::/48".parse().unwrap()];
        view.node.pod_cidr_v6 = Some("fd00:10:244:1::/64".parse().unwrap());
        view.peers[0].pod_cidrs_v6 = vec!["fd00:10:244:2::/64".parse().unwrap()];
        let dual = desired_for(&view, &keys, Cipher::Gcm);

        // The same SAs: one SA carries both families, so no key is used twice.
        assert_eq!(dual.states, v4_only.states);
        // A rule and a block policy per family.
        let families: Vec<IpFamily> = dual.rules.iter().map(|r| r.family).collect();
        assert_eq!(families, [IpFamily::V4, IpFamily::V6]);
        let blocks: Vec<IpCidr> = dual
            .policies
            .values()
            .filter(|p| p.action == PolicyAction::Block)
            .map(|p| p.dst)
            .collect();
        assert_eq!(blocks, [IpCidr::ANY_V4, IpCidr::ANY_V6]);
        // The IPv6 pod CIDR gets a route with no gateway and the IPv4 route's MTU.
        let route6 = dual
            .routes
            .iter()
            .find(|r| r.dst == cidr("fd00:10:244:2::/64"))
            .expect("a route to b's IPv6 pods");
        assert_eq!((route6.via, route6.mtu), (None, 1446));
        // Its policies name the IPv4 tunnel, exactly as the IPv4 CIDR's do.
        let tunnel_of = |dst: IpCidr, priority: u32| {
            dual.policies
                .values()
                .find(|p| p.direction == Direction::Out && p.dst == dst && p.priority == priority)
                .map(|p| p.action)
        };
        for priority in [PEER_POLICY_PRIORITY, UNMARKED_POLICY_PRIORITY] {
            let v6 = tunnel_of(cidr("fd00:10:244:2::/64"), priority);
            assert!(v6.is_some(), "an OUT policy at {priority:#x}");
            assert_eq!(v6, tunnel_of(cidr("10.244.2.0/24"), priority));
        }
        for direction in [Direction::In, Direction::Fwd] {
            let required = dual.policies.values().any(|p| {
                (p.direction, p.src, p.dst)
                    == (
                        direction,
                        cidr("fd00:10:244:2::/64"),
                        cidr("fd00:10:244:1::/64"),
                    )
            });
            assert!(required, "{direction:?} from b's IPv6 pods to a's");
        }
        // The maps: both families of the pod space, of the local and of the remote CIDRs.
        assert_eq!(
            dual.maps.cluster_pod_cidrs,
            [cidr("10.244.0.0/16"), cidr("fd00:10:244::/48")]
        );
        assert!(
            dual.maps
                .local_pod_cidrs
                .contains_key(&cidr("fd00:10:244:1::/64"))
        );
        assert_eq!(
            dual.maps.remote_pod_cidrs.get(&cidr("fd00:10:244:2::/64")),
            v4_only.maps.remote_pod_cidrs.get(&cidr("10.244.2.0/24"))
        );
        // An IPv4-only node's state is what it was before IPv6 existed.
        assert_eq!(v4_only.rules.len(), 1);
        assert!(v4_only.policies.values().all(|p| !p.dst.is_ipv6()));
    }

    #[test]
    fn ipv6_node_ips_carry_both_families_in_ipv6_tunnels() {
        let keys =
            KeyFile::parse("3 rfc4106(gcm(aes)) 000102030405060708090a0b0c0d0e0f10111213 128\n")
                .unwrap();
        let (a, b): (IpAddr, IpAddr) = (
            "fd00:192:168::1".parse().unwrap(),
            "fd00:192:168::2".parse().unwrap(),
        );
        let mut view = two_nodes();
        view.node.ip = a;
        view.peers[0].ip = b;
        view.cluster_cidrs_v6 = vec!["fd00:10:244::/48".parse().unwrap()];
        view.node.pod_cidr_v6 = Some("fd00:10:244:1::/64".parse().unwrap());
        view.peers[0].pod_cidrs_v6 = vec!["fd00:10:244:2::/64".parse().unwrap()];
        let want = desired_for(&view, &keys, Cipher::Gcm);
        let cidr = |c: &str| c.parse::<IpCidr>().unwrap();

        // Two SAs between the IPv6 addresses, and the IPv4 view's SPIs.
        let v4 = desired_for(&two_nodes(), &keys, Cipher::Gcm);
        let endpoints: BTreeSet<(IpAddr, IpAddr, u32)> = want
            .states
            .values()
            .map(|s| (s.src, s.dst, s.spi))
            .collect();
        let spis: BTreeSet<u32> = v4.states.keys().map(|k| k.spi).collect();
        assert_eq!(endpoints.len(), 2);
        assert!(endpoints.iter().all(|&(src, dst, spi)| {
            spis.contains(&spi) && [src, dst].iter().all(IpAddr::is_ipv6)
        }));
        // Other keys than the IPv4 tunnels': the addresses are inputs, under their own tag.
        let fingerprints = |s: &Snapshot| -> BTreeSet<_> {
            s.states.values().map(|s| s.crypto.fingerprint()).collect()
        };
        assert!(fingerprints(&want).is_disjoint(&fingerprints(&v4)));
        // Every tunnel template is IPv6, whatever the selector's family.
        assert!(want.policies.values().all(|p| match p.action {
            PolicyAction::Tunnel { src, dst, .. } => src == a && dst == b || src == b && dst == a,
            PolicyAction::Block => true,
        }));
        // The peer's node address pairs with the local pod CIDR of its family.
        assert!(want.policies.values().any(|p| {
            (p.direction, p.src, p.dst)
                == (
                    Direction::Fwd,
                    cidr("fd00:192:168::2/128"),
                    cidr("fd00:10:244:1::/64"),
                )
        }));
        // Routes: the IPv6 one by the tunnel's next hop, the IPv4 one by none; the MTU leaves
        // room for the 40-byte outer header.
        let route = |dst: &str| *want.routes.iter().find(|r| r.dst == cidr(dst)).unwrap();
        assert_eq!(
            (
                route("fd00:10:244:2::/64").via,
                route("fd00:10:244:2::/64").mtu
            ),
            (Some(b), 1426)
        );
        assert_eq!(
            (route("10.244.2.0/24").via, route("10.244.2.0/24").mtu),
            (None, 1426)
        );
        // The guards' maps: the peer by its IPv6 address, its SPIs under 0.0.0.0.
        assert!(want.maps.peer_nodes.contains_key(&b));
        assert!(
            want.maps
                .peer_spis
                .iter()
                .all(|(owner, _)| owner.is_unspecified())
        );
    }
}
