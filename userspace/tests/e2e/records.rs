//! Peers learned from node records (the `dir` source): a node that joins gets encrypted traffic
//! once its record appears, and a node that leaves takes every kernel object and map entry xsteer
//! had for it along.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use xsteer::dataplane::Dataplane;

use crate::{cluster, wire::Capture};

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_node_that_joins_is_encrypted_to_and_one_that_leaves_is_forgotten() {
    let (a, b, records) = cluster::pair_with_records("records");
    let agent_a = a.start_agent();
    assert!(
        records.join("a.json").exists(),
        "a publishes its record at start"
    );
    let wire = Capture::start(&a.netns, "eth0");

    // b joins: from its record appearing to a datagram from a's pod arriving encrypted.
    let mut agent_b = b.start_agent();
    let b_record = records.join("b.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b_record.exists() {
        assert!(
            Instant::now() < deadline,
            "b never published:\n{}",
            b.agent_log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let appeared = Instant::now();
    let mut port = 7400;
    loop {
        port += 1;
        let got = cluster::exchange(
            (&a.pod, a.pod_ip),
            (&b.pod, b.pod_ip),
            port,
            1,
            Duration::from_millis(200),
        );
        if got == 1 {
            break;
        }
        assert!(
            appeared.elapsed() < Duration::from_secs(20),
            "a never reached b:\n{}",
            a.agent_log()
        );
    }
    let took = appeared.elapsed();
    eprintln!("b's record appeared -> first datagram delivered: {took:?}");
    assert!(
        a.agent_log().contains("node b (192.168.60.2) joined"),
        "{}",
        a.agent_log()
    );
    wire.take();
    let got = cluster::exchange(
        (&a.pod, a.pod_ip),
        (&b.pod, b.pod_ip),
        7499,
        20,
        Duration::from_secs(10),
    );
    let sent = wire.take();
    let esp = sent
        .iter()
        .filter(|p| p.is_esp() && p.src == a.wire_ip)
        .count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(b.pod_ip)).count();
    eprintln!("after the join: {esp} ESP, {plaintext} plaintext, {got}/20 delivered");
    assert_eq!((esp, plaintext, got), (20, 0, 20));

    // b's record turns to garbage: a says so, keeps b's last good record, traffic stays encrypted.
    fs::write(&b_record, "{ \"version\": 1, \"name\": ").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.agent_log().contains("b.json") {
        assert!(
            Instant::now() < deadline,
            "a never noticed b's bad record:\n{}",
            a.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.agent_log().contains("keeping its last good record"),
        "{}",
        a.agent_log()
    );
    let got = cluster::exchange(
        (&a.pod, a.pod_ip),
        (&b.pod, b.pod_ip),
        7498,
        20,
        Duration::from_secs(10),
    );
    let sent = wire.take();
    let esp = sent
        .iter()
        .filter(|p| p.is_esp() && p.src == a.wire_ip)
        .count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(b.pod_ip)).count();
    eprintln!("with b's record broken: {esp} ESP, {plaintext} plaintext, {got}/20 delivered");
    assert_eq!((esp, plaintext, got), (20, 0, 20));

    // b leaves for good: its agent stops and it is removed on purpose (a record that merely
    // disappears keeps its node: fail_closed.rs).
    let _ = agent_b.kill();
    let _ = agent_b.wait();
    a.remove_node("b");
    assert!(!b_record.exists(), "the removal takes the record away");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.agent_log().contains("node b was removed") {
        assert!(
            Instant::now() < deadline,
            "a never noticed b left:\n{}",
            a.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = a.kernel_state();
        let mut dataplane = Dataplane::load_pinned(&a.pin_dir()).unwrap();
        let cidrs = dataplane.remote_pod_cidrs().unwrap().entries().unwrap();
        let peers = dataplane.peer_nodes().unwrap().entries().unwrap();
        let spis = dataplane.peer_spis().unwrap().keys().unwrap();
        let gone = !state.contains("192.168.60.2 dst")
            && !state.contains("dst 192.168.60.2")
            && !state.contains("10.244.2.0/24 via 192.168.60.2 dev eth0 table 200")
            && !state.contains("src 10.244.2.0/24")
            && cidrs.is_empty()
            && peers.is_empty()
            && spis.is_empty();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's objects outlived it:\n{state}\nmaps: {cidrs:?} {peers:?} {spis:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("b left: its SAs, policies, route and map entries are gone from a");
    let mut agent_a = agent_a;
    let _ = agent_a.kill();
    let _ = agent_a.wait();
    let _ = fs::remove_dir_all(records);
}
