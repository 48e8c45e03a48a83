//! The lab's pods as real CNI plugins wire them (Debian's `ptp` and `host-local`, run through
//! the lab's runtime half of CNI), on the host kernel, without agents: every pod gets its
//! planned address behind a veth that ptp names, pods reach each other across nodes by the
//! nodes' routes, DEL releases the address and the veth, and a pod can be added again.
//!
//! Encryption needs ESP and runs in the VM bed (`userspace/tests/e2e/lab.rs`).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod support;

use std::{fs, path::PathBuf};

use support::require_root;
use xsteer::lab::{
    self,
    capture::Capture,
    netns, pods,
    probe::{self, Proto},
    runtime,
    topology::{self, LabPod, Size, Stack},
};

/// The tests share the lab's namespace names: one at a time.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Removes the lab's namespaces and files when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = topology::wire_down();
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// ICMP and UDP from `from` to `to` (the lab's probes; UDP needs `to`'s echo server).
fn reach(from: &LabPod, to: &LabPod) {
    for proto in [Proto::Icmp, Proto::Udp] {
        probe::check(from, to, proto)
            .unwrap_or_else(|e| panic!("{} {} -> {}: {e:#}", proto.name(), from.ip, to.ip));
    }
}

#[test]
fn ptp_and_host_local_wire_the_planned_pods_and_del_undoes_it() {
    if !require_root("ptp_and_host_local_wire_the_planned_pods_and_del_undoes_it") {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        netns::list(topology::PREFIX).is_empty(),
        "a lab is up on this machine (namespaces xsl-*): `xsteer lab down` first"
    );
    let dir = std::env::temp_dir().join(format!("xsteer-lab-cni-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let nodes = topology::plan(Size { nodes: 2, pods: 2 });
    topology::wire_up(&nodes).unwrap();
    for node in &nodes {
        pods::write_conflist(&dir, node).unwrap();
    }

    let mut host_veths = Vec::new();
    for node in &nodes {
        for pod in &node.pods {
            let result = pods::add(&dir, node, pod).unwrap();
            let veths = runtime::host_interfaces(&result);
            assert_eq!(veths.len(), 1, "{result}");
            let link = netns::ip_in(&node.netns, &["-d", "link", "show", &veths[0]]).unwrap();
            assert!(link.contains("veth"), "{link}");
            let addr = netns::ip_in(&pod.netns, &["-4", "addr", "show", "eth0"]).unwrap();
            assert!(addr.contains(&format!("inet {}/", pod.ip)), "{addr}");
            host_veths.push((node.netns.clone(), veths[0].clone()));
        }
    }
    // Across nodes by the nodes' routes, on the same node by ptp's host routes.
    let all: Vec<LabPod> = nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let servers = probe::serve(&all).unwrap();
    let a = &nodes[0].pods[0];
    reach(a, &nodes[1].pods[1]);
    reach(a, &nodes[0].pods[1]);
    drop(servers);

    // DEL: the veth and the lease go; the same pod comes back at the same address.
    let (node, pod) = (&nodes[1], &nodes[1].pods[0]);
    let lease = dir
        .join(&node.name)
        .join("cni/ipam/lab")
        .join(pod.ip.to_string());
    assert!(lease.exists(), "{}", lease.display());
    pods::del(&dir, node, pod).unwrap();
    assert!(!lease.exists(), "{} survived DEL", lease.display());
    let (ns, veth) = &host_veths[2];
    assert!(
        netns::ip_in(ns, &["link", "show", veth]).is_err(),
        "{veth} survived DEL"
    );
    assert!(!netns::list(topology::PREFIX).contains(&pod.netns));
    pods::add(&dir, node, pod).unwrap();
    let _servers = probe::serve(std::slice::from_ref(pod)).unwrap();
    reach(a, pod);
}

/// A dual-stack lab without agents: ptp and host-local give every pod an address of each family
/// from the two ranges, and the nodes' routes carry IPv6 between pods of different nodes in
/// plaintext (nothing encrypts here), which the lab's census sees as IPv6 pod plaintext: on a
/// dual-stack lab with agents, it is xsteer that makes that count 0.
#[test]
fn a_dual_stack_lab_routes_plaintext_ipv6_between_nodes_without_xsteer() {
    if !require_root("a_dual_stack_lab_routes_plaintext_ipv6_between_nodes_without_xsteer") {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        netns::list(topology::PREFIX).is_empty(),
        "a lab is up on this machine (namespaces xsl-*): `xsteer lab down` first"
    );
    let dir = std::env::temp_dir().join(format!("xsteer-lab-cni6-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let nodes = topology::plan_stack(Size { nodes: 2, pods: 2 }, Stack::Dual);
    topology::wire_up(&nodes).unwrap();
    for node in &nodes {
        pods::write_conflist(&dir, node).unwrap();
    }
    for node in &nodes {
        for pod in &node.pods {
            let result = pods::add(&dir, node, pod).unwrap();
            assert_eq!(
                runtime::addresses(&result),
                [pod.ip.to_string(), pod.ip6.unwrap().to_string()],
                "{result}"
            );
            let addr = netns::ip_in(&pod.netns, &["-6", "addr", "show", "eth0"]).unwrap();
            assert!(
                addr.contains(&format!("inet6 {}/64", pod.ip6.unwrap())),
                "{addr}"
            );
            let route = netns::ip_in(&pod.netns, &["-6", "route", "show", "default"]).unwrap();
            assert!(route.contains("via fd00:10:244:"), "{route}");
        }
    }
    let all: Vec<LabPod> = nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let _servers = probe::serve(&all).unwrap();
    let captures: Vec<Capture> = nodes
        .iter()
        .map(|n| Capture::start(&n.netns, "eth0").unwrap())
        .collect();
    let a = &nodes[0].pods[0];
    for to in [&nodes[1].pods[1], &nodes[0].pods[1]] {
        for proto in Proto::ALL {
            probe::check6(a, to, proto)
                .unwrap_or_else(|e| panic!("{} {:?} -> {:?}: {e:#}", proto.name(), a.ip6, to.ip6));
        }
        probe::check(a, to, Proto::Udp).unwrap();
    }
    let packets: Vec<_> = captures
        .iter()
        .flat_map(|c| c.take_all().unwrap())
        .collect();
    let census = lab::census_all(&packets);
    eprintln!("without xsteer: {census:?}");
    // ICMPv6, TCP, UDP out and back: each crosses the wire in clear, sent by each node once.
    assert!(census.plaintext6 >= 6, "{census:?}");
    assert!(census.plaintext >= 2, "{census:?}");
    assert_eq!(census.esp, 0, "{census:?}");
}
