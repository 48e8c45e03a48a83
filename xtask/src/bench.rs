//! `cargo xtask bench`: run the benchmarks and write their tables into docs/benchmarks.md.
//!
//! Each benchmark prints a markdown section on stdout. The file keeps the prose (method,
//! reading of the figures) by hand; only the text between a benchmark's
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers is replaced.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, install, vm};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Print the tables without touching docs/benchmarks.md.
    #[arg(long)]
    no_write: bool,
    /// Run only these benchmarks (classifier, guards, convergence, agent, rotation); default: all.
    names: Vec<String>,
}

/// Where a benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// The host's kernel.
    Host,
    /// The VM bed's stock kernel (it needs ESP).
    Vm,
}

/// The benchmarks: (marker name, cargo package, bench target, kernel).
const BENCHES: &[(&str, &str, &str, Kernel)] = &[
    ("classifier", "xsteer-bpf-tests", "classifier", Kernel::Host),
    ("guards", "xsteer-bpf-tests", "guards", Kernel::Host),
    ("convergence", "xsteer", "convergence", Kernel::Host),
    ("agent", "xsteer", "agent", Kernel::Vm),
    ("rotation", "xsteer", "rotation", Kernel::Vm),
];

/// Runs one benchmark and returns what it printed on stdout.
fn bench_output(root: &Path, package: &str, bench: &str, kernel: Kernel) -> Result<String> {
    let cargo = |extra: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(root)
            .args(["bench", "--locked", "-p", package, "--bench", bench])
            .args(extra)
            .stderr(std::process::Stdio::inherit());
        c
    };
    if kernel == Kernel::Host {
        let out = cargo(&[]).output().context("running cargo bench")?;
        if !out.status.success() {
            bail!("benchmark {bench} failed: {}", out.status);
        }
        return String::from_utf8(out.stdout).context("benchmark output is not UTF-8");
    }
    // Built on the host, run in the guest: compiling under emulation would take far too long.
    let out = cargo(&["--no-run", "--message-format=json-render-diagnostics"])
        .output()
        .context("building the benchmark")?;
    if !out.status.success() {
        bail!("building benchmark {bench} failed: {}", out.status);
    }
    const KEY: &str = "\"executable\":\"";
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"name\":\"{bench}\"")))
        .filter_map(|l| {
            let rest = &l[l.find(KEY)? + KEY.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .next_back()
        .with_context(|| format!("cargo reported no executable for benchmark {bench}"))?;
    let (code, stdout) = vm::run_capture(root, vec![exe, "--bench".into()])?;
    if code != 0 {
        bail!("benchmark {bench} failed in the VM (exit code {code})");
    }
    Ok(stdout)
}

/// Runs every benchmark and updates docs/benchmarks.md.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(crate::test::HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;
    let doc_path = root.join("docs/benchmarks.md");
    let mut doc =
        fs::read_to_string(&doc_path).with_context(|| format!("reading {}", doc_path.display()))?;
    for name in &args.names {
        if !BENCHES.iter().any(|(n, ..)| n == name) {
            bail!(
                "no benchmark named {name:?}; there are: classifier, guards, convergence, agent, rotation"
            );
        }
    }
    let chosen = BENCHES
        .iter()
        .filter(|(n, ..)| args.names.is_empty() || args.names.iter().any(|a| a == n));
    for &(name, package, bench, kernel) in chosen {
        eprintln!("xtask: bench {name}");
        let table = bench_output(root, package, bench, kernel)?;
        print!("{table}");
        doc = replace_section(&doc, name, &table)?;
    }
    if !args.no_write {
        fs::write(&doc_path, doc).with_context(|| format!("writing {}", doc_path.display()))?;
        eprintln!("xtask: wrote {}", doc_path.display());
    }
    Ok(())
}

/// Replaces what lies between the markers of section `name` with `body`.
fn replace_section(doc: &str, name: &str, body: &str) -> Result<String> {
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let start = doc
        .find(&open)
        .with_context(|| format!("docs/benchmarks.md has no {open} marker"))?
        + open.len();
    let end = doc[start..]
        .find(&close)
        .with_context(|| format!("docs/benchmarks.md has no {close} marker"))?
        + start;
    Ok(format!("{}\n{}{}", &doc[..start], body, &doc[end..]))
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn replaces_only_the_named_section() {
        let doc = "a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb\n<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n";
        let new = replace_section(doc, "x", "new\n").unwrap();
        assert_eq!(
            new,
            "a\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nb\n<!-- bench:y -->\nkeep\n<!-- /bench:y -->\n"
        );
        assert!(replace_section(doc, "z", "").is_err());
    }
}
