//! Fail closed by construction: whatever the agent's view of its peers — a peer sharing no key
//! generation, a record gone, an impostor's record, a clash present at a restart, a state
//! directory lost, SAs flushed behind its back — and whatever path a packet takes to a remote
//! pod — the node's own ICMP errors, its host processes, a Service's DNAT — no pod frame crosses
//! the wire in plaintext. Each test captures every node's wire side and counts frames whose
//! outer source or destination lies in the cluster's pod space (10.244.0.0/16): there must be
//! none that is not ESP between node IPs, and where the path should work, it does.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use xsteer::{cidr::Ipv4Cidr, kernel::xfrm};

use crate::{
    cluster::{self, Node},
    streams::{self, Wire, agent_logs, connected, start_agents, stop},
    support::Netns,
    wire::Packet,
};

/// The cluster's pod space in the test clusters.
fn pod_space() -> Ipv4Cidr {
    "10.244.0.0/16".parse().unwrap()
}

/// Frames on the wire with a pod address outside an ESP tunnel: the one thing xsteer promises
/// never to send.
fn plaintext_pod_frames(packets: &[Packet]) -> Vec<Packet> {
    let space = pod_space();
    packets
        .iter()
        .filter(|p| space.contains(p.src) || space.contains(p.dst))
        .copied()
        .collect()
}

fn assert_no_plaintext(packets: &[Packet], nodes: &[&Node], what: &str) {
    let leaked = plaintext_pod_frames(packets);
    eprintln!(
        "{what}: {} frames on the wire, {} plaintext pod frames",
        packets.len(),
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "{what}: {} plaintext pod frames on the wire, e.g. {:?}\n{}",
        leaked.len(),
        &leaked[..leaked.len().min(5)],
        agent_logs(nodes)
    );
}

/// Sends `count` datagrams from the pod of `from` to the pod of `to`; how many arrived.
fn pod_to_pod(from: &Node, to: &Node, port: u16, count: usize) -> usize {
    cluster::exchange(
        (&from.pod, from.pod_ip),
        (&to.pod, to.pod_ip),
        port,
        count,
        Duration::from_secs(3),
    )
}

/// Waits until `node`'s agent log holds `text`.
fn wait_for_log(node: &Node, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !node.agent_log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{} never logged {text:?}:\n{}",
            node.name,
            node.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_peer_sharing_no_key_generation_is_unreachable_never_plaintext() {
    let (a, b, _records) = cluster::pair_with_records("nogen");
    // b's key file holds only a generation a does not have: they share no key.
    let only_nine = "9 rfc4106(gcm(aes)) 0x99999999999999999999999999999999aabbccdd 128\n";
    fs::write(b.dir.join("keys"), only_nine).unwrap();
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    wait_for_log(&a, "node b (192.168.60.2) joined", Duration::from_secs(30));
    wait_for_log(&b, "node a (192.168.60.1) joined", Duration::from_secs(30));
    let wire = Wire::start(&nodes);
    let ab = pod_to_pod(&a, &b, 7401, 6);
    let ba = pod_to_pod(&b, &a, 7402, 6);
    // The node itself, too: host to the other's pod.
    let host = a
        .netns
        .run(|| UdpSocket::bind("0.0.0.0:0").unwrap())
        .send_to(b"x", (b.pod_ip, 7403));
    thread::sleep(Duration::from_millis(500));
    let packets = wire.stop();
    eprintln!("no shared generation: a -> b {ab}/6, b -> a {ba}/6, host send {host:?}");
    assert_no_plaintext(&packets, &nodes, "no shared generation");
    assert_eq!(
        (ab, ba),
        (0, 0),
        "nothing can be delivered without a shared key"
    );
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_peer_whose_record_disappears_stays_encrypted_until_removed_on_purpose() {
    let (a, b, records) = cluster::pair_with_records("gone");
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7410);
    let wire = Wire::start(&nodes);
    let record = records.join("b.json");
    let saved = fs::read(&record).unwrap();
    let streamed = thread::scope(|s| {
        let stream = s.spawn(|| streams::stream(&a, &b, 7411, 100, 12));
        thread::sleep(Duration::from_secs(2));
        fs::remove_file(&record).unwrap();
        thread::sleep(Duration::from_secs(8));
        fs::write(&record, &saved).unwrap();
        stream.join().unwrap()
    });
    let packets = wire.stop();
    eprintln!(
        "b's record gone for 8 s: {} sent, {} lost",
        streamed.sent,
        streamed.lost()
    );
    assert_no_plaintext(&packets, &nodes, "record gone");
    assert_eq!(streamed.lost(), 0, "{}", agent_logs(&nodes));
    assert!(
        a.agent_log()
            .contains("node b's record is gone; keeping its last good record"),
        "{}",
        a.agent_log()
    );

    // Removed on purpose: a forgets b, and b's pods are unreachable from a, never plaintext.
    a.remove_node("b");
    let _ = agents[1].kill();
    let _ = agents[1].wait();
    wait_for_log(&a, "node b was removed", Duration::from_secs(20));
    // Once the reconcile that follows has taken b's objects away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a
        .netns
        .ip(&["xfrm", "state", "show"])
        .contains("192.168.60.2")
    {
        assert!(
            Instant::now() < deadline,
            "b's SAs outlived it\n{}",
            a.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let wire = Wire::start(&nodes);
    let after = pod_to_pod(&a, &b, 7412, 5);
    assert_no_plaintext(&wire.stop(), &nodes, "after the removal");
    assert_eq!(after, 0);
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn an_impostor_record_and_a_clash_at_restart_hurt_no_one() {
    let cluster = cluster::trio_with_records("impostor");
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let nodes = [a, b, c];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7420);

    // zzz.json claims to be node b, at c's address: refused by name on every node.
    let b_record = fs::read_to_string(cluster.records.join("b.json")).unwrap();
    let impostor = b_record.replace("192.168.60.2", "192.168.60.9");
    fs::write(cluster.records.join("zzz.json"), &impostor).unwrap();
    // "evil" clashes with b (same node IP); a garbage copy of c's record replaces c's.
    let evil = b_record
        .replace("\"b\"", "\"evil\"")
        .replace("\"id\": 2", "\"id\": 9");
    fs::write(cluster.records.join("evil.json"), &evil).unwrap();
    fs::write(cluster.records.join("c.json"), "{ garbage").unwrap();
    wait_for_log(a, "zzz.json: name", Duration::from_secs(20));
    wait_for_log(a, "node evil's record is refused", Duration::from_secs(20));

    // a restarts while all three are there: it keeps b and c, refuses the rest.
    let _ = agents[0].kill();
    let _ = agents[0].wait();
    agents[0] = a.start_agent();
    let wire = Wire::start(&nodes);
    let ab = pod_to_pod(a, b, 7421, 10);
    let ac = pod_to_pod(a, c, 7422, 10);
    let ca = pod_to_pod(c, a, 7423, 10);
    let packets = wire.stop();
    eprintln!(
        "after a's restart amid an impostor, a clash and garbage: a -> b {ab}, a -> c {ac}, c -> a {ca} of 10"
    );
    assert_no_plaintext(&packets, &nodes, "impostor, clash and garbage at restart");
    assert_eq!((ab, ac, ca), (10, 10, 10), "{}", a.agent_log());
    let status = streams::status(a);
    let peers: Vec<(String, String)> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        peers,
        [
            ("b".to_owned(), "192.168.60.2".to_owned()),
            ("c".to_owned(), "192.168.60.3".to_owned())
        ],
        "b at its own address, no impostor, no evil"
    );
    stop(&mut agents);
}

/// A raw ICMP socket in `pod`: it sees every ICMP packet that reaches the pod.
fn icmp_listener(pod: &Netns) -> OwnedFd {
    pod.run(|| {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

/// ICMP (type, code, source) the raw socket `fd` received within `wait`.
fn icmp_received(fd: &OwnedFd, wait: Duration) -> Vec<(u8, u8, Ipv4Addr)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: a valid fd and a buffer of its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let ihl = usize::from(buf[0] & 0x0F) * 4;
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        got.push((buf[ihl], buf[ihl + 1], src));
    }
    got
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_nodes_own_icmp_errors_about_pod_traffic_are_encrypted() {
    let (a, b, _records) = cluster::pair_with_records("icmp");
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7430);
    // An address on b with no pod behind it: b answers "unreachable" itself.
    let absent = Ipv4Addr::new(10, 244, 2, 99);
    b.netns
        .ip(&["route", "add", "unreachable", &format!("{absent}/32")]);
    // Every error counts here: no rate limit on the ICMP errors b sends.
    b.netns
        .run(|| fs::write("/proc/sys/net/ipv4/icmp_ratelimit", "0").unwrap());
    let listener = icmp_listener(&a.pod);
    let wire = Wire::start(&nodes);
    let pod_ip = a.pod_ip;
    a.pod.run(move || {
        let socket = UdpSocket::bind((pod_ip, 0)).unwrap();
        // Unreachable: to the absent pod. TTL exceeded: TTL 2 dies at b (a forwards with 1).
        for _ in 0..3 {
            let _ = socket.send_to(b"secret payload", (absent, 7431));
        }
        socket.set_ttl(2).unwrap();
        for _ in 0..3 {
            let _ = socket.send_to(b"secret payload", (b.pod_ip, 7432));
        }
    });
    let errors = icmp_received(&listener, Duration::from_secs(3));
    let packets = wire.stop();
    eprintln!("ICMP errors that reached a's pod: {errors:?}");
    assert_no_plaintext(&packets, &nodes, "ICMP errors from the decrypting node");
    let from_b = |kind: u8| {
        errors
            .iter()
            .filter(|(t, _, src)| *t == kind && *src == b.wire_ip)
            .count()
    };
    assert!(
        from_b(3) > 0,
        "destination unreachable from b arrived: {errors:?}"
    );
    assert!(from_b(11) > 0, "time exceeded from b arrived: {errors:?}");
    stop(&mut agents);
}

/// A UDP echo in `netns` on `addr`: sends every datagram back where it came from.
fn echo(netns: &Netns, addr: SocketAddr) -> thread::JoinHandle<()> {
    let socket = netns.run(move || UdpSocket::bind(addr).unwrap());
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    })
}

/// Sends `count` datagrams from `src` (port 0: any) in `netns` to `dst`; replies received.
fn ask(netns: &Netns, src: Ipv4Addr, dst: SocketAddr, count: usize) -> usize {
    netns.run(move || {
        let socket = UdpSocket::bind((src, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = 0;
        let mut buf = [0u8; 64];
        for i in 0..count {
            let _ = socket.send_to(format!("{i}").as_bytes(), dst);
            if socket.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    })
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn host_traffic_and_service_dnat_to_remote_pods_are_encrypted() {
    let (a, b, _records) = cluster::pair_with_records("paths");
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7440);

    // A Service as kube-proxy writes it in iptables mode: KUBE-SERVICES jumps to the
    // service's chain, which jumps to an endpoint chain that DNATs to b's pod.
    let cluster_ip = "10.96.0.10";
    // A node reaches the service CIDR by its default route; these test nodes have none.
    a.netns.ip(&["route", "add", "10.96.0.0/12", "dev", "eth0"]);
    for rule in [
        "-t nat -N KUBE-SERVICES",
        "-t nat -N KUBE-SVC-XSTEER",
        "-t nat -N KUBE-SEP-XSTEER",
        "-t nat -A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
        "-t nat -A OUTPUT -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
        &format!(
            "-t nat -A KUBE-SERVICES -d {cluster_ip}/32 -p udp -m udp --dport 53 -j KUBE-SVC-XSTEER"
        ),
        "-t nat -A KUBE-SVC-XSTEER -j KUBE-SEP-XSTEER",
        &format!(
            "-t nat -A KUBE-SEP-XSTEER -p udp -m udp -j DNAT --to-destination {}:7441",
            b.pod_ip
        ),
    ] {
        let args: Vec<String> = rule.split(' ').map(str::to_owned).collect();
        let out = a.netns.run(move || {
            std::process::Command::new("iptables")
                .args(&args)
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "iptables {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let server = echo(&b.pod, (b.pod_ip, 7441).into());
    let wire = Wire::start(&nodes);
    // a's host (its node IP) to b's pod, and b's pod's replies to a's node IP.
    let host = ask(&a.netns, a.wire_ip, (b.pod_ip, 7441).into(), 10);
    // a's pod to the ClusterIP: DNATed after the classifier ran, so unmarked.
    let service = ask(
        &a.pod,
        a.pod_ip,
        (cluster_ip.parse::<Ipv4Addr>().unwrap(), 53).into(),
        10,
    );
    // a's host to the ClusterIP (DNAT in OUTPUT).
    let host_service = ask(
        &a.netns,
        a.wire_ip,
        (cluster_ip.parse::<Ipv4Addr>().unwrap(), 53).into(),
        10,
    );
    let packets = wire.stop();
    let esp = packets.iter().filter(|p| p.is_esp()).count();
    eprintln!(
        "host -> pod {host}/10, pod -> ClusterIP {service}/10, host -> ClusterIP \
         {host_service}/10; {esp} ESP frames"
    );
    assert_no_plaintext(&packets, &nodes, "host and Service paths");
    assert_eq!(
        (host, service, host_service),
        (10, 10, 10),
        "{}\n{}",
        agent_logs(&nodes),
        a.kernel_state()
    );
    assert!(esp >= 60, "every request and reply went as ESP: {esp}");
    drop(server);
    stop(&mut agents);
}

/// The key fingerprint of `node`'s shared OUT SA towards `peer` in the set its OUT policy names.
fn out_key(node: &Node, peer: &Node) -> String {
    let (src, dst) = (node.wire_ip, peer.wire_ip);
    node.netns.block_on(move || async move {
        let netlink = xsteer::kernel::Netlink::connect().unwrap();
        let in_use: Vec<u32> = xfrm::policies(&netlink)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|p| match p.action {
                xfrm::PolicyAction::Tunnel { dst: to, reqid, .. } if to == dst => Some(reqid),
                _ => None,
            })
            .collect();
        xfrm::states(&netlink)
            .await
            .unwrap()
            .into_iter()
            .find(|s| {
                s.src == src && s.dst == dst && s.cpu.is_none() && in_use.contains(&s.reqid())
            })
            .map(|s| s.crypto.fingerprint().to_string())
            .expect("an OUT SA in use")
    })
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_lost_state_directory_never_brings_a_key_back() {
    let (a, b, _records) = cluster::pair_with_records("lost");
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7450);
    let before = out_key(&a, &b);

    // A re-imaged node: xsteer uninstalled, its state directory gone, its config unchanged.
    let _ = agents[0].kill();
    let _ = agents[0].wait();
    let mut uninstall = a.xsteer("uninstall", &[]);
    let out = a.netns.run(move || uninstall.output().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(a.dir.join("state")).unwrap();
    let wire = Wire::start(&nodes);
    agents[0] = a.start_agent();
    connected(&nodes, 7451);
    let after = out_key(&a, &b);
    let packets = wire.stop();
    eprintln!("a's key towards b: {before} before, {after} after a lost state directory");
    assert_no_plaintext(&packets, &nodes, "after a lost state directory");
    assert_ne!(after, before, "the same key with a restarted counter");
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn sas_flushed_behind_the_agents_back_are_back_within_one_reconcile() {
    let (a, b, _records) = cluster::pair_with_records("flush");
    let nodes = [&a, &b];
    // A resync far away: only the kernel's notifications can bring the repair this fast.
    let mut agents = start_agents(&nodes, &["--resync", "3600"]);
    connected(&nodes, 7460);
    let wire = Wire::start(&nodes);
    let (streamed, flushed_at) = thread::scope(|s| {
        let stream = s.spawn(|| streams::stream(&a, &b, 7461, 100, 12));
        thread::sleep(Duration::from_secs(3));
        let at = Instant::now();
        a.netns.ip(&["xfrm", "state", "flush"]);
        (stream.join().unwrap(), at)
    });
    let packets = wire.stop();
    let repaired = a
        .agent_log()
        .contains("was removed from the kernel behind xsteer's back");
    eprintln!(
        "a's SAs flushed under a 100/s stream: {} of {} lost ({} ms at 100/s), repair logged: \
         {repaired}",
        streamed.lost(),
        streamed.sent,
        streamed.lost() * 10
    );
    assert_no_plaintext(&packets, &nodes, "SAs flushed");
    assert!(repaired, "{}", a.agent_log());
    assert!(
        streamed.lost() < 300,
        "traffic back within seconds of the flush, not at the next resync: {} lost, flushed \
         {:?} ago\n{}",
        streamed.lost(),
        flushed_at.elapsed(),
        agent_logs(&nodes)
    );

    // A deleted encrypt rule and route are back as fast.
    a.netns
        .ip(&["rule", "del", "fwmark", "0xe00/0xf00", "lookup", "200"]);
    a.netns
        .ip(&["route", "del", "10.244.2.0/24", "table", "200"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rules = a.netns.ip(&["rule", "show"]);
        let routes = a.netns.ip(&["route", "show", "table", "200"]);
        if rules.contains("fwmark 0xe00/0xf00") && routes.contains("10.244.2.0/24") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rule and route not repaired:\n{rules}\n{routes}\n{}",
            a.agent_log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pod_to_pod(&a, &b, 7462, 5), 5);
    stop(&mut agents);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_flood_of_idle_metrics_connections_starves_nothing() {
    let (a, b, _records) = cluster::pair_with_records("flood");
    let nodes = [&a, &b];
    let mut agents = start_agents(&nodes, &[]);
    connected(&nodes, 7470);
    // The test process needs the descriptors the agent must not spend.
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: 4096,
    };
    // SAFETY: a valid rlimit for the calling process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let metrics: SocketAddr = "127.0.0.1:9478".parse().unwrap();
    let idle: Vec<TcpStream> = a.netns.run(move || {
        (0..1_100)
            .filter_map(|_| TcpStream::connect_timeout(&metrics, Duration::from_millis(200)).ok())
            .collect()
    });
    eprintln!("{} idle connections open on a's /metrics", idle.len());

    // A pod appears while they are open: it is classified, and /healthz answers.
    let late = a.add_pod("pod7", Ipv4Addr::new(10, 244, 1, 7));
    wait_for_log(
        &a,
        "pod veth pod7: classifier attached",
        Duration::from_secs(10),
    );
    let healthz = a.netns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = (|| -> std::io::Result<String> {
                use std::io::{Read, Write};
                let mut s = TcpStream::connect_timeout(&metrics, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            })();
            match answer {
                Ok(text) if text.contains("200 OK") => return Instant::now(),
                _ if Instant::now() > deadline => panic!("/healthz never answered: {answer:?}"),
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    let _ = healthz;
    let wire = Wire::start(&nodes);
    let got = cluster::exchange(
        (&late, Ipv4Addr::new(10, 244, 1, 7)),
        (&b.pod, b.pod_ip),
        7471,
        10,
        Duration::from_secs(3),
    );
    assert_no_plaintext(&wire.stop(), &nodes, "the new pod under a metrics flood");
    assert_eq!(got, 10);
    drop(idle);
    stop(&mut agents);
}
