//! The grid of remote pod slots in front of the trie: inside the grid a slot answers, a slot
//! with a finer CIDR in it defers to the trie, outside the grid the trie answers — and the
//! classifier gives the same marks as with the trie alone, while the guards, which go by the
//! cluster's pod space, do not read either.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use xsteer::dataplane::{Dataplane, grid::Grid};
use xsteer_bpf_tests::{
    INGRESS_HOOKS, TC_SHOT, XDP_DROP, dataplane, packet::Ipv4, run_ingress, run_tc, topology::*,
};
use xsteer_common::{maps::RemotePodCidr, mark};

const FINE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 9);
const SAME_SLOT_NOT_FINE: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 200);
const EMPTY_SLOT: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 1);

/// The test topology, a /25 inside the grid, and the grid 10.244.0.0/16 in /24 slots.
fn gridded(test: &str) -> Option<Dataplane> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    let mut remote = dp.remote_pod_cidrs().unwrap();
    let fine = RemotePodCidr {
        node_id: 5,
        generation: 2,
        flags: 0,
    };
    remote
        .insert("10.244.5.0/25".parse().unwrap(), fine)
        .unwrap();
    let grid = Grid::new("10.244.0.0/16".parse().unwrap(), 24).unwrap();
    remote.set_grid(Some(grid)).unwrap();
    assert_eq!(remote.grid().unwrap(), Some(grid));
    Some(dp)
}

fn mark_of(dp: &mut Dataplane, dst: Ipv4Addr) -> u32 {
    run_tc(
        dp.pod_classifier().unwrap(),
        &Ipv4::udp(LOCAL_POD, dst).frame(),
        0,
    )
    .mark
}

#[test]
fn slots_answer_inside_the_grid_and_the_trie_everywhere_else() {
    let Some(mut dp) = gridded("slots_answer_inside_the_grid_and_the_trie_everywhere_else") else {
        return;
    };
    assert_eq!(
        mark_of(&mut dp, PEER_B_POD),
        mark::encrypt(PEER_B_SPI, PEER_B_ID),
        "a slot hit"
    );
    assert_eq!(
        mark_of(&mut dp, FINE_POD),
        mark::encrypt(2, 5),
        "a /25 in its slot: the trie"
    );
    assert_eq!(
        mark_of(&mut dp, SAME_SLOT_NOT_FINE),
        0,
        "the rest of that slot is no pod's"
    );
    assert_eq!(mark_of(&mut dp, EMPTY_SLOT), 0, "an empty slot");
    assert_eq!(mark_of(&mut dp, LOCAL_POD), 0, "local pods are not remote");
    assert_eq!(
        mark_of(&mut dp, PEER_C_POD),
        mark::encrypt(PEER_C_SPI, PEER_C_ID),
        "outside the grid: the trie, longest prefix"
    );
    assert_eq!(mark_of(&mut dp, OUTSIDE), 0);
}

#[test]
fn removals_and_turning_the_grid_off_keep_the_answers_right() {
    let Some(mut dp) = gridded("removals_and_turning_the_grid_off_keep_the_answers_right") else {
        return;
    };
    dp.remote_pod_cidrs()
        .unwrap()
        .remove("10.244.2.0/24".parse().unwrap())
        .unwrap();
    assert_eq!(mark_of(&mut dp, PEER_B_POD), 0, "its slot emptied with it");
    dp.remote_pod_cidrs()
        .unwrap()
        .remove("10.244.5.0/25".parse().unwrap())
        .unwrap();
    assert_eq!(
        mark_of(&mut dp, FINE_POD),
        0,
        "no finer CIDR left: the slot is empty"
    );
    dp.remote_pod_cidrs().unwrap().set_grid(None).unwrap();
    assert_eq!(
        mark_of(&mut dp, PEER_C_POD),
        mark::encrypt(PEER_C_SPI, PEER_C_ID)
    );
    let value = RemotePodCidr {
        node_id: PEER_B_ID,
        generation: PEER_B_SPI,
        flags: 0,
    };
    dp.remote_pod_cidrs()
        .unwrap()
        .insert("10.244.2.0/24".parse().unwrap(), value)
        .unwrap();
    assert_eq!(
        mark_of(&mut dp, PEER_B_POD),
        mark::encrypt(PEER_B_SPI, PEER_B_ID),
        "the trie alone"
    );
}

/// The guards decide by the cluster's pod space, not by the slots or the trie: a slot that
/// answers, one that defers to the trie, and an empty one are all pod addresses to them.
#[test]
fn the_guards_decide_by_the_pod_space_whatever_the_slots_say() {
    let Some(mut dp) = gridded("the_guards_decide_by_the_pod_space_whatever_the_slots_say") else {
        return;
    };
    for dst in [PEER_B_POD, FINE_POD, SAME_SLOT_NOT_FINE, EMPTY_SLOT] {
        let leak = Ipv4::udp(LOCAL_POD, dst).frame();
        assert_eq!(
            run_tc(dp.egress_guard().unwrap(), &leak, 0).verdict,
            TC_SHOT,
            "to {dst}"
        );
        let spoof = Ipv4::udp(dst, LOCAL_POD).frame();
        for hook in INGRESS_HOOKS {
            assert_eq!(
                run_ingress(&mut dp, hook, &spoof),
                XDP_DROP,
                "from {dst} at {hook}"
            );
        }
    }
}
