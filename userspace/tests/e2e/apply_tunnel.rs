//! Two nodes configured only with `xsteer apply`, pods behind them, the pod classifier on each
//! pod veth: pod-to-pod traffic crosses the wire as ESP only, in both directions. Applying again
//! changes nothing, a dry run lists changes without making them, and foreign objects survive.

use std::{process::Command, time::Duration};

use aya::programs::{TcAttachType, tc};
use xsteer::dataplane::Dataplane;

use crate::{
    cluster::{self, Node},
    wire::Capture,
};

const DATAGRAMS: usize = 20;

/// Loads the programs against the node's pinned maps and attaches the classifier to the pod
/// veth, as the agent does. Detached when the returned dataplane is dropped.
fn attach_classifier(node: &Node) -> Dataplane {
    let pins = node.pin_dir();
    node.netns.run(move || {
        let mut dataplane = Dataplane::load_pinned(&pins).unwrap();
        dataplane.load_programs().unwrap();
        let _ = tc::qdisc_add_clsact("pod0");
        dataplane
            .pod_classifier()
            .unwrap()
            .attach("pod0", TcAttachType::Ingress)
            .unwrap();
        dataplane
    })
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap_or_default()
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn two_nodes_configured_by_apply_exchange_esp_only() {
    let (a, b) = cluster::pair("apply");
    // Someone else's IPsec and routing on node A, which xsteer must leave exactly as they are.
    for cmd in [
        "xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 7 mode tunnel aead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128",
        "xfrm policy add dir out src 10.9.0.0/16 dst 10.8.0.0/16 priority 5 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 7",
        "rule add fwmark 0x1/0x1 lookup 100 priority 900",
        "route add 10.77.0.0/16 via 192.168.60.9 table 200",
    ] {
        a.netns.ip(&cmd.split(' ').collect::<Vec<_>>());
    }
    let foreign_before = a.kernel_state();

    // A dry run lists what it would do and does nothing.
    let (ok, out, err) = a.apply(&["--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("would add SA 192.168.60.1 -> 192.168.60.2"),
        "{out}"
    );
    assert!(
        last_line(&out).ends_with("changes (dry run: none made)"),
        "{out}"
    );
    assert!(
        !out.contains("6a0c3c1e"),
        "key material in the output:\n{out}"
    );
    assert_eq!(
        a.kernel_state(),
        foreign_before,
        "a dry run changed the kernel"
    );

    for node in [&a, &b] {
        let (ok, out, err) = node.apply(&[]);
        assert!(ok, "apply on {}: {out}{err}", node.name);
        eprintln!("apply on {}: {}", node.name, last_line(&out));
        assert_ne!(last_line(&out), "0 changes", "{out}");
        // Again: nothing to do.
        let (ok, again, err) = node.apply(&[]);
        assert!(ok, "{again}{err}");
        assert_eq!(
            last_line(&again),
            "0 changes",
            "the second apply on {} changed things:\n{again}",
            node.name
        );
    }
    let state = a.kernel_state();
    for line in foreign_before.lines().filter(|l| {
        l.contains("192.0.2.")
            || l.contains("10.9.0.0")
            || l.contains("lookup 100")
            || l.contains("10.77.0.0")
    }) {
        assert!(state.contains(line), "foreign line gone: {line}\n{state}");
    }
    assert!(state.contains("fwmark 0xe00/0xf00 lookup 200"), "{state}");
    // Both generations' SAs, each with its own transform, one per direction.
    assert_eq!(
        state.matches("aead rfc4106(gcm(aes))").count(),
        3,
        "2 of xsteer's, 1 foreign:\n{state}"
    );
    assert_eq!(
        state.matches("auth-trunc hmac(sha256)").count(),
        2,
        "{state}"
    );
    assert_eq!(state.matches("enc cbc(aes)").count(), 2, "{state}");
    assert!(
        state.contains("10.244.2.0/24 via 192.168.60.2 dev eth0 table 200 proto 120"),
        "{state}"
    );

    let dataplanes = [attach_classifier(&a), attach_classifier(&b)];
    let wire_a = Capture::start(&a.netns, "eth0");
    let wire_b = Capture::start(&b.netns, "eth0");

    let wait = Duration::from_secs(10);
    let a_to_b = cluster::exchange(
        (&a.pod, a.pod_ip),
        (&b.pod, b.pod_ip),
        7001,
        DATAGRAMS,
        wait,
    );
    let b_to_a = cluster::exchange(
        (&b.pod, b.pod_ip),
        (&a.pod, a.pod_ip),
        7002,
        DATAGRAMS,
        wait,
    );
    let (sent_a, sent_b) = (wire_a.take(), wire_b.take());
    for (from, to, sent, delivered) in [(&a, &b, &sent_a, a_to_b), (&b, &a, &sent_b, b_to_a)] {
        let esp = sent
            .iter()
            .filter(|p| p.is_esp() && p.src == from.wire_ip && p.dst == to.wire_ip)
            .count();
        let plaintext = sent.iter().filter(|p| p.is_udp_to(to.pod_ip)).count();
        eprintln!(
            "{} -> {}: {esp} ESP, {plaintext} plaintext on the wire, {delivered} delivered",
            from.name, to.name
        );
        assert_eq!(
            plaintext, 0,
            "pod traffic {} -> {} left in plaintext: {sent:?}",
            from.name, to.name
        );
        assert_eq!(
            esp, DATAGRAMS,
            "every datagram {} -> {} crosses as ESP",
            from.name, to.name
        );
        assert_eq!(
            delivered, DATAGRAMS,
            "every datagram {} -> {} is delivered",
            from.name, to.name
        );
        // The wire SPI names the sender (node ID in the top 16 bits) and the newest generation
        // (the low 4 bits).
        let sender_id = if from.name == "a" { 1 } else { 2 };
        let spis: Vec<u32> = sent.iter().filter_map(|p| p.spi).collect();
        assert!(
            spis.iter()
                .all(|&spi| spi >> 16 == sender_id && spi & 0xF == 4),
            "{spis:x?}"
        );
    }

    // Under `ip netns exec` (a mount namespace of its own, without bpffs) apply still works,
    // and says that the maps it pins vanish with the command.
    let mut apply = Command::new("ip");
    apply
        .args([
            "netns",
            "exec",
            &a.netns.name,
            env!("CARGO_BIN_EXE_xsteer"),
            "apply",
        ])
        .arg("--config")
        .arg(a.config())
        .arg("--pin-dir")
        .arg(a.pin_dir())
        .arg("--state-dir")
        .arg(a.dir.join("state"));
    let out = apply.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "apply under ip netns exec: {}\n{stderr}",
        last_line(&stdout)
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("warning: bpffs was not mounted at /sys/fs/bpf in this mount namespace"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(" SA "),
        "the kernel's SAs are as the first apply left them:\n{stdout}"
    );

    // Uninstall removes xsteer's objects and nothing else: node A is as it was before.
    drop(dataplanes);
    let mut uninstall = a.xsteer("uninstall", &[]);
    let out = a.netns.run(move || uninstall.output().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no longer encrypted"), "{text}");
    assert_eq!(
        a.kernel_state(),
        foreign_before,
        "uninstall left or removed something:\n{text}"
    );
    assert!(!a.pin_dir().exists(), "the pins are gone");
}
