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
    /// Run only these benchmarks (classifier, guards, convergence, agent, rotation, esp);
    /// default: all.
    names: Vec<String>,
}

/// Where a benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// The host's kernel.
    Host,
    /// The VM bed's stock kernel (it needs ESP): one boot per entry of `cpus` (`None`: the
    /// host's CPU count), each killed after `timeout_s` (`None`: the bed's default), their
    /// outputs one after the other.
    Vm {
        cpus: &'static [Option<u32>],
        timeout_s: Option<u64>,
    },
}

/// The default VM machine, booted once.
const VM: Kernel = Kernel::Vm {
    cpus: &[None],
    timeout_s: None,
};

/// A benchmark: its marker name, cargo package and bench target, where it runs, and the Debian
/// packages it runs besides [`crate::test::HOST_PACKAGES`] (the guest uses the host's root).
struct Bench {
    name: &'static str,
    package: &'static str,
    target: &'static str,
    kernel: Kernel,
    packages: &'static [install::Package],
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "classifier",
        package: "xsteer-bpf-tests",
        target: "classifier",
        kernel: Kernel::Host,
        packages: &[],
    },
    Bench {
        name: "guards",
        package: "xsteer-bpf-tests",
        target: "guards",
        kernel: Kernel::Host,
        packages: &[],
    },
    Bench {
        name: "convergence",
        package: "xsteer",
        target: "convergence",
        kernel: Kernel::Host,
        packages: &[],
    },
    Bench {
        name: "agent",
        package: "xsteer",
        target: "agent",
        kernel: VM,
        packages: &[],
    },
    Bench {
        name: "rotation",
        package: "xsteer",
        target: "rotation",
        kernel: VM,
        packages: &[],
    },
    // Per-CPU SAs are about scaling with CPUs, so it boots twice; one boot alternates every
    // configuration for about 10 minutes under TCG on 2 host cores.
    Bench {
        name: "esp",
        package: "xsteer",
        target: "esp",
        kernel: Kernel::Vm {
            cpus: &[Some(2), Some(4)],
            timeout_s: Some(1800),
        },
        packages: &[install::Package {
            name: "iperf3",
            provides: "iperf3",
        }],
    },
];

/// Runs one benchmark and returns what it printed on stdout.
fn bench_output(root: &Path, bench: &Bench) -> Result<String> {
    let Bench {
        package, target, ..
    } = *bench;
    let cargo = |extra: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(root)
            .args(["bench", "--locked", "-p", package, "--bench", target])
            .args(extra)
            .stderr(std::process::Stdio::inherit());
        c
    };
    let Kernel::Vm { cpus, timeout_s } = bench.kernel else {
        let out = cargo(&[]).output().context("running cargo bench")?;
        if !out.status.success() {
            bail!("benchmark {target} failed: {}", out.status);
        }
        return String::from_utf8(out.stdout).context("benchmark output is not UTF-8");
    };
    // Built on the host, run in the guest: compiling under emulation would take far too long.
    let out = cargo(&["--no-run", "--message-format=json-render-diagnostics"])
        .output()
        .context("building the benchmark")?;
    if !out.status.success() {
        bail!("building benchmark {target} failed: {}", out.status);
    }
    const KEY: &str = "\"executable\":\"";
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("\"name\":\"{target}\"")))
        .filter_map(|l| {
            let rest = &l[l.find(KEY)? + KEY.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .next_back()
        .with_context(|| format!("cargo reported no executable for benchmark {target}"))?;
    let mut output = String::new();
    for &count in cpus {
        let (code, stdout) =
            vm::run_capture(root, count, timeout_s, vec![exe.clone(), "--bench".into()])?;
        if code != 0 {
            bail!("benchmark {target} failed in the VM (exit code {code})");
        }
        output.push_str(&stdout);
    }
    Ok(output)
}

/// Runs every benchmark and updates docs/benchmarks.md.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(crate::test::HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;
    let doc_path = root.join("docs/benchmarks.md");
    let mut doc =
        fs::read_to_string(&doc_path).with_context(|| format!("reading {}", doc_path.display()))?;
    for name in &args.names {
        if !BENCHES.iter().any(|b| b.name == name) {
            let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
            bail!(
                "no benchmark named {name:?}; there are: {}",
                names.join(", ")
            );
        }
    }
    let chosen = BENCHES
        .iter()
        .filter(|b| args.names.is_empty() || args.names.iter().any(|a| a == b.name));
    for bench in chosen {
        eprintln!("xtask: bench {}", bench.name);
        install::apt(bench.packages)?;
        let table = bench_output(root, bench)?;
        print!("{table}");
        doc = replace_section(&doc, bench.name, &table)?;
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
