//! xfrm policies on the host kernel, in a fresh network namespace: what xsteer writes reads back
//! the same, replaces atomically, and foreign policies survive untouched; and what someone else
//! removes of xsteer's (a policy, every policy, the encrypt rule, a route) is reported by the
//! kernel's notifications.
//!
//! SAs need ESP, which the host kernel lacks; they are covered in the VM bed.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::Ipv4Addr;

use support::{in_fresh_netns, ip, require_root};
use xsteer::cidr::IpFamily;
use xsteer::kernel::{
    Netlink,
    xfrm::{
        self, BLOCK_POLICY_PRIORITY, Direction, Mark, PEER_POLICY_PRIORITY, Policy, PolicyAction,
    },
};

fn cidr(s: &str) -> xsteer::cidr::IpCidr {
    s.parse().unwrap()
}

fn out_policy(generation: u32) -> Policy {
    Policy {
        direction: Direction::Out,
        src: cidr("0.0.0.0/0"),
        dst: cidr("10.244.2.0/24"),
        mark: Some(Mark {
            value: 0x0002_0E00 | generation << 12,
            mask: 0xFFFF_FF00,
        }),
        priority: PEER_POLICY_PRIORITY,
        action: PolicyAction::Tunnel {
            src: Ipv4Addr::new(192, 168, 77, 1).into(),
            dst: Ipv4Addr::new(192, 168, 77, 2).into(),
            reqid: xfrm::set_reqid(0x0001_0000 | generation),
        },
    }
}

fn block() -> Policy {
    Policy {
        direction: Direction::Out,
        src: cidr("0.0.0.0/0"),
        dst: cidr("0.0.0.0/0"),
        mark: Some(Mark {
            value: 0xE00,
            mask: 0xF00,
        }),
        priority: BLOCK_POLICY_PRIORITY,
        action: PolicyAction::Block,
    }
}

fn fwd_policy() -> Policy {
    Policy {
        direction: Direction::Fwd,
        src: cidr("10.244.2.0/24"),
        dst: cidr("10.244.1.0/24"),
        mark: None,
        priority: PEER_POLICY_PRIORITY,
        action: PolicyAction::Tunnel {
            src: Ipv4Addr::new(192, 168, 77, 2).into(),
            dst: Ipv4Addr::new(192, 168, 77, 1).into(),
            reqid: 0,
        },
    }
}

/// `policy` for the IPv6 pods of the same peer, in the same IPv4 tunnel.
fn ipv6(policy: Policy) -> Policy {
    let v6 = |c: xsteer::cidr::IpCidr| match c.to_string().as_str() {
        "0.0.0.0/0" => cidr("::/0"),
        "10.244.1.0/24" => cidr("fd00:10:244:1::/64"),
        "10.244.2.0/24" => cidr("fd00:10:244:2::/64"),
        other => panic!("no IPv6 twin for {other}"),
    };
    Policy {
        src: v6(policy.src),
        dst: v6(policy.dst),
        ..policy
    }
}

/// Foreign policies, as another IPsec user would have them.
const FOREIGN: &[&str] = &[
    "policy add dir out src 10.9.0.0/16 dst 10.8.0.0/16 priority 5 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1",
    "policy add dir in src 10.244.2.0/24 dst 10.244.1.0/24 mark 0x1 mask 0x1 priority 7 tmpl src 192.0.2.2 dst 192.0.2.1 proto esp mode tunnel",
];

#[test]
fn policies_round_trip_replace_and_leave_foreign_ones_alone() {
    if !require_root("policies_round_trip_replace_and_leave_foreign_ones_alone") {
        return;
    }
    in_fresh_netns(|| async {
        for line in FOREIGN {
            ip(&["xfrm"]
                .iter()
                .copied()
                .chain(line.split(' '))
                .collect::<Vec<_>>());
        }
        let foreign_before = ip(&["xfrm", "policy", "show"]);
        let netlink = Netlink::connect().unwrap();

        // IPv6 selectors with IPv4 tunnel templates: the dual-stack shape.
        let mine = [
            block(),
            out_policy(3),
            fwd_policy(),
            ipv6(block()),
            ipv6(out_policy(3)),
            ipv6(fwd_policy()),
        ];
        for p in &mine {
            xfrm::put_policy(&netlink, p, false).await.unwrap();
        }
        let mut listed = xfrm::policies(&netlink).await.unwrap();
        listed.sort();
        let mut expected = mine.to_vec();
        expected.sort();
        assert_eq!(
            listed, expected,
            "only xsteer's policies, read back as written"
        );

        // Replacing keeps the key and swaps the template in one step: the SA it names by
        // reqid (a re-key), then its endpoint.
        let mut rekeyed = out_policy(3);
        rekeyed.action = PolicyAction::Tunnel {
            src: Ipv4Addr::new(192, 168, 77, 1).into(),
            dst: Ipv4Addr::new(192, 168, 77, 2).into(),
            reqid: xfrm::set_reqid(0x0001_5673),
        };
        xfrm::put_policy(&netlink, &rekeyed, true).await.unwrap();
        let listed = xfrm::policies(&netlink).await.unwrap();
        assert!(
            listed.contains(&rekeyed) && !listed.contains(&out_policy(3)),
            "{listed:#?}"
        );
        let mut moved = out_policy(3);
        moved.action = PolicyAction::Tunnel {
            src: Ipv4Addr::new(192, 168, 77, 1).into(),
            dst: Ipv4Addr::new(192, 168, 77, 9).into(),
            reqid: xfrm::set_reqid(0x0001_5673),
        };
        xfrm::put_policy(&netlink, &moved, true).await.unwrap();
        let listed = xfrm::policies(&netlink).await.unwrap();
        assert!(
            listed.contains(&moved) && !listed.contains(&rekeyed),
            "{listed:#?}"
        );

        // Adding an existing key fails loudly, naming the policy.
        let err = xfrm::put_policy(&netlink, &block(), false)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("adding policy out 0.0.0.0/0 -> 0.0.0.0/0"),
            "{err}"
        );

        for p in [
            block(),
            moved,
            fwd_policy(),
            ipv6(block()),
            ipv6(out_policy(3)),
            ipv6(fwd_policy()),
        ] {
            xfrm::delete_policy(&netlink, &p).await.unwrap();
        }
        assert!(xfrm::policies(&netlink).await.unwrap().is_empty());
        assert_eq!(
            ip(&["xfrm", "policy", "show"]),
            foreign_before,
            "foreign policies untouched"
        );
        // 6 adds, 2 replaces, 1 failed add, 6 deletes.
        assert_eq!(netlink.writes(), 15);
    });
}

#[test]
fn the_block_policy_drops_a_marked_packet_with_no_peer_policy() {
    if !require_root("the_block_policy_drops_a_marked_packet_with_no_peer_policy") {
        return;
    }
    in_fresh_netns(|| async {
        ip(&["link", "add", "xs0", "type", "veth", "peer", "name", "xs1"]);
        ip(&["addr", "add", "192.168.77.1/24", "dev", "xs0"]);
        ip(&["link", "set", "xs0", "up"]);
        ip(&["link", "set", "xs1", "up"]);
        let netlink = Netlink::connect().unwrap();
        xfrm::put_policy(&netlink, &block(), false).await.unwrap();
        let before = support::xfrm_stat("XfrmOutPolBlock");
        // A UDP datagram marked for encryption towards a peer with no policy of its own.
        let socket = std::net::UdpSocket::bind("192.168.77.1:0").unwrap();
        support::set_mark(&socket, 0x0002_3E00);
        let sent = socket.send_to(b"must not leave", "192.168.77.2:9");
        assert!(sent.is_err(), "the kernel must refuse to send it: {sent:?}");
        assert_eq!(support::xfrm_stat("XfrmOutPolBlock"), before + 1);
        // Unmarked traffic is not xsteer's business and flows.
        let plain = std::net::UdpSocket::bind("192.168.77.1:0").unwrap();
        plain.send_to(b"fine", "192.168.77.2:9").unwrap();
    });
}

#[test]
fn removals_behind_xsteers_back_are_reported() {
    if !require_root("removals_behind_xsteers_back_are_reported") {
        return;
    }
    in_fresh_netns(|| async {
        use xsteer::kernel::{
            events::{self, Removed},
            routing::{self, EncryptRule, PodRoute},
        };
        ip(&["link", "add", "xs0", "type", "veth", "peer", "name", "xs1"]);
        ip(&["addr", "add", "192.168.77.1/24", "dev", "xs0"]);
        ip(&["link", "set", "xs0", "up"]);
        ip(&["link", "set", "xs1", "up"]);
        let netlink = Netlink::connect().unwrap();
        let mut events = events::subscribe().unwrap();
        let next = async |events: &mut events::Events| {
            tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
                .await
                .expect("a notification within 5 s")
                .expect("the subscription lives")
        };

        let rule = EncryptRule {
            family: IpFamily::V4,
            priority: 100,
            table: 200,
        };
        routing::add_rule(&netlink, &rule).await.unwrap();
        ip(&["rule", "del", "fwmark", "0xe00/0xf00", "lookup", "200"]);
        assert_eq!(next(&mut events).await, Removed::Rule(rule));
        let rule6 = EncryptRule {
            family: IpFamily::V6,
            ..rule
        };
        routing::add_rule(&netlink, &rule6).await.unwrap();
        ip(&[
            "-6",
            "rule",
            "del",
            "fwmark",
            "0xe00/0xf00",
            "lookup",
            "200",
        ]);
        assert_eq!(next(&mut events).await, Removed::Rule(rule6));

        let route = PodRoute {
            dst: cidr("10.244.2.0/24"),
            via: Some(Ipv4Addr::new(192, 168, 77, 2).into()),
            oif: routing::uplink(&netlink, "xs0").await.unwrap().index,
            mtu: 1446,
        };
        routing::add_route(&netlink, 200, &route).await.unwrap();
        ip(&["route", "del", "10.244.2.0/24", "table", "200"]);
        assert_eq!(
            next(&mut events).await,
            Removed::Route { table: 200, route }
        );
        let policy = out_policy(3);
        xfrm::put_policy(&netlink, &policy, false).await.unwrap();
        ip(&[
            "xfrm",
            "policy",
            "delete",
            "dir",
            "out",
            "src",
            "0.0.0.0/0",
            "dst",
            "10.244.2.0/24",
            "mark",
            "0x23e00",
            "mask",
            "0xffffff00",
        ]);
        assert_eq!(next(&mut events).await, Removed::Policy(policy.key()));

        xfrm::put_policy(&netlink, &block(), false).await.unwrap();
        ip(&["xfrm", "policy", "flush"]);
        assert_eq!(next(&mut events).await, Removed::AllPolicies);
    });
}
