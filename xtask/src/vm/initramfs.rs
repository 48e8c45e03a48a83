//! The guest's initramfs: busybox-static, the modules needed to reach the host's root (9p over
//! virtio, overlay) and the stage-1 init. Cached under target/vm/, named by kernel version and a
//! hash of everything that goes in (the init, busybox, the module files and where they come
//! from), so it is rebuilt only when the kernel or the builder changes.

use std::{
    collections::{HashMap, HashSet},
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use super::kernel::Kernel;

/// The stage-1 init.
const INIT: &str = include_str!("init.sh");
/// Modules stage 1 loads, with their dependencies in front.
const MODULES: &[&str] = &["9pnet_virtio", "9p", "overlay"];
/// The host's busybox-static, copied in as the initramfs userland.
const BUSYBOX: &str = "/bin/busybox";

/// The cached initramfs for `kernel`, built first if missing.
pub fn ensure(dir: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let modules = load_order(kernel)?;
    let busybox = fs::metadata(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let mut hasher = DefaultHasher::new();
    (INIT, &modules, &kernel.modules).hash(&mut hasher);
    stamp(&busybox).hash(&mut hasher);
    // Two packages of one kernel version (a Debian revision, or the host's and an unpacked one)
    // need not carry the same module files.
    for module in &modules {
        let path = kernel.modules.join(module);
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        stamp(&meta).hash(&mut hasher);
    }
    let path = dir.join(format!(
        "initramfs-{}-{:016x}.cpio",
        kernel.version,
        hasher.finish()
    ));
    if path.exists() {
        return Ok(path);
    }

    require_static(Path::new(BUSYBOX))?;
    let staging = dir.join(format!("initramfs-staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("bin")).context("creating the initramfs staging dir")?;
    fs::create_dir_all(staging.join("mods")).context("creating the initramfs staging dir")?;
    let mut entries: Vec<String> = [".", "init", "bin", "bin/busybox", "mods", "mods/order"]
        .map(String::from)
        .into();
    write_executable(&staging.join("init"), INIT.as_bytes())?;
    fs::copy(BUSYBOX, staging.join("bin/busybox")).context("copying busybox")?;
    let mut order = String::new();
    for module in &modules {
        let name = format!("{}.ko", module_name(module));
        decompress(
            &kernel.modules.join(module),
            &staging.join("mods").join(&name),
        )?;
        order.push_str(&name);
        order.push('\n');
        entries.push(format!("mods/{name}"));
    }
    fs::write(staging.join("mods/order"), order).context("writing mods/order")?;

    let partial = path.with_extension("partial");
    let out =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("starting cpio")?;
    cpio.stdin
        .take()
        .expect("piped")
        .write_all(format!("{}\n", entries.join("\n")).as_bytes())
        .context("feeding cpio its file list")?;
    let status = cpio.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed building {}: {status}", path.display());
    }
    fs::remove_dir_all(&staging).context("removing the initramfs staging dir")?;
    remove_stale(dir)?;
    fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))?;
    eprintln!("xtask vm: built {}", path.display());
    Ok(path)
}

/// A file's size and modification time, which change when the file does.
fn stamp(meta: &fs::Metadata) -> (u64, Option<Duration>) {
    let modified = meta.modified().ok();
    (
        meta.len(),
        modified.and_then(|t| t.duration_since(UNIX_EPOCH).ok()),
    )
}

/// Module files (relative to the kernel's module dir) in insmod order, per modules.dep.
fn load_order(kernel: &Kernel) -> Result<Vec<String>> {
    let dep_path = kernel.modules.join("modules.dep");
    let text =
        fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let deps: HashMap<&str, (&str, Vec<&str>)> = text
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let name = module_name(module);
            Some((name, (module, deps.split_whitespace().collect())))
        })
        .collect();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for wanted in MODULES {
        let (file, needs) = deps
            .get(wanted)
            .with_context(|| format!("module {wanted} is not in {}", dep_path.display()))?;
        // modules.dep lists the transitive dependencies, the deepest last.
        for file in needs.iter().rev().chain([file]) {
            if seen.insert(*file) {
                order.push(file.to_string());
            }
        }
    }
    Ok(order)
}

/// "kernel/fs/9p/9p.ko.xz" → "9p".
fn module_name(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split_once(".ko").map_or(base, |(name, _)| name)
}

/// Copies a module, decompressing .ko.xz so busybox insmod can load it.
fn decompress(from: &Path, to: &Path) -> Result<()> {
    if from.extension().is_some_and(|e| e == "xz") {
        let out = fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
        let status = Command::new("xz")
            .arg("-dc")
            .arg(from)
            .stdout(out)
            .status()
            .context("starting xz")?;
        if !status.success() {
            bail!("xz -dc {} failed: {status}", from.display());
        }
    } else {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

fn write_executable(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Removes initramfs images of earlier kernels or builders.
fn remove_stale(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("initramfs-") && name.ends_with(".cpio") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The initramfs has no libc: a dynamically linked busybox (Debian's `busybox` package rather
/// than `busybox-static`) would leave the guest without an init.
fn require_static(path: &Path) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} is not an ELF executable", path.display());
    };
    let dynamic = (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        elf.get(at..at + 4) == Some(&PT_INTERP.to_le_bytes())
    });
    if dynamic {
        bail!(
            "{} is dynamically linked; the VM's initramfs needs busybox-static (apt-get install busybox-static)",
            path.display()
        );
    }
    Ok(())
}
