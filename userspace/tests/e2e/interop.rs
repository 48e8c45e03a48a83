//! A peer that is not xsteer, configured only from `xsteer peer export`: docs/interop.md run as
//! it stands. Node a runs the agent from /etc/xsteer with the default state and pin
//! directories, as the page has it; node b runs nothing of xsteer, only the commands of the
//! page's blocks marked for it. Every `sh` block of the page is run, in order, in the node's
//! namespace it is marked for, from one working directory (which stands for copying `b.sh`).
//! Checked: ping, TCP and UDP between the pods both ways, b's SAs with or without ESN as
//! configured, the page's key rotation losing no datagram of two streams, running the script
//! again deleting the policies and routes an earlier one left but not b's own, and no pod
//! packet on the wire outside ESP.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use xsteer::lab::probe::{self, Proto};

use crate::{
    cluster::{self, Node},
    streams::{Wire, agent_logs, sas, spis_on_wire, stop, stream},
};

const DOC: &str = include_str!("../../../docs/interop.md");
const ETC: &str = "/etc/xsteer";
const ECHO_PORT: u16 = 7601;

/// One `sh` block of the page and the node it runs on.
struct Block {
    on: char,
    script: String,
}

/// The page's `sh` blocks, each after a `<!-- on a -->` or `<!-- on b -->` line; a block
/// without one fails the test, so that no command of the page goes unrun.
fn blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut on = None;
    let mut lines = DOC.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(node) = line
            .strip_prefix("<!-- on ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        {
            on = node.chars().next();
        } else if line == "```sh" {
            let script: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let on = on
                .take()
                .unwrap_or_else(|| panic!("a block of docs/interop.md names no node: {script:?}"));
            blocks.push(Block {
                on,
                script: script.join("\n"),
            });
        }
    }
    blocks
}

/// /etc/xsteer holding node a's config and key file, and the default state and pin
/// directories clear; all removed again when dropped.
struct Etc;

impl Etc {
    fn install(a: &Node, esn: bool) -> Etc {
        // These are the machine's own paths: outside the VM bed's throwaway root, an operator's
        // files may be there.
        for dir in Etc::DIRS {
            assert!(
                std::env::var_os("XSTEER_VM").is_some() || !Path::new(dir).exists(),
                "{dir} exists and this is not the VM bed (XSTEER_VM unset): refusing to replace it"
            );
        }
        Etc::clear();
        fs::create_dir_all(ETC).unwrap();
        let mut config = fs::read_to_string(a.config()).unwrap();
        // The config's last table is peer b's.
        if !esn {
            config.push_str("esn = false\n");
        }
        fs::write(Path::new(ETC).join("xsteer.toml"), config).unwrap();
        let keys = Path::new(ETC).join("keys");
        fs::copy(a.dir.join("keys"), &keys).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o600)).unwrap();
        Etc
    }

    /// The config's, and the agent's default state and pin directories.
    const DIRS: [&str; 3] = [ETC, "/var/lib/xsteer", "/sys/fs/bpf/xsteer"];

    fn clear() {
        for dir in Etc::DIRS {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Etc {
    fn drop(&mut self) {
        Etc::clear();
    }
}

/// Runs `block` with `sh -e` in its node's namespace, from `workdir`, with `xsteer` on the
/// PATH.
fn run(block: &Block, nodes: (&Node, &Node), workdir: &Path) {
    let node = match block.on {
        'a' => nodes.0,
        'b' => nodes.1,
        other => panic!("docs/interop.md: no node {other}"),
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_xsteer"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command
        .args(["-e", "-c", &block.script])
        .current_dir(workdir)
        .env("PATH", path);
    let out = node.netns.run(move || command.output().unwrap());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    eprintln!(
        "on {}: {}\n{}",
        block.on,
        block.script,
        text(&out.stderr).trim_end()
    );
    assert!(
        out.status.success(),
        "on {}: {} failed:\n{}{}\n{}",
        block.on,
        block.script,
        text(&out.stdout),
        text(&out.stderr),
        nodes.0.agent_log()
    );
}

/// Checks ping, TCP and UDP from each pod to the other's echo server, retrying for a while.
fn reachable(a: &Node, b: &Node) -> Vec<String> {
    let mut failed = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        for proto in Proto::ALL {
            let dst = IpAddr::V4(to.pod_ip);
            let deadline = Instant::now() + Duration::from_secs(20);
            let result = loop {
                let result = from.pod.run(move || probe::reach(dst, ECHO_PORT, proto));
                if result.is_ok() || Instant::now() > deadline {
                    break result;
                }
                thread::sleep(Duration::from_millis(500));
            };
            match result {
                Ok(()) => eprintln!("{} -> {} {}: ok", from.name, to.name, proto.name()),
                Err(e) => failed.push(format!(
                    "{} -> {} {}: {e:#}",
                    from.name,
                    to.name,
                    proto.name()
                )),
            }
        }
    }
    failed
}

/// Whether node `on` holds an SA from node `from_id` of key generation `generation`.
fn holds(on: &Node, from_id: u32, generation: u32) -> bool {
    sas(&on.netns)
        .iter()
        .any(|sa| sa.spi >> 16 == from_id && sa.spi & 0xF == generation)
}

fn peer_configured_only_from_export(esn: bool) {
    let (a, b) = cluster::pair(if esn { "iop" } else { "iopn" });
    let blocks = blocks();
    assert_eq!(
        blocks.iter().map(|b| b.on).collect::<String>(),
        "ababaabab",
        "the steps of docs/interop.md, as this test follows them"
    );
    let _etc = Etc::install(&a, esn);
    let workdir = a.dir.join("operator");
    fs::create_dir_all(&workdir).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_xsteer"));
    agent.args(["agent", "--config", "/etc/xsteer/xsteer.toml"]);
    let mut agents = vec![a.spawn_agent(agent)];
    let nodes = [&a, &b];
    // What each node sends on its uplink.
    let wire = Wire::start(&nodes);
    let _servers: Vec<_> = nodes
        .iter()
        .map(|n| n.pod.run(|| probe::serve_here(ECHO_PORT).unwrap()))
        .collect();

    // Export on a, run on b.
    run(&blocks[0], (&a, &b), &workdir);
    run(&blocks[1], (&a, &b), &workdir);
    let failed = reachable(&a, &b);
    assert!(failed.is_empty(), "{failed:#?}\n{}", agent_logs(&[&a]));
    let b_sas = sas(&b.netns);
    let flagged = b_sas
        .iter()
        .filter(|sa| sa.flags.iter().any(|f| f == "esn"))
        .count();
    eprintln!(
        "b holds {} SAs, {flagged} with ESN; a holds {}",
        b_sas.len(),
        sas(&a.netns).len()
    );
    // Keys 3 and 4: an IN SA of each from a, the OUT SA of 4.
    assert_eq!(b_sas.len(), 3);
    assert_eq!(flagged, if esn { 3 } else { 0 });
    leftovers_go_and_bs_own_stay(&a, &b, &blocks[1], &workdir);
    let failed = reachable(&a, &b);
    assert!(failed.is_empty(), "{failed:#?}\n{}", agent_logs(&[&a]));

    if esn {
        rotate_under_streams(&a, &b, &blocks, &workdir);
    }
    let packets = wire.stop();
    stop(&mut agents);
    let pods = |ip: Ipv4Addr| ip.octets()[..2] == [10, 244];
    let outside_esp = packets
        .iter()
        .filter(|p| !p.is_esp() && (pods(p.src) || pods(p.dst)))
        .count();
    let esp = packets.iter().filter(|p| p.is_esp()).count();
    eprintln!("on the wire: {esp} ESP, {outside_esp} pod packets outside ESP");
    assert_eq!(outside_esp, 0, "pod traffic on the wire outside ESP");
    assert!(esp > 0);
    if esn {
        // Each side moved from generation 4 to 5, a when its agent read the key file, b when
        // it ran the last script.
        for (from, to) in [(&a, &b), (&b, &a)] {
            let generations: Vec<u32> = spis_on_wire(&packets, from, to)
                .iter()
                .map(|spi| spi & 0xF)
                .collect();
            assert_eq!(
                generations.first(),
                Some(&4),
                "{} -> {}",
                from.name,
                to.name
            );
            assert_eq!(generations.last(), Some(&5), "{} -> {}", from.name, to.name);
        }
    }
}

/// Policies and a route between a and b as an earlier script would have left them (xsteer's
/// policy priority, its route protocol) for a pod CIDR a no longer has, beside the same of b's
/// own operator: running `b.sh` again deletes the first and keeps the second, and every SA.
fn leftovers_go_and_bs_own_stay(a: &Node, b: &Node, script: &Block, workdir: &Path) {
    const PRIORITY: &str = "0x78730010";
    let (a_ip, b_ip) = (a.wire_ip.to_string(), b.wire_ip.to_string());
    let policy = |gone: &str, priority: &str| {
        for (src, dst, dir, tmpl) in [
            ("10.244.2.0/24", gone, "out", [&b_ip, &a_ip]),
            (gone, "10.244.2.0/24", "in", [&a_ip, &b_ip]),
        ] {
            b.netns.ip(&[
                "xfrm", "policy", "update", "src", src, "dst", dst, "dir", dir, "priority",
                priority, "tmpl", "src", tmpl[0], "dst", tmpl[1], "proto", "esp", "mode", "tunnel",
            ]);
        }
    };
    policy("10.244.9.0/24", PRIORITY);
    policy("10.244.8.0/24", "0");
    b.netns.ip(&[
        "route",
        "replace",
        "10.244.9.0/24",
        "via",
        &a_ip,
        "proto",
        "0x78",
    ]);
    b.netns
        .ip(&["route", "replace", "10.244.8.0/24", "via", &a_ip]);
    let spis = |n: &Node| sas(&n.netns).iter().map(|sa| sa.spi).collect::<Vec<_>>();
    let before = spis(b);

    run(script, (a, b), workdir);
    let policies = b.netns.ip(&["-o", "xfrm", "policy", "list"]);
    let routes = b.netns.ip(&["route", "show"]);
    eprintln!("b's policies after the script ran again:\n{policies}b's routes:\n{routes}");
    let has_policy = |cidr: &str| policies.contains(&format!(" {cidr} "));
    assert!(!has_policy("10.244.9.0/24"), "a leftover policy stayed");
    assert!(!routes.contains("10.244.9.0/24"), "a leftover route stayed");
    assert!(has_policy("10.244.8.0/24"), "b's own policies went");
    assert!(routes.contains("10.244.8.0/24 via"), "b's own route went");
    let listed = b
        .netns
        .ip(&["-o", "xfrm", "policy", "list", "priority", PRIORITY]);
    // Out, in and fwd for b's pods to a's pods, b to a's pods and b's pods to a.
    assert_eq!(listed.lines().count(), 9, "{listed}");
    assert_eq!(spis(b), before, "running the script again changed b's SAs");
}

/// The page's rotation (blocks 2 to 8) while a stream runs each way between the pods: none
/// loses a datagram, and each node ends with the SAs of the new generation alone.
fn rotate_under_streams(a: &Node, b: &Node, blocks: &[Block], workdir: &Path) {
    const SECONDS: u32 = 30;
    let (ab, ba, left) = thread::scope(|s| {
        let start = Instant::now();
        let ab = s.spawn(|| stream(a, b, 7602, 100, SECONDS));
        let ba = s.spawn(|| stream(b, a, 7603, 100, SECONDS));
        thread::sleep(Duration::from_secs(3));
        run(&blocks[2], (a, b), workdir);
        run(&blocks[3], (a, b), workdir);
        assert!(holds(b, 1, 5), "b receives generation 5");
        assert!(!holds(a, 2, 5), "a cannot receive generation 5 yet");
        run(&blocks[4], (a, b), workdir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !holds(a, 2, 5) {
            assert!(Instant::now() < deadline, "{}", agent_logs(&[a]));
            thread::sleep(Duration::from_millis(200));
        }
        run(&blocks[5], (a, b), workdir);
        run(&blocks[6], (a, b), workdir);
        // Generations 3 and 4 leave a's key file; b's script deletes its SAs of them.
        run(&blocks[7], (a, b), workdir);
        run(&blocks[8], (a, b), workdir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while [3, 4].iter().any(|&g| holds(a, 1, g) || holds(a, 2, g)) {
            assert!(Instant::now() < deadline, "{}", agent_logs(&[a]));
            thread::sleep(Duration::from_millis(200));
        }
        for node in [a, b] {
            let spis: Vec<u32> = sas(&node.netns).iter().map(|sa| sa.spi).collect();
            assert_eq!(spis.len(), 2, "{}: {spis:x?}", node.name);
            assert!(
                spis.iter().all(|spi| spi & 0xF == 5),
                "{}: {spis:x?}",
                node.name
            );
        }
        let left = Duration::from_secs(SECONDS.into()).checked_sub(start.elapsed());
        (ab.join().unwrap(), ba.join().unwrap(), left)
    });
    eprintln!(
        "through the rotation: a -> b {} of {} lost, b -> a {} of {} lost; the streams went on \
         {left:?} after the last step",
        ab.lost(),
        ab.sent,
        ba.lost(),
        ba.sent
    );
    assert!(
        left.is_some_and(|left| left >= Duration::from_secs(5)),
        "the rotation took longer than the streams: nothing measured after its last step"
    );
    assert_eq!((ab.lost(), ba.lost()), (0, 0), "{}", agent_logs(&[a]));
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_peer_configured_only_from_export_talks_with_esn() {
    peer_configured_only_from_export(true);
}

#[test]
#[ignore = "needs a kernel with ESP: runs in the VM bed (cargo xtask test)"]
fn a_peer_configured_only_from_export_talks_without_esn() {
    peer_configured_only_from_export(false);
}
