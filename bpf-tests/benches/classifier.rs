//! ns/packet of the pod classifier against an empty tc program, via BPF_PROG_TEST_RUN.
//!
//! Both programs run through the same raw `BPF_PROG_TEST_RUN` call on the same frame; the
//! kernel times its own loop of `REPEAT` runs and reports the mean per run, so syscall and
//! harness overhead stay out of the figure. Rounds interleave the configurations so that drift
//! (frequency, noise from the other core) hits all of them alike; the table reports medians.
//! Prints a markdown section for docs/benchmarks.md (`cargo xtask bench` writes it there).

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
};

use xsteer::{cidr::Ipv4Cidr, dataplane::Dataplane, dataplane::grid::Grid};
use xsteer_bpf_tests::packet::Ipv4;
use xsteer_common::maps::RemotePodCidr;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const SIZES: [u32; 3] = [1, 1_000, 65_536];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a valid, zero-padded prefix of `union bpf_attr` for `cmd`.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
}

/// Loads `r0 = TC_ACT_UNSPEC; exit`: the cheapest tc program there is.
fn load_empty_tc_program() -> i32 {
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm -1
        0xb7 | ((-1i32 as u32 as u64) << 32),
        // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: *b"xsteer_baseline\0",
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    fd as i32
}

/// Mean ns per run of `REPEAT` runs of `prog_fd` on `frame`, as the kernel measured it.
fn ns_per_packet(prog_fd: i32, frame: &[u8]) -> u32 {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: REPEAT,
        ..Default::default()
    };
    let rc = bpf(BPF_PROG_TEST_RUN, &mut attr);
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        attr.retval, -1i32 as u32,
        "both programs return TC_ACT_UNSPEC"
    );
    attr.duration
}

/// A loaded classifier whose map holds `n` /24s of 10.0.0.0/8, with the grid of /24 slots over
/// 10.0.0.0/8 in front of the trie when `grid`; returns it and a frame that hits the last CIDR
/// inserted.
fn classifier_with(n: u32, grid: bool) -> (Dataplane, Vec<u8>) {
    let mut dataplane = Dataplane::load().expect("load the object (root?)");
    dataplane.load_programs().expect("verifier");
    let mut remote = dataplane.remote_pod_cidrs().unwrap();
    let cidr = |i: u32| Ipv4Cidr::new(Ipv4Addr::from(0x0A00_0000 | (i << 8)), 24).unwrap();
    for i in 0..n {
        let value = RemotePodCidr {
            node_id: (i % 65_535 + 1) as u16,
            spi: 3,
            flags: 0,
        };
        remote.insert(cidr(i), value).unwrap();
    }
    if grid {
        let grid = Grid::new("10.0.0.0/8".parse().unwrap(), 24).unwrap();
        remote.set_grid(Some(grid)).unwrap();
    }
    let last = cidr(n - 1).addr().octets();
    let dst = Ipv4Addr::new(last[0], last[1], last[2], 9);
    let frame = Ipv4::udp(Ipv4Addr::new(10, 255, 255, 1), dst).frame();
    (dataplane, frame)
}

fn median(samples: &mut [u32]) -> u32 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the classifier benchmark loads BPF programs: run it as root");
        std::process::exit(1);
    }
    let baseline = load_empty_tc_program();
    let configs: Vec<(u32, bool)> = [false, true]
        .into_iter()
        .flat_map(|grid| SIZES.iter().map(move |&n| (n, grid)))
        .collect();
    let mut classifiers: Vec<(u32, Dataplane, Vec<u8>)> = configs
        .iter()
        .map(|&(n, grid)| {
            let (dataplane, frame) = classifier_with(n, grid);
            (n, dataplane, frame)
        })
        .collect();
    let fds: Vec<i32> = classifiers
        .iter_mut()
        .map(|(_, dp, _)| {
            dp.pod_classifier()
                .unwrap()
                .fd()
                .unwrap()
                .as_fd()
                .as_raw_fd()
        })
        .collect();

    let mut base_samples = Vec::new();
    let mut samples = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        base_samples.push(ns_per_packet(baseline, &classifiers[0].2));
        for (i, (_, _, frame)) in classifiers.iter().enumerate() {
            samples[i].push(ns_per_packet(fds[i], frame));
        }
        eprintln!("round {}/{ROUNDS} done", round + 1);
    }
    // A hit must really have marked: check once outside the timed loop.
    for (n, dp, frame) in &mut classifiers {
        let out = xsteer_bpf_tests::run_tc(dp.pod_classifier().unwrap(), frame, 0);
        assert_eq!(
            out.mark & 0xF00,
            0xE00,
            "{n} CIDRs: the benchmark frame must hit"
        );
    }

    let base = median(&mut base_samples);
    println!(
        "| remote CIDRs | lookup | classifier ns/packet | empty tc program ns/packet | classifier − empty | ratio |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for (i, &(n, grid)) in configs.iter().enumerate() {
        let m = median(&mut samples[i]);
        let lookup = if grid {
            "grid of /24 slots, trie behind"
        } else {
            "trie only"
        };
        println!(
            "| {n} | {lookup} | {m} | {base} | {:+} | {:.2} |",
            i64::from(m) - i64::from(base),
            f64::from(m) / f64::from(base.max(1))
        );
    }
    println!();
    println!(
        "Medians of {ROUNDS} interleaved rounds of {REPEAT} runs each; frame: UDP to the last of n /24s."
    );
}
