//! Maps carry BTF, so `bpftool map dump pinned` prints field names, not hex; and what someone
//! writes into a pinned map with bpftool is read back as an error, not a panic; nor is a pinned
//! map of another layout adopted.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{fs, path::PathBuf, process::Command};

use xsteer::dataplane::{Dataplane, DataplaneError, bpffs};
use xsteer_bpf_tests::{
    dataplane,
    topology::{PEER_B_IP, PEER_B_WIRE_SPI, populate},
};
use xsteer_common::counters::Counter;
use xsteer_common::maps::{
    CLUSTER_POD_CIDRS, CLUSTER_POD_CIDRS_V6, COUNTERS, LOCAL_POD_CIDRS, LOCAL_POD_CIDRS_V6,
    PEER_ADDRS_V6, PEER_NODES_V6, PEER_SPI_SETS, PEER_SPIS, POD_CIDR_GRID_V6, REMOTE_POD_CIDRS,
    REMOTE_POD_CIDRS_V6, REMOTE_POD_SLOTS_V6,
};

/// `peer_spi_sets` as a build of another layout had it: a hash of 16 entries.
const OLD_PEER_SPI_SETS: [&str; 10] = [
    "type", "hash", "key", "8", "value", "16", "entries", "16", "name", "old",
];

/// A pin directory of this test's own, removed when dropped.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn bpftool(args: &[&str], path: &PathBuf, rest: &[&str]) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .arg(path)
        .args(rest)
        .output()
        .expect("bpftool is installed by `cargo xtask test`");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces the pin of map `name` under `dir` with a map bpftool creates from `spec` (type, key
/// and value sizes, entries, name), as a build with another layout would have left it.
fn pin_stale(dir: &PinDir, name: &str, spec: &[&str]) -> PathBuf {
    let stale = dir.0.join(name);
    fs::remove_file(&stale).unwrap();
    bpftool(&["map", "create"], &stale, spec);
    stale
}

/// The maps of a populated object, pinned in a directory of `test`'s own; the object is gone,
/// as after an agent's exit.
fn populated_pins(test: &str, tag: &str) -> Option<PinDir> {
    let mut dp = dataplane(test)?;
    populate(&mut dp);
    Some(pinned(&mut dp, tag))
}

fn bpftool_dump(path: &PathBuf) -> String {
    bpftool(&["--json", "map", "dump", "pinned"], path, &[])
}

/// Pins the maps of `dp` under a directory of this test's own.
fn pinned(dp: &mut Dataplane, test: &str) -> PinDir {
    bpffs::ensure_mounted().expect("mount bpffs");
    let dir = PinDir(
        PathBuf::from(bpffs::BPFFS_ROOT).join(format!("xsteer-test-{}-{test}", std::process::id())),
    );
    fs::create_dir_all(&dir.0).unwrap();
    dp.pin_maps(&dir.0).unwrap();
    dir
}

#[test]
fn bpftool_dump_of_pinned_maps_shows_field_names() {
    let Some(mut dp) = dataplane("bpftool_dump_of_pinned_maps_shows_field_names") else {
        return;
    };
    populate(&mut dp);
    let dir = pinned(&mut dp, "dump");

    let remote = bpftool_dump(&dir.0.join(REMOTE_POD_CIDRS));
    for expected in [
        r#""prefix_len":24"#,
        r#""data":[10,244,2,0]"#,
        r#""node_id":2"#,
        r#""generation":3"#,
        r#""flags":0"#,
    ] {
        assert!(
            remote.contains(expected),
            "{expected} missing from {remote}"
        );
    }
    let spis = bpftool_dump(&dir.0.join(PEER_SPIS));
    for expected in [
        r#""node_ip":[192,168,0,2]"#,
        r#""spi":131075"#,
        r#""packets":0"#,
    ] {
        assert!(spis.contains(expected), "{expected} missing from {spis}");
    }
    // Peer B's set: node ID 2, its SPI's tags 0 and generation 3 (bit 3).
    let set = bpftool(
        &["--json", "map", "lookup", "pinned"],
        &dir.0.join(PEER_SPI_SETS),
        &["key", "2", "0", "0", "0"],
    );
    for expected in [
        r#""node_ip":[192,168,0,2]"#,
        r#""flags":0"#,
        r#"{"tags":0,"generations":8}"#,
    ] {
        assert!(set.contains(expected), "{expected} missing from {set}");
    }
    assert!(bpftool_dump(&dir.0.join(COUNTERS)).contains(r#""values":"#));
    let space = bpftool_dump(&dir.0.join(CLUSTER_POD_CIDRS));
    for expected in [
        r#""count":2"#,
        r#"{"addr":[10,244,0,0],"mask":[255,255,0,0]}"#,
        r#"{"addr":[10,250,0,0],"mask":[255,255,0,0]}"#,
    ] {
        assert!(space.contains(expected), "{expected} missing from {space}");
    }
}

#[test]
fn an_lpm_key_with_host_bits_written_by_bpftool_is_an_error_naming_it() {
    let Some(mut dp) =
        dataplane("an_lpm_key_with_host_bits_written_by_bpftool_is_an_error_naming_it")
    else {
        return;
    };
    populate(&mut dp);
    let dir = pinned(&mut dp, "host-bits");
    // 10.244.9.1/24: prefix_len 24 (u32, little-endian), then the address; value: node 1.
    bpftool(
        &["map", "update", "pinned"],
        &dir.0.join(LOCAL_POD_CIDRS),
        &[
            "key", "24", "0", "0", "0", "10", "244", "9", "1", "value", "1", "0", "0", "0",
        ],
    );
    match dp.local_pod_cidrs().unwrap().entries() {
        Err(e @ DataplaneError::BadEntry { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(LOCAL_POD_CIDRS) && text.contains("10.244.9.1/24"),
                "{text}"
            );
        }
        other => panic!("expected an error naming the key, got {other:?}"),
    }
}

#[test]
fn pinned_maps_are_adopted_and_one_of_another_layout_is_refused_by_name() {
    let Some(dir) = populated_pins(
        "pinned_maps_are_adopted_and_one_of_another_layout_is_refused_by_name",
        "layout",
    ) else {
        return;
    };
    let mut adopted = Dataplane::load_pinned(&dir.0).expect("the maps this build pinned");
    assert_eq!(
        adopted.peer_spis().unwrap().keys().unwrap(),
        [(PEER_B_IP, PEER_B_WIRE_SPI)]
    );
    drop(adopted);

    // What an older build would have left: a map of this name with another type and sizes.
    let stale = pin_stale(&dir, PEER_SPI_SETS, &OLD_PEER_SPI_SETS);
    match Dataplane::load_pinned(&dir.0) {
        Err(e @ DataplaneError::PinnedLayout { .. }) => {
            let text = e.to_string();
            let path = stale.display().to_string();
            assert!(
                text.contains(&path)
                    && text.contains("type Hash, 16 entries")
                    && text.contains("rm "),
                "{text}"
            );
        }
        Err(other) => panic!("expected PinnedLayout, got {other}"),
        Ok(_) => panic!("a map of another layout was adopted"),
    }
}

/// A build that adds a counter changes the size of `counters`: the agent and `apply`
/// (`load_pinned_as_owner`) replace that map of statistics with an empty one and say so, and
/// adopt the others with their entries; readers still refuse it, and a map the programs decide
/// on is refused by the owner too.
#[test]
fn a_counters_map_of_another_layout_is_replaced_by_the_owner_only() {
    let Some(dir) = populated_pins(
        "a_counters_map_of_another_layout_is_replaced_by_the_owner_only",
        "counters",
    ) else {
        return;
    };
    // What a build with ten counters would have left.
    let stale = pin_stale(
        &dir,
        COUNTERS,
        &[
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "10",
            "name",
            "counters",
        ],
    );
    assert!(matches!(
        Dataplane::load_pinned(&dir.0),
        Err(DataplaneError::PinnedLayout { .. })
    ));

    let (mut owner, renewed) = Dataplane::load_pinned_as_owner(&dir.0).unwrap();
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    let notice = renewed[0].to_string();
    assert!(
        notice.contains(&stale.display().to_string())
            && notice.contains("10 entries")
            && notice.contains(&format!("{} entries", Counter::COUNT))
            && notice.contains("start again from zero"),
        "{notice}"
    );
    assert_eq!(
        owner.peer_spis().unwrap().keys().unwrap(),
        [(PEER_B_IP, PEER_B_WIRE_SPI)],
        "the other maps are adopted with their entries"
    );
    assert!(
        owner
            .counters()
            .unwrap()
            .read()
            .unwrap()
            .iter()
            .all(|(_, v)| v == 0)
    );
    drop(owner);
    // The new pin has this build's layout: a reader adopts it, the owner renews nothing.
    drop(Dataplane::load_pinned(&dir.0).expect("the renewed counters map"));
    assert!(
        Dataplane::load_pinned_as_owner(&dir.0)
            .unwrap()
            .1
            .is_empty()
    );

    pin_stale(&dir, PEER_SPI_SETS, &OLD_PEER_SPI_SETS);
    assert!(matches!(
        Dataplane::load_pinned_as_owner(&dir.0),
        Err(DataplaneError::PinnedLayout { .. })
    ));
}

/// A pin directory left by a build from before IPv6 has no IPv6 maps: its IPv4 maps are
/// adopted with their entries, and the IPv6 maps are created empty and pinned beside them.
#[test]
fn pins_without_the_ipv6_maps_are_adopted_and_the_ipv6_maps_added() {
    let Some(dir) = populated_pins(
        "pins_without_the_ipv6_maps_are_adopted_and_the_ipv6_maps_added",
        "v6-added",
    ) else {
        return;
    };
    let v6 = [
        REMOTE_POD_CIDRS_V6,
        POD_CIDR_GRID_V6,
        REMOTE_POD_SLOTS_V6,
        CLUSTER_POD_CIDRS_V6,
        LOCAL_POD_CIDRS_V6,
        PEER_NODES_V6,
        PEER_ADDRS_V6,
    ];
    for name in v6 {
        fs::remove_file(dir.0.join(name)).unwrap();
    }
    assert!(!Dataplane::is_pinned(&dir.0));
    let mut adopted = Dataplane::load_pinned(&dir.0).expect("the IPv4 maps an older build pinned");
    assert_eq!(
        adopted.peer_spis().unwrap().keys().unwrap(),
        [(PEER_B_IP, PEER_B_WIRE_SPI)]
    );
    assert!(Dataplane::is_pinned(&dir.0), "the IPv6 maps are pinned now");
    assert!(
        adopted
            .cluster_pod_cidrs_v6()
            .unwrap()
            .get()
            .unwrap()
            .is_empty()
    );
    assert!(
        adopted
            .peer_nodes_v6()
            .unwrap()
            .entries()
            .unwrap()
            .is_empty()
    );
}
