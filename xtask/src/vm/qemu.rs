//! The qemu command line, and whether KVM can run the guest.
//!
//! KVM is much faster, but the development machines' /dev/kvm is kvm_pvm, which cannot run a stock
//! kernel (qemu aborts or the guest dies in emulation); those get TCG straight away, and a KVM boot
//! that never reaches the command is retried under TCG by the caller.

use std::{
    ffi::OsString,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::Command,
};

/// How the guest's CPU runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// The accelerator to try first, and why when it is TCG.
pub fn choose() -> (Accel, Option<&'static str>) {
    if Path::new("/sys/module/kvm_pvm").exists() {
        (Accel::Tcg, Some("KVM unusable: kvm_pvm"))
    } else if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        (Accel::Tcg, Some("no usable /dev/kvm"))
    } else {
        (Accel::Kvm, None)
    }
}

/// What one boot needs.
pub struct Machine<'a> {
    pub accel: Accel,
    pub cpus: u32,
    pub mem_mb: u32,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Per-run files: control share, console and output logs.
    pub run_dir: &'a Path,
    pub scratch: &'a Path,
}

/// Files of a run directory, shared by the command line and the host's reader.
pub fn ctl_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("ctl")
}
pub fn console_log(run_dir: &Path) -> PathBuf {
    run_dir.join("console.log")
}
pub fn stdout_log(run_dir: &Path) -> PathBuf {
    run_dir.join("stdout")
}
pub fn stderr_log(run_dir: &Path) -> PathBuf {
    run_dir.join("stderr")
}

/// The qemu command that boots `machine`.
pub fn command(m: &Machine) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    qemu.args(["-no-reboot", "-nic", "none"]);
    match m.accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        // `max` gives the guest AES-NI and AVX, so aesni_intel's GCM is the one under test.
        Accel::Tcg => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    qemu.arg("-smp").arg(m.cpus.to_string());
    qemu.arg("-m").arg(m.mem_mb.to_string());
    qemu.arg("-kernel").arg(m.vmlinuz);
    qemu.arg("-initrd").arg(m.initramfs);
    // panic=-1 with -no-reboot: a guest that panics ends qemu at once, without an exit code.
    // cgroup.memory=nokmem: the first memory cgroup (podman's) would otherwise switch on
    // memcg_kmem_online_key, and multi-threaded TCG has oopsed on the int3 of that live patch
    // of the slab paths while the other vCPU was freeing in them (twice in CI). No test needs
    // kernel memory charged to cgroups.
    qemu.args([
        "-append",
        "console=ttyS0 quiet panic=-1 mitigations=off cgroup.memory=nokmem",
    ]);
    qemu.arg("-chardev")
        .arg(opt("file,id=console,path=", &console_log(m.run_dir)));
    qemu.args(["-serial", "chardev:console"]);
    share(&mut qemu, "xtask-root", Path::new("/"), true);
    share(&mut qemu, "xtask-ctl", &ctl_dir(m.run_dir), false);
    share(&mut qemu, "xtask-scratch", m.scratch, false);
    qemu.args(["-device", "virtio-serial-pci"]);
    for (id, log) in [
        ("stdout", stdout_log(m.run_dir)),
        ("stderr", stderr_log(m.run_dir)),
    ] {
        qemu.arg("-chardev")
            .arg(opt(&format!("file,id={id},path="), &log));
        qemu.arg("-device")
            .arg(format!("virtserialport,chardev={id},name=xtask.{id}"));
    }
    qemu
}

/// A virtio-9p share of `path` under `tag`.
fn share(qemu: &mut Command, tag: &str, path: &Path, readonly: bool) {
    // The host's / spans several filesystems; remap keeps inode numbers unique for the overlay.
    let extra = if readonly {
        ",readonly=on,multidevs=remap"
    } else {
        ""
    };
    let mut fsdev = opt(&format!("local,id={tag},path="), path);
    fsdev.push(format!(",security_model=none{extra}"));
    qemu.arg("-fsdev").arg(fsdev);
    qemu.arg("-device")
        .arg(format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"));
}

/// `prefix` followed by `path`, with commas doubled as qemu's option syntax wants.
fn opt(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str().to_string_lossy().replace(',', ",,"));
    s
}
