//! xsteer's developer tasks, run as `cargo xtask <task>`.
//!
//! Each task installs what it needs (Debian packages, the nightly's rust-src, bpf-linker) and
//! says so, so a fresh machine needs nothing but cargo and root.

mod bench;
mod build_ebpf;
mod demo;
mod image;
mod install;
mod kind;
mod test;
mod vm;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "xsteer developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object, installing rust-src and bpf-linker first if missing.
    BuildEbpf,
    /// The main job: build, then a 3-node lab (in the VM where the kernel lacks ESP) that proves
    /// every cross-node pod packet on its wire is ESP.
    Demo(demo::Args),
    /// Run every test level: unit, bpf-tests and netlink (root), and end-to-end in the VM bed.
    Test(test::Args),
    /// Measure the dataplane and write docs/benchmarks.md.
    Bench(bench::Args),
    /// Boot a stock Debian kernel under qemu and run a command in it.
    Vm(vm::Args),
    /// Write the container image, an OCI archive holding a static xsteer, for `kind load
    /// image-archive`, `docker load` or `podman load`.
    Image(image::Args),
    /// xsteer on a kind cluster: up, test, down, uninstall; and check, the deployment level of
    /// `cargo xtask test`.
    Kind(kind::Args),
}

/// Runs the task; a failure is one line on stderr and exit code 1.
fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.task {
        Task::BuildEbpf => build_ebpf::run(&root).map(drop),
        Task::Demo(args) => demo::run(&root, args),
        Task::Test(args) => test::run(&root, args),
        Task::Bench(args) => bench::run(&root, args),
        Task::Image(args) => image::run(&root, args).map(drop),
        Task::Kind(args) => kind::run_task(&root, args),
        Task::Vm(args) => {
            let code = vm::run(&root, args)?;
            std::process::exit(code)
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
