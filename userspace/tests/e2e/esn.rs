//! ESN agreed per pair: node b's agent runs as on a kernel without extended sequence numbers
//! (the probe's test switch), node a's with them. b says so in its record, and both install
//! 32-bit SAs for the pair: without the agreement a's ESN SAs and b's plain ones would number
//! differently and each would drop the other's ESP (`XfrmInStateProtoError`).

use std::{fs, time::Duration};

use xsteer::kernel::xfrm::{self, NO_ESN_TEST_SWITCH};

use crate::{
    cluster,
    streams::{Wire, agent_logs, connected, plaintext, sas, stop},
};

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn nodes_whose_kernels_differ_in_esn_agree_on_32_bit_sas_and_talk() {
    let (a, b, records) = cluster::pair_with_records("esn");
    let nodes = [&a, &b];
    let mut agents = vec![
        a.start_agent(),
        b.start_agent_with_env(&[], &[(NO_ESN_TEST_SWITCH, "1")]),
    ];
    connected(&nodes, 7501);
    let wire = Wire::start(&nodes);
    let wait = Duration::from_secs(3);
    let ab = cluster::exchange((&a.pod, a.pod_ip), (&b.pod, b.pod_ip), 7502, 20, wait);
    let ba = cluster::exchange((&b.pod, b.pod_ip), (&a.pod, a.pod_ip), 7503, 20, wait);
    let packets = wire.stop();
    let esp = packets.iter().filter(|p| p.is_esp()).count();
    let b_record = fs::read_to_string(records.join("b.json")).unwrap();
    let a_record = fs::read_to_string(records.join("a.json")).unwrap();
    let flags: Vec<(String, u32, Vec<String>)> = nodes
        .iter()
        .flat_map(|n| {
            sas(&n.netns)
                .into_iter()
                .filter(|sa| sa.reqid & 0xFFFF == xfrm::REQID)
                .map(|sa| (n.name.to_owned(), sa.spi, sa.flags))
        })
        .collect();
    eprintln!(
        "a (ESN) <-> b (no ESN): a -> b {ab}/20, b -> a {ba}/20, {esp} ESP and {} plaintext on \
         the wire; xsteer's SAs: {flags:?}",
        plaintext(&packets, &nodes)
    );
    assert!(b_record.contains("\"esn\": false"), "{b_record}");
    assert!(!a_record.contains("esn"), "{a_record}");
    // An OUT and an IN SA per key generation on each node.
    assert!(flags.len() >= 4, "{flags:?}");
    for (node, spi, flags) in &flags {
        assert!(
            !flags.iter().any(|f| f == "esn"),
            "{node}: SA {spi:#010x} has ESN ({flags:?})\n{}",
            agent_logs(&nodes)
        );
    }
    assert_eq!((ab, ba), (20, 20), "{}", agent_logs(&nodes));
    assert_eq!(plaintext(&packets, &nodes), 0);
    assert!(esp >= 40, "{esp} ESP packets");
    stop(&mut agents);
}
