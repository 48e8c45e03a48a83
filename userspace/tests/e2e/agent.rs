//! The node agent on two nodes: it classifies pod veths present at start and appearing later,
//! survives SIGKILL during a flood with nothing lost and nothing in plaintext, and a pod whose
//! veth appears while it is down is never in clear: unmarked, its traffic is encrypted by the
//! policies that select by destination, which outlive the agent.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, UdpSocket},
    process::Child,
    thread,
    time::{Duration, Instant},
};

use xsteer_common::counters::Counter;

use crate::{
    cluster::{self, Node},
    support::Netns,
    wire::{Capture, Packet},
};

/// ESP from `from` and plaintext UDP to `to_pod` among `sent`.
fn census(sent: &[Packet], from: &Node, to_pod: Ipv4Addr) -> (usize, usize) {
    let esp = sent
        .iter()
        .filter(|p| p.is_esp() && p.src == from.wire_ip)
        .count();
    let plaintext = sent.iter().filter(|p| p.is_udp_to(to_pod)).count();
    (esp, plaintext)
}

fn stop(mut agent: Child) {
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Waits until `node`'s agent log contains `text`.
fn wait_for_log(node: &Node, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !node.agent_log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the agent on {} never logged {text:?}:\n{}",
            node.name,
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A UDP flood from `src` in `from` to `dst` in `to` at about `rate` datagrams/s for
/// `seconds`, during which `meanwhile` runs; returns (sent, distinct sequence numbers received).
fn flood(
    (from, src): (&Netns, Ipv4Addr),
    (to, dst): (&Netns, Ipv4Addr),
    rate: u32,
    seconds: u32,
    meanwhile: impl FnOnce(),
) -> (u32, usize) {
    const PORT: u16 = 7200;
    let receiver = to.run(move || UdpSocket::bind((dst, PORT)).unwrap());
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = from.run(move || UdpSocket::bind((src, 0)).unwrap());
    let total = rate * seconds;
    thread::scope(|s| {
        let received = s.spawn(|| {
            let mut seen = BTreeSet::new();
            let mut buf = [0u8; 4];
            while let Ok(n) = receiver.recv(&mut buf) {
                if n == 4 {
                    seen.insert(u32::from_be_bytes(buf));
                }
            }
            seen.len()
        });
        let sent = s.spawn(|| {
            let start = Instant::now();
            let mut sent = 0;
            for seq in 0..total {
                // Paced against the clock, so a slow moment does not stretch the flood.
                let due = start + Duration::from_secs(1) * seq / rate;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                if sender.send_to(&seq.to_be_bytes(), (dst, PORT)).is_ok() {
                    sent += 1;
                }
            }
            sent
        });
        meanwhile();
        let sent = sent.join().unwrap();
        (sent, received.join().unwrap())
    })
}

/// `xsteer status --output json` and the agent's /metrics agree with what was sent: at least
/// `sent` packets marked, and as many on node a's OUT SA to b.
fn check_status_and_metrics(a: &Node, sent: u64) {
    let mut status = std::process::Command::new(env!("CARGO_BIN_EXE_xsteer"));
    status
        .args(["status", "--output", "json", "--config"])
        .arg(a.config())
        .arg("--pin-dir")
        .arg(a.pin_dir());
    let out = a.netns.run(move || status.output().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peer = &json["peers"][0];
    assert_eq!(peer["name"], "b", "{json}");
    assert_eq!(peer["sending_generation"], 4, "{json}");
    let out_packets: u64 = peer["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sa| sa["packets"].as_u64().unwrap())
        .sum();
    assert!(out_packets >= sent, "{json}");
    let marked = json["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "pod_marked")
        .map(|c| c[1].as_u64().unwrap())
        .unwrap();
    assert!(marked >= sent, "{json}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("6a0c3c1e"),
        "key material in status:\n{text}"
    );

    let metrics = a.netns.run(|| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9478").unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    });
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    // The sum over every series whose name and labels start with `prefix`.
    let value = |prefix: &str| -> u64 {
        let values: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!values.is_empty(), "no {prefix} in\n{metrics}");
        values.iter().sum()
    };
    assert!(value("xsteer_packets_total{verdict=\"pod_marked\"}") >= sent);
    assert!(value("xsteer_sa_packets_total{peer=\"b\",direction=\"out\"") >= sent);
    assert_eq!(value("xsteer_rekey_in_progress"), 0, "no re-key under way");
    eprintln!("status and /metrics: {out_packets} packets on the OUT SA, {marked} marked");
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_agent_classifies_pods_survives_sigkill_and_guards_while_down() {
    let (a, b) = cluster::pair("agent");
    let agent_a = a.start_agent();
    let agent_b = b.start_agent();
    for node in [&a, &b] {
        let log = node.agent_log();
        assert!(
            log.contains("pod veth pod0: classifier attached (New)"),
            "{log}"
        );
        assert!(
            log.contains("uplink eth0: egress guard attached (New)"),
            "{log}"
        );
        assert!(
            !log.contains("pod veth eth0"),
            "the uplink is no pod veth:\n{log}"
        );
    }
    let wire = Capture::start(&a.netns, "eth0");
    let wait = Duration::from_secs(10);

    // Pods present at start: encrypted.
    let got = cluster::exchange((&a.pod, a.pod_ip), (&b.pod, b.pod_ip), 7101, 20, wait);
    let (esp, plaintext) = census(&wire.take(), &a, b.pod_ip);
    eprintln!("at start: {esp} ESP, {plaintext} plaintext, {got}/20 delivered");
    assert_eq!((esp, plaintext, got), (20, 0, 20));
    check_status_and_metrics(&a, 20);

    // SIGKILL during a flood, then a restart: the pinned dataplane carries on alone.
    let mut agent_a = Some(agent_a);
    let (sent, received) = flood((&a.pod, a.pod_ip), (&b.pod, b.pod_ip), 400, 8, || {
        thread::sleep(Duration::from_secs(1));
        stop(agent_a.take().unwrap());
        thread::sleep(Duration::from_secs(1));
        agent_a = Some(a.start_agent());
    });
    let (esp, plaintext) = census(&wire.take(), &a, b.pod_ip);
    let lost = sent as usize - received;
    eprintln!(
        "flood across SIGKILL + restart: {sent} sent, {received} received, {lost} lost, \
         {esp} ESP and {plaintext} plaintext on the wire"
    );
    assert_eq!(plaintext, 0, "plaintext on the wire during the restart");
    assert_eq!(lost, 0, "datagrams lost across the agent restart");
    assert!(
        esp >= received,
        "{esp} ESP packets for {received} datagrams"
    );
    let log = a.agent_log();
    assert!(
        log.contains("pod veth pod0: classifier attached (Adopted)"),
        "{log}"
    );
    assert!(log.contains("egress guard attached (Adopted)"), "{log}");

    // A pod whose veth appears while the agent is down: no classifier marks it, and the policies
    // by destination, which stay in the kernel, encrypt its traffic all the same.
    stop(agent_a.take().unwrap());
    let late = Ipv4Addr::new(10, 244, 1, 3);
    let late_pod = a.add_pod("pod1", late);
    let dropped = a.counter(Counter::EgressLeakDropped);
    let got = cluster::exchange(
        (&late_pod, late),
        (&b.pod, b.pod_ip),
        7102,
        10,
        Duration::from_secs(3),
    );
    let (esp, plaintext) = census(&wire.take(), &a, b.pod_ip);
    let dropped = a.counter(Counter::EgressLeakDropped) - dropped;
    eprintln!(
        "late pod, agent down: {got} delivered, {esp} ESP, {plaintext} plaintext, {dropped} \
         dropped by the egress guard"
    );
    assert_eq!((got, plaintext, esp), (10, 0, 10));
    assert_eq!(dropped, 0, "nothing left for the egress guard to hold back");

    // The agent returns and classifies it; then a pod appearing while it runs.
    let agent_a = a.start_agent();
    assert!(
        a.agent_log()
            .contains("pod veth pod1: classifier attached (New)")
    );
    let got = cluster::exchange((&late_pod, late), (&b.pod, b.pod_ip), 7103, 10, wait);
    let (esp, plaintext) = census(&wire.take(), &a, b.pod_ip);
    assert_eq!(
        (esp, plaintext, got),
        (10, 0, 10),
        "the late pod, agent back"
    );

    let live = Ipv4Addr::new(10, 244, 1, 4);
    let started = Instant::now();
    let live_pod = a.add_pod("pod2", live);
    wait_for_log(
        &a,
        "pod veth pod2: classifier attached",
        Duration::from_secs(10),
    );
    eprintln!(
        "pod veth created -> classifier attached: {:?}",
        started.elapsed()
    );
    let got = cluster::exchange((&live_pod, live), (&b.pod, b.pod_ip), 7104, 10, wait);
    let (esp, plaintext) = census(&wire.take(), &a, b.pod_ip);
    assert_eq!(
        (esp, plaintext, got),
        (10, 0, 10),
        "a pod added while the agent runs"
    );

    // A deleted veth takes its pin with it.
    a.netns.ip(&["link", "del", "pod2"]);
    wait_for_log(&a, "pod veth pod2 gone", Duration::from_secs(10));
    assert!(!a.pin_dir().join("links/pod_classifier@pod2").exists());

    stop(agent_a);
    stop(agent_b);
}
