//! `cargo xtask bench`: run the benchmarks and write their tables into docs/benchmarks.md.
//!
//! Each benchmark prints a markdown section on stdout. The file keeps the prose (method,
//! reading of the figures) by hand; only the text between a benchmark's
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers is replaced.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, install};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Print the tables without touching docs/benchmarks.md.
    #[arg(long)]
    no_write: bool,
    /// Run only these benchmarks (classifier, convergence); default: all.
    names: Vec<String>,
}

/// The benchmarks: (marker name, cargo package, bench target).
const BENCHES: &[(&str, &str, &str)] = &[
    ("classifier", "xsteer-bpf-tests", "classifier"),
    ("convergence", "xsteer", "convergence"),
];

/// Runs every benchmark and updates docs/benchmarks.md.
pub fn run(root: &Path, args: Args) -> Result<()> {
    install::apt(crate::test::HOST_PACKAGES)?;
    build_ebpf::ensure_toolchain()?;
    let doc_path = root.join("docs/benchmarks.md");
    let mut doc =
        fs::read_to_string(&doc_path).with_context(|| format!("reading {}", doc_path.display()))?;
    for name in &args.names {
        if !BENCHES.iter().any(|(n, _, _)| n == name) {
            bail!("no benchmark named {name:?}; there are: classifier, convergence");
        }
    }
    let chosen = BENCHES
        .iter()
        .filter(|(n, _, _)| args.names.is_empty() || args.names.iter().any(|a| a == n));
    for &(name, package, bench) in chosen {
        eprintln!("xtask: bench {name}");
        let out = Command::new("cargo")
            .current_dir(root)
            .args(["bench", "--locked", "-p", package, "--bench", bench])
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running cargo bench")?;
        if !out.status.success() {
            bail!("benchmark {name} failed: {}", out.status);
        }
        let table = String::from_utf8(out.stdout).context("benchmark output is not UTF-8")?;
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
