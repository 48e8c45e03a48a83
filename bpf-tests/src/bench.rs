//! What the benchmarks share: empty baseline programs and the kernel's own timing of a program.
//!
//! A program and its baseline run through the same raw `BPF_PROG_TEST_RUN` call on the same
//! frame; the kernel times its own loop of `repeat` runs and reports the mean per run, so
//! syscall and harness overhead stay out of the figure.

/// Number of the `bpf(2)` command that loads a program.
const BPF_PROG_LOAD: libc::c_long = 5;
/// Number of the `bpf(2)` command that test-runs a program.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

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

/// The cheapest program of a type: `r0 = verdict; exit`.
#[derive(Clone, Copy, Debug)]
pub enum Empty {
    /// A tc (`sched_cls`) program returning `TC_ACT_UNSPEC`.
    Tc,
    /// An XDP program returning `XDP_PASS`.
    Xdp,
}

impl Empty {
    /// What the program returns, as `BPF_PROG_TEST_RUN` reports it.
    pub fn verdict(self) -> u32 {
        match self {
            Empty::Tc => crate::TC_NEXT,
            Empty::Xdp => crate::XDP_PASS,
        }
    }

    /// Loads the program and returns its fd.
    pub fn load(self) -> i32 {
        let prog_type = match self {
            Empty::Tc => 3,  // BPF_PROG_TYPE_SCHED_CLS
            Empty::Xdp => 6, // BPF_PROG_TYPE_XDP
        };
        let insns: [u64; 2] = [
            // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = the verdict
            0xb7 | (u64::from(self.verdict()) << 32),
            // BPF_JMP | BPF_EXIT
            0x95,
        ];
        let license = c"GPL";
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: *b"xsteer_baseline\0",
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr);
        assert!(
            fd >= 0,
            "BPF_PROG_LOAD of the empty {self:?} program: {}",
            std::io::Error::last_os_error()
        );
        fd as i32
    }
}

/// Mean ns per run of `repeat` runs of `prog_fd` on `frame`, as the kernel measured it; panics
/// unless the program returned `verdict`.
pub fn ns_per_packet(prog_fd: i32, frame: &[u8], repeat: u32, verdict: u32) -> u32 {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    let rc = bpf(BPF_PROG_TEST_RUN, &mut attr);
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(attr.retval, verdict, "the program's verdict on the frame");
    attr.duration
}

/// The median of `samples` (the upper one of an even count).
pub fn median(samples: &mut [u32]) -> u32 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}
