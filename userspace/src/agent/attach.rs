//! Attaching the programs so that they outlive the agent.
//!
//! Every attachment is a BPF link (TCX for tc, kernel ≥ 6.6; an XDP link for XDP) pinned at
//! `<pin dir>/links/<program>@<interface>`. The pin, not the agent, keeps the program attached:
//! an agent that exits or is killed leaves the dataplane running. A starting agent finds the pin
//! and swaps its freshly loaded program into the existing link with one `bpf_link_update`,
//! so no packet ever sees the interface without a program.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, LinkError, PinnedLink},
    tc::SchedClassifierLink,
    xdp::{XdpLink, XdpMode},
};

use super::AgentError;

/// Where the links are pinned, under the pin dir.
const LINKS_DIR: &str = "links";

/// How an attachment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    New,
    /// An existing pinned link that now runs this agent's program.
    Adopted,
}

/// The pin path of `program` on `interface`.
pub fn pin_path(pin_dir: &Path, program: &str, interface: &str) -> PathBuf {
    pin_dir
        .join(LINKS_DIR)
        .join(format!("{program}@{interface}"))
}

/// Interfaces that have a pinned link of `program`.
pub fn pinned_interfaces(pin_dir: &Path, program: &str) -> Vec<String> {
    let prefix = format!("{program}@");
    fs::read_dir(pin_dir.join(LINKS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&prefix)
                .map(str::to_owned)
        })
        .collect()
}

/// Removes the pin of `program` on `interface` (after the interface went away, the kernel has
/// already detached the link; the pin would only hold a dead link).
pub fn unpin(pin_dir: &Path, program: &str, interface: &str) -> io::Result<()> {
    match fs::remove_file(pin_path(pin_dir, program, interface)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn attach_error(program: &'static str, interface: &str) -> impl FnOnce(String) -> AgentError {
    let interface = interface.to_owned();
    move |reason| AgentError::Attach {
        program,
        interface,
        reason,
    }
}

/// Opens the pinned link at `path`, if any.
fn pinned(path: &Path) -> Result<Option<FdLink>, String> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("opening pinned link {}: {e}", path.display())),
    }
}

/// Pins a fresh link at `path`.
fn pin(link: FdLink, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    link.pin(path)
        .map(drop)
        .map_err(|e| format!("pinning {}: {e}", path.display()))
}

/// Adopts the link pinned at `path` for `program` (swapping the program in), or attaches anew
/// and pins; `adopt` and `attach` do the program-type-specific parts.
fn adopt_or_attach<P>(
    program: &mut P,
    path: &Path,
    adopt: impl FnOnce(&mut P, FdLink) -> Result<(), String>,
    attach: impl FnOnce(&mut P) -> Result<FdLink, String>,
) -> Result<Attached, String> {
    if let Some(old) = pinned(path)? {
        match adopt(program, old) {
            Ok(()) => return Ok(Attached::Adopted),
            // A link whose interface was deleted and re-created under the same name is dead:
            // replace it.
            Err(_) => {
                fs::remove_file(path).map_err(|e| format!("removing a dead pin: {e}"))?;
            }
        }
    }
    pin(attach(program)?, path)?;
    Ok(Attached::New)
}

/// Attaches the tc `program` (named `name`) to `interface` in direction `attach_type`, adopting
/// a pinned link if there is one.
pub fn tc(
    program: &mut SchedClassifier,
    name: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    pin_dir: &Path,
) -> Result<Attached, AgentError> {
    adopt_or_attach(
        program,
        &pin_path(pin_dir, name, interface),
        |program, old| {
            let link = SchedClassifierLink::try_from(old).map_err(|e| e.to_string())?;
            let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
            // The pin still holds the link, which now runs this program; our handle can go.
            drop(program.take_link(id));
            Ok(())
        },
        |program| {
            let id = program
                .attach(interface, attach_type)
                .map_err(|e| e.to_string())?;
            let link = program.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| {
                format!(
                    "not a BPF link ({e}): restart-safe attachment needs TCX, kernel 6.6 or newer"
                )
            })
        },
    )
    .map_err(attach_error(name, interface))
}

/// Attaches the XDP `program` (named `name`) to `interface`, adopting a pinned link if there is
/// one.
pub fn xdp(
    program: &mut Xdp,
    name: &'static str,
    interface: &str,
    pin_dir: &Path,
) -> Result<Attached, AgentError> {
    adopt_or_attach(
        program,
        &pin_path(pin_dir, name, interface),
        |program, old| {
            let link = XdpLink::try_from(old).map_err(|e| e.to_string())?;
            let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
            drop(program.take_link(id));
            Ok(())
        },
        |program| {
            let id = program
                .attach(interface, XdpMode::Default)
                .map_err(|e| e.to_string())?;
            let link = program.take_link(id).map_err(|e| e.to_string())?;
            FdLink::try_from(link).map_err(|e| format!("not a BPF link: {e}"))
        },
    )
    .map_err(attach_error(name, interface))
}
