//! Builds the eBPF object and puts it in OUT_DIR, where `dataplane::OBJECT` embeds it.
//!
//! When the BPF toolchain is missing this fails once, naming `cargo xtask build-ebpf`, which
//! installs it.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .expect("userspace/ is inside the workspace");
    for dir in xsteer_ebpf_build::SOURCE_DIRS {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let object = match xsteer_ebpf_build::build(workspace) {
        Ok(object) => object,
        Err(e) => {
            eprintln!("error: {e}");
            panic!("{e}");
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("xsteer.bpf.o");
    fs::copy(&object, &out)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), out.display()));
}
