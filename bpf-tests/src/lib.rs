//! Harness for running xsteer's real eBPF object in the running kernel.
//!
//! Each test loads its own copy of the object (its own maps, its own counters), fills the maps,
//! and drives one program with `BPF_PROG_TEST_RUN`, reading the verdict, the `__sk_buff.mark`
//! written back through `ctx_out`, and the counters. Loading needs root and a kernel with BPF;
//! without them a test skips with a loud reason, unless `XSTEER_REQUIRE_PRIVILEGED=1` (set by
//! `cargo xtask test`, hence CI) turns the skip into a failure.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

pub mod bench;
pub mod packet;
pub mod topology;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use xsteer::dataplane::{Dataplane, DataplaneError, links::IngressHook};

/// Set to `1` to make a test fail instead of skipping when it lacks privileges.
pub const REQUIRE_PRIVILEGED: &str = "XSTEER_REQUIRE_PRIVILEGED";

/// `TC_ACT_UNSPEC` as `BPF_PROG_TEST_RUN` reports it: "pass on to the next program".
pub const TC_NEXT: u32 = -1i32 as u32;
/// `TC_ACT_SHOT`: drop.
pub const TC_SHOT: u32 = 2;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// Size of `struct __sk_buff`, and where `mark` sits in it.
const SK_BUFF_LEN: usize = 192;
const SK_BUFF_MARK: usize = 8;

/// Loads the object with its programs, or explains loudly why this test is skipped.
///
/// Returns `None` only when skipping is allowed; with [`REQUIRE_PRIVILEGED`] set it panics.
pub fn dataplane(test: &str) -> Option<Dataplane> {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        "not running as root".to_owned()
    } else {
        match load() {
            Ok(dataplane) => return Some(dataplane),
            Err(e) => format!("the kernel refused the object: {e}"),
        }
    };
    if std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {REQUIRE_PRIVILEGED}=1 forbids skipping");
    }
    eprintln!("\n*** SKIPPED {test}: {reason}. bpf-tests need root and BPF. ***\n");
    None
}

fn load() -> Result<Dataplane, DataplaneError> {
    let mut dataplane = Dataplane::load()?;
    dataplane.load_programs()?;
    Ok(dataplane)
}

/// What a tc program did with a packet.
#[derive(Debug, PartialEq, Eq)]
pub struct TcOutcome {
    /// The program's return code.
    pub verdict: u32,
    /// `__sk_buff.mark` after the program ran.
    pub mark: u32,
}

/// Runs a tc program once on `frame` with `mark` already set on the skb.
pub fn run_tc(program: &SchedClassifier, frame: &[u8], mark: u32) -> TcOutcome {
    let mut ctx_in = [0u8; SK_BUFF_LEN];
    ctx_in[SK_BUFF_MARK..SK_BUFF_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; SK_BUFF_LEN];
    let mut data_out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN of a tc program");
    let mark = u32::from_ne_bytes(ctx_out[SK_BUFF_MARK..SK_BUFF_MARK + 4].try_into().unwrap());
    TcOutcome {
        verdict: result.return_value,
        mark,
    }
}

/// Runs a tc program once on `frame` and returns its verdict and the packet as the program
/// left it (for programs that rewrite packets).
pub fn run_tc_rewrite(program: &SchedClassifier, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut data_out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN of a tc program");
    data_out.truncate(result.data_size_out as usize);
    (result.return_value, data_out)
}

/// Runs an XDP program once on `frame` and returns its verdict.
pub fn run_xdp(program: &Xdp, frame: &[u8]) -> u32 {
    let mut data_out = vec![0u8; frame.len() + 256];
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN of an XDP program")
        .return_value
}

/// Both hooks the ingress guard runs at; its tests run at each.
pub const INGRESS_HOOKS: [IngressHook; 2] = [IngressHook::Xdp, IngressHook::Tc];

/// Runs the ingress guard at `hook` once on `frame` and returns its verdict in XDP's terms
/// ([`XDP_PASS`], [`XDP_DROP`]), so that one assertion covers both hooks; a tc verdict other
/// than "next" or "shot" fails the test.
pub fn run_ingress(dataplane: &mut Dataplane, hook: IngressHook, frame: &[u8]) -> u32 {
    match hook {
        IngressHook::Xdp => run_xdp(dataplane.ingress_guard().unwrap(), frame),
        IngressHook::Tc => match run_tc(dataplane.ingress_guard_tc().unwrap(), frame, 0).verdict {
            TC_NEXT => XDP_PASS,
            TC_SHOT => XDP_DROP,
            other => panic!("the ingress guard at tc returned {other}"),
        },
    }
}
