//! `xsteer lab` end to end: three nodes with two pods each, every cross-node pair over ICMP, TCP
//! and UDP, the wire proven ESP-only, and nothing left behind.

use std::path::Path;

use crate::labs::xsteer;

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn the_lab_proves_every_cross_node_pod_packet_is_esp() {
    let dir = std::env::temp_dir().join("xsteer-e2e-lab");
    let dir = dir.to_str().unwrap();
    let _ = xsteer(&["lab", "down", "--dir", dir]);

    let (ok, text) = xsteer(&["lab", "up", "--nodes", "3", "--pods", "2", "--dir", dir]);
    assert!(ok, "lab up:\n{text}");
    let (ok, text) = xsteer(&["lab", "up", "--dir", dir]);
    assert!(
        !ok && text.contains("lab down"),
        "a second up is refused:\n{text}"
    );

    let (ok, text) = xsteer(&["lab", "status", "--dir", dir]);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches("running").count() - text.matches("NOT running").count(),
        3,
        "{text}"
    );
    let (ok, text) = xsteer(&[
        "lab",
        "exec",
        "xsl-node2-pod1",
        "--",
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        ok && text.contains("inet 10.244.2.2/24"),
        "lab exec:\n{text}"
    );

    let (ok, text) = xsteer(&["lab", "test", "--dir", dir]);
    eprintln!("{text}");
    assert!(ok, "lab test:\n{text}");
    assert!(text.trim_end().ends_with("plaintext packets: 0"), "{text}");
    for proto in ["icmp", "tcp ", "udp "] {
        assert!(
            text.contains(&format!("over {proto}: 24/24 ok")),
            "{proto}:\n{text}"
        );
    }

    let (ok, text) = xsteer(&["lab", "down", "--dir", dir]);
    assert!(ok, "lab down:\n{text}");
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("xsl-"))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new("/sys/fs/bpf/xsteer-lab-node1").exists());
    assert!(!Path::new(dir).exists());
}
