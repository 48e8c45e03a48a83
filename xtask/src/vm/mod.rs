//! `cargo xtask vm`: boot a stock Debian kernel under qemu and run a command in it.
//!
//! The host kernel has no ESP and no loadable modules, so anything with an SA runs in this guest.
//! The guest sees the host's / read-only (under a tmpfs overlay), runs the command in the project
//! directory, and hands back its stdout and stderr (two virtio-serial ports), its exit code (a 9p
//! control share) and the files it puts in the scratch dir. A guest that never wrote an exit code
//! is a failure, never a pass.

mod e2e;
mod initramfs;
mod kernel;
mod qemu;

use std::{
    env,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub use e2e::run_e2e;

use crate::install::{self, Package};
use qemu::Accel;

/// Exit code for a guest killed at --timeout (as timeout(1) does).
const TIMED_OUT: i32 = 124;
/// Boots retried when a TCG guest dies before reaching the command: multi-threaded TCG very
/// rarely (about 1 boot in 20 measured) trips over the kernel patching its own text at boot.
const TCG_BOOT_RETRIES: u32 = 2;
/// Exit code for a guest that ended without writing its command's exit code.
const NO_EXIT_CODE: i32 = 125;

/// Debian packages the bed runs on the host (qemu, the initramfs builders) or in the guest, which
/// uses the host's root (kmod: the kernel's request_module calls /sbin/modprobe).
const PACKAGES: &[Package] = &[
    Package {
        name: "qemu-system-x86",
        provides: "qemu-system-x86_64",
    },
    Package {
        name: "busybox-static",
        provides: "/bin/busybox",
    },
    Package {
        name: "cpio",
        provides: "cpio",
    },
    Package {
        name: "xz-utils",
        provides: "xz",
    },
    Package {
        name: "kmod",
        provides: "modprobe",
    },
];

/// Host environment variables passed to the guest command (its environment starts empty).
const PASSED_ENV: &[&str] = &[
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "RUST_LOG",
    "RUST_TEST_THREADS",
    "RUST_TEST_NOCAPTURE",
    "NO_COLOR",
    "TERM",
];
/// …and every variable with this prefix.
const PASSED_PREFIX: &str = "XSTEER_";
const DEFAULT_MEM_MB: u32 = 2048;
const DEFAULT_TIMEOUT_S: u64 = 600;
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Options of `cargo xtask vm`.
#[derive(clap::Args)]
pub struct Args {
    /// Kernel version to boot, unpacked in target/vm/kernel or installed on the host; default:
    /// the newest 6.12 unpacked there, downloaded and unpacked on first use.
    #[arg(long)]
    kernel: Option<String>,
    /// Virtual CPUs; default: the host's CPU count.
    #[arg(long)]
    cpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MB)]
    mem: u32,
    /// Kill the guest after this many seconds, boot included, and fail.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_S)]
    timeout: u64,
    /// The command to run in the guest, in the project directory.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// More environment variables for the command (after the host's XSTEER_* ones).
    #[arg(skip)]
    env: Vec<(String, String)>,
}

/// Runs `command` in a guest with the default machine; returns its exit code.
pub fn run_command(root: &Path, command: Vec<String>) -> Result<i32> {
    run(
        root,
        Args {
            kernel: None,
            cpus: None,
            mem: DEFAULT_MEM_MB,
            timeout: DEFAULT_TIMEOUT_S,
            command,
            env: Vec::new(),
        },
    )
}

/// Runs `command` in a guest with `cpus` vCPUs (default: the host's count), killed after
/// `timeout_s` seconds (default: 600), otherwise the default machine; returns its exit code and
/// a copy of its stdout (which is streamed as well).
pub fn run_capture(
    root: &Path,
    cpus: Option<u32>,
    timeout_s: Option<u64>,
    command: Vec<String>,
) -> Result<(i32, String)> {
    let guest = boot(
        root,
        &Args {
            kernel: None,
            cpus,
            mem: DEFAULT_MEM_MB,
            timeout: timeout_s.unwrap_or(DEFAULT_TIMEOUT_S),
            command,
            env: Vec::new(),
        },
    )?;
    Ok((
        guest.exit_code(),
        String::from_utf8_lossy(&guest.stdout).into_owned(),
    ))
}

/// Boots the guest, runs the command, returns its exit code (or 124 on timeout, 125 when the
/// guest ended without one).
pub fn run(root: &Path, args: Args) -> Result<i32> {
    let guest = boot(root, &args)?;
    Ok(guest.exit_code())
}

/// How a guest run ended.
enum Ending {
    Exited(i32),
    TimedOut,
    NoExitCode,
}

/// A finished guest run.
struct Guest {
    ending: Ending,
    /// A copy of what the command wrote on stdout (it was streamed as it came).
    stdout: Vec<u8>,
}

impl Guest {
    fn exit_code(&self) -> i32 {
        match self.ending {
            Ending::Exited(code) => code,
            Ending::TimedOut => TIMED_OUT,
            Ending::NoExitCode => NO_EXIT_CODE,
        }
    }
}

/// Boots a guest for `args.command`, streaming its output; reports timeouts and missing exit codes
/// on stderr with the guest console.
fn boot(root: &Path, args: &Args) -> Result<Guest> {
    install::apt(PACKAGES)?;
    let vm_dir = target_dir(root).join("vm");
    let kernel = kernel::find(&vm_dir.join("kernel"), args.kernel.as_deref())?;
    let scratch = vm_dir.join("scratch");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let initramfs = initramfs::ensure(&vm_dir, &kernel)?;
    let run_dir = vm_dir.join(format!("run-{}", std::process::id()));

    let (mut accel, mut why) = qemu::choose();
    let mut tcg_retries = TCG_BOOT_RETRIES;
    loop {
        prepare_run_dir(&run_dir, root, &scratch, &kernel, args)?;
        let machine = qemu::Machine {
            accel,
            cpus: args.cpus.unwrap_or_else(host_cpus),
            mem_mb: args.mem,
            vmlinuz: &kernel.vmlinuz,
            initramfs: &initramfs,
            run_dir: &run_dir,
            scratch: &scratch,
        };
        let (guest, booted) = watch(&machine, why, Duration::from_secs(args.timeout))?;
        // The command never ran, so booting again cannot hide a failure of the command.
        let setup_failed = qemu::ctl_dir(&run_dir).join("boot-error").exists();
        if !booted && !setup_failed && matches!(guest.ending, Ending::NoExitCode) {
            if accel == Accel::Kvm {
                eprintln!("xtask vm: the KVM boot never reached the command; retrying under TCG");
                (accel, why) = (Accel::Tcg, Some("KVM boot failed"));
                continue;
            }
            if tcg_retries > 0 {
                tcg_retries -= 1;
                eprintln!(
                    "xtask vm: the guest kernel died while booting, before the command ran \
                     (console below); booting again"
                );
                show_console(&run_dir);
                continue;
            }
        }
        match guest.ending {
            Ending::Exited(_) => {
                fs::remove_dir_all(&run_dir)
                    .with_context(|| format!("removing {}", run_dir.display()))?;
            }
            Ending::TimedOut => {
                eprintln!(
                    "xtask vm: FAILED: the guest outlived --timeout {} s and was killed",
                    args.timeout
                );
                show_console(&run_dir);
            }
            Ending::NoExitCode => {
                eprintln!(
                    "xtask vm: FAILED: the guest ended without the command's exit code (it crashed, \
                     or the command powered it off)"
                );
                show_console(&run_dir);
            }
        }
        return Ok(guest);
    }
}

/// Runs qemu for `machine` and streams the command's output until the guest ends or times out.
/// Also returns whether the guest reached the command.
fn watch(machine: &qemu::Machine, why: Option<&str>, timeout: Duration) -> Result<(Guest, bool)> {
    let run_dir = machine.run_dir;
    let ctl = qemu::ctl_dir(run_dir);
    let qemu_log = run_dir.join("qemu.log");
    let mut stdout = Tail::new(&qemu::stdout_log(run_dir), io::stdout())?;
    let mut stderr = Tail::new(&qemu::stderr_log(run_dir), io::stderr())?;
    let log = File::create(&qemu_log).context("creating qemu.log")?;
    let mut qemu = qemu::command(machine);
    qemu.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating qemu.log")?)
        .stderr(log);
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let mut booted: Option<Instant> = None;
    let ending = loop {
        stdout.pump()?;
        stderr.pump()?;
        if booted.is_none() && ctl.join("started").exists() {
            booted = Some(Instant::now());
            let accel = match why {
                Some(why) => format!("{} ({why})", machine.accel.name()),
                None => machine.accel.name().to_owned(),
            };
            eprintln!(
                "xtask vm: {accel} — booted in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            stdout.pump()?;
            stderr.pump()?;
            match fs::read_to_string(ctl.join("exit-code")) {
                Ok(code) => {
                    let code = code
                        .trim()
                        .parse()
                        .with_context(|| format!("the guest wrote a bad exit code: {code:?}"))?;
                    break Ending::Exited(code);
                }
                Err(_) => {
                    eprintln!(
                        "xtask vm: qemu exited ({status}) without an exit code from the guest"
                    );
                    break Ending::NoExitCode;
                }
            }
        }
        if started.elapsed() > timeout {
            child.kill().context("killing qemu")?;
            child.wait().context("waiting for the killed qemu")?;
            stdout.pump()?;
            stderr.pump()?;
            break Ending::TimedOut;
        }
        thread::sleep(Duration::from_millis(50));
    };
    if let (Ending::Exited(code), Some(booted)) = (&ending, booted) {
        eprintln!(
            "xtask vm: exit code {code}, the command ran {:.1} s",
            booted.elapsed().as_secs_f64()
        );
    }
    Ok((
        Guest {
            ending,
            stdout: stdout.copy,
        },
        booted.is_some(),
    ))
}

/// Follows a file qemu writes, copying what it adds to a host stream (and keeping a copy).
struct Tail<W> {
    file: File,
    sink: W,
    copy: Vec<u8>,
}

impl<W: Write> Tail<W> {
    fn new(path: &Path, sink: W) -> Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Tail {
            file,
            sink,
            copy: Vec::new(),
        })
    }

    fn pump(&mut self) -> Result<()> {
        let start = self.copy.len();
        self.file
            .read_to_end(&mut self.copy)
            .context("reading the guest's output")?;
        if self.copy.len() > start {
            // A closed host stream (e.g. `| head`) must not stop the guest's supervision.
            let _ = self.sink.write_all(&self.copy[start..]);
            let _ = self.sink.flush();
        }
        Ok(())
    }
}

/// Creates a fresh run directory with the control share: stage 2, its variables (the scratch
/// path, the modules to mount), the command and its environment.
fn prepare_run_dir(
    run_dir: &Path,
    root: &Path,
    scratch: &Path,
    kernel: &kernel::Kernel,
    args: &Args,
) -> Result<()> {
    let _ = fs::remove_dir_all(run_dir);
    let ctl = qemu::ctl_dir(run_dir);
    fs::create_dir_all(&ctl).with_context(|| format!("creating {}", ctl.display()))?;
    let write = |name: &str, text: String| {
        fs::write(ctl.join(name), text).with_context(|| format!("writing the guest's {name}"))
    };
    write("stage2.sh", include_str!("stage2.sh").to_owned())?;
    write("vars", stage2_vars(scratch, kernel)?)?;

    let mut env_args = vec![
        format!("PATH={GUEST_PATH}"),
        "HOME=/root".to_owned(),
        "XSTEER_VM=1".to_owned(),
        format!("XSTEER_SCRATCH={}", path_str(scratch)?),
    ];
    for (name, value) in env::vars() {
        if PASSED_ENV.contains(&name.as_str())
            || (name.starts_with(PASSED_PREFIX) && name != "XSTEER_VM" && name != "XSTEER_SCRATCH")
        {
            env_args.push(format!("{name}={value}"));
        }
    }
    env_args.extend(
        args.env
            .iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    let words: Vec<String> = env_args
        .iter()
        .chain(&args.command)
        .map(|w| quote(w))
        .collect();
    write(
        "run.sh",
        format!(
            "cd {} || exit 126\nexec env -i {}\n",
            quote(&path_str(root)?),
            words.join(" ")
        ),
    )
}

/// The shell variables stage 2 reads: the scratch dir, and the modules dir to mount on
/// /lib/modules/<version> when the kernel is not installed on the host.
fn stage2_vars(scratch: &Path, kernel: &kernel::Kernel) -> Result<String> {
    let mut vars = format!("scratch={}\n", quote(&path_str(scratch)?));
    if kernel.modules_elsewhere() {
        vars.push_str(&format!(
            "kernel={}\nmodules={}\n",
            quote(&kernel.version),
            quote(&path_str(&kernel.modules)?)
        ));
    }
    Ok(vars)
}

/// Prints the end of the guest console (the kernel log and the init's messages) and where the
/// run's files are.
fn show_console(run_dir: &Path) {
    let console = fs::read_to_string(qemu::console_log(run_dir)).unwrap_or_default();
    let qemu_log = fs::read_to_string(run_dir.join("qemu.log")).unwrap_or_default();
    let lines: Vec<&str> = console.lines().collect();
    eprintln!("xtask vm: ---- guest console (last 60 lines) ----");
    for line in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{line}");
    }
    if !qemu_log.trim().is_empty() {
        eprintln!("xtask vm: ---- qemu ----\n{}", qemu_log.trim_end());
    }
    eprintln!("xtask vm: ---- (all of it in {}) ----", run_dir.display());
}

/// A shell word for `s`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The cargo target dir: $CARGO_TARGET_DIR or target/ in the workspace.
pub fn target_dir(root: &Path) -> PathBuf {
    root.join(env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

fn host_cpus() -> u32 {
    thread::available_parallelism().map_or(2, |n| n.get() as u32)
}
