//! Attaching the programs so that they outlive the agent.
//!
//! Every attachment is a BPF link (TCX for tc, kernel ≥ 6.6; an XDP link for XDP) pinned at
//! `<pin dir>/links/<program>@<interface>`. The pin, not the agent, keeps the program attached:
//! an agent that exits or is killed leaves the dataplane running. A starting agent finds the pin
//! and swaps its freshly loaded program into the existing link with one `bpf_link_update`,
//! so no packet ever sees the interface without a program.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError as AyaLinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::{XdpLink, XdpMode},
    },
};
use nix::fcntl::{Flock, FlockArg};
use xsteer_common::programs;

/// Where the links are pinned, under the pin dir.
const LINKS_DIR: &str = "links";

/// Why a program could not be attached with a pinned link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The pin of an existing link could not be opened.
    #[error("opening pinned link {}: {error}", path.display())]
    Open {
        /// The pin.
        path: PathBuf,
        /// What aya said.
        error: AyaLinkError,
    },
    /// A fresh link could not be pinned.
    #[error("pinning {}: {error}", path.display())]
    Pin {
        /// Where it was to be pinned.
        path: PathBuf,
        /// What aya said.
        error: PinError,
    },
    /// The pin directory could not be made, or a dead pin removed.
    #[error("{what} {}: {error}", path.display())]
    Files {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The kernel refused the attachment.
    #[error("attaching {program} to {interface}: {error}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The interface.
        interface: String,
        /// What the kernel or aya said.
        error: ProgramError,
    },
    /// The attachment is not a BPF link, so it cannot be pinned to outlive the agent.
    #[error(
        "attaching {program} to {interface}: not a BPF link ({error}): restart-safe attachment \
         needs TCX, kernel 6.6 or newer"
    )]
    NotALink {
        /// The program.
        program: &'static str,
        /// The interface.
        interface: String,
        /// What aya said.
        error: AyaLinkError,
    },
}

/// Where the ingress guard runs on an uplink. Both hooks run the same checks and count the same
/// counters; one of them is attached per uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    /// XDP, before the kernel builds an skb: for a NIC whose driver runs XDP natively.
    Xdp,
    /// tc ingress (TCX): for a veth, where XDP would copy every GSO packet into an XDP buffer
    /// (docs/benchmarks.md measures what that costs).
    Tc,
}

impl IngressHook {
    /// The hook for an uplink: tc on a veth, XDP on anything else.
    pub fn for_uplink(is_veth: bool) -> IngressHook {
        if is_veth {
            IngressHook::Tc
        } else {
            IngressHook::Xdp
        }
    }

    /// The name of the program that runs at this hook (and of its pin).
    pub fn program(self) -> &'static str {
        match self {
            IngressHook::Xdp => programs::INGRESS_GUARD,
            IngressHook::Tc => programs::INGRESS_GUARD_TC,
        }
    }

    /// The other hook: the one whose pin a switch to this one leaves behind.
    pub fn other(self) -> IngressHook {
        match self {
            IngressHook::Xdp => IngressHook::Tc,
            IngressHook::Tc => IngressHook::Xdp,
        }
    }
}

impl std::fmt::Display for IngressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IngressHook::Xdp => "xdp",
            IngressHook::Tc => "tc",
        })
    }
}

impl std::str::FromStr for IngressHook {
    type Err = String;

    fn from_str(s: &str) -> Result<IngressHook, String> {
        match s {
            "xdp" => Ok(IngressHook::Xdp),
            "tc" => Ok(IngressHook::Tc),
            _ => Err(format!("{s:?} is not \"auto\", \"xdp\" or \"tc\"")),
        }
    }
}

/// How an attachment came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    New,
    /// An existing pinned link that now runs this agent's program.
    Adopted,
}

/// The directory of the links' pins under `pin_dir`.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINKS_DIR)
}

/// The pin path of `program` on `interface`.
pub fn pin_path(pin_dir: &Path, program: &str, interface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("{program}@{interface}"))
}

/// Interfaces that have a pinned link of `program`.
pub fn pinned_interfaces(pin_dir: &Path, program: &str) -> Vec<String> {
    let prefix = format!("{program}@");
    fs::read_dir(links_dir(pin_dir))
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

/// The id of the program the link pinned for `program` on `interface` runs, if there is such a
/// pin. A pin of a dead link (its interface went away) still names its last program: compare
/// with what the kernel lists for the interface to know whether it is attached.
pub fn pinned_program_id(
    pin_dir: &Path,
    program: &str,
    interface: &str,
) -> Result<Option<u32>, LinkError> {
    let path = pin_path(pin_dir, program, interface);
    let Some(link) = pinned(&path)? else {
        return Ok(None);
    };
    let info = link
        .info()
        .map_err(|error| LinkError::Open { path, error })?;
    Ok(Some(info.program_id()))
}

/// An exclusive hold on the links directory, released when dropped.
#[derive(Debug)]
pub struct LinksLock {
    _held: Flock<File>,
}

/// Takes the links directory under `pin_dir` for this process, waiting for whoever holds it.
///
/// The agent's pod veth watcher and the CNI plugin both attach the classifier to a new veth,
/// often at the same moment: each holds this lock from looking at the veth's pin until its own
/// link is pinned, so the second one finds the first one's link instead of attaching a second
/// program. The directory must exist (the agent makes it when it pins the guards).
pub fn lock(pin_dir: &Path) -> Result<LinksLock, LinkError> {
    let dir = links_dir(pin_dir);
    let locking = |error| LinkError::Files {
        what: "locking",
        path: dir.clone(),
        error,
    };
    let file = File::open(&dir).map_err(locking)?;
    let held =
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| locking(errno.into()))?;
    Ok(LinksLock { _held: held })
}

/// Opens the pinned link at `path`, if any.
fn pinned(path: &Path) -> Result<Option<FdLink>, LinkError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(AyaLinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(error) => Err(LinkError::Open {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Pins a fresh link at `path`.
fn pin(link: FdLink, path: &Path) -> Result<(), LinkError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|error| LinkError::Files {
            what: "creating",
            path: dir.to_owned(),
            error,
        })?;
    }
    link.pin(path).map(drop).map_err(|error| LinkError::Pin {
        path: path.to_owned(),
        error,
    })
}

/// Adopts the link pinned at `path` for `program` (swapping the program in), or attaches anew
/// and pins; `adopt` and `attach` do the program-type-specific parts. A pin that cannot be
/// adopted holds a dead link (its interface was deleted and re-created under the same name)
/// and is replaced.
fn adopt_or_attach<P>(
    program: &mut P,
    path: &Path,
    adopt: impl FnOnce(&mut P, FdLink) -> Option<()>,
    attach: impl FnOnce(&mut P) -> Result<FdLink, LinkError>,
) -> Result<Attached, LinkError> {
    if let Some(old) = pinned(path)? {
        if adopt(program, old).is_some() {
            return Ok(Attached::Adopted);
        }
        fs::remove_file(path).map_err(|error| LinkError::Files {
            what: "removing the dead pin",
            path: path.to_owned(),
            error,
        })?;
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
) -> Result<Attached, LinkError> {
    adopt_or_attach(
        program,
        &pin_path(pin_dir, name, interface),
        |program, old| {
            let link = SchedClassifierLink::try_from(old).ok()?;
            let id = program.attach_to_link(link).ok()?;
            // The pin still holds the link, which now runs this program; our handle can go.
            drop(program.take_link(id));
            Some(())
        },
        |program| {
            let attach_error = |error| LinkError::Attach {
                program: name,
                interface: interface.to_owned(),
                error,
            };
            let id = program
                .attach(interface, attach_type)
                .map_err(attach_error)?;
            let link = program.take_link(id).map_err(attach_error)?;
            FdLink::try_from(link).map_err(|error| LinkError::NotALink {
                program: name,
                interface: interface.to_owned(),
                error,
            })
        },
    )
}

/// Attaches the XDP `program` (named `name`) to `interface` in the driver's native mode,
/// adopting a pinned link if there is one.
///
/// Never in generic mode: generic XDP runs on every skb the interface receives, and so on the
/// inner packets that tunnel-mode xfrm decrypts and hands back to the uplink, which the
/// ingress guard would take for plaintext from pods. A driver without native XDP makes this
/// fail; the ingress guard then belongs at tc ingress ([`IngressHook::Tc`]).
pub fn xdp(
    program: &mut Xdp,
    name: &'static str,
    interface: &str,
    pin_dir: &Path,
) -> Result<Attached, LinkError> {
    adopt_or_attach(
        program,
        &pin_path(pin_dir, name, interface),
        |program, old| {
            let link = XdpLink::try_from(old).ok()?;
            let id = program.attach_to_link(link).ok()?;
            drop(program.take_link(id));
            Some(())
        },
        |program| {
            let attach_error = |error| LinkError::Attach {
                program: name,
                interface: interface.to_owned(),
                error,
            };
            let id = program
                .attach(interface, XdpMode::Driver)
                .map_err(attach_error)?;
            let link = program.take_link(id).map_err(attach_error)?;
            FdLink::try_from(link).map_err(|error| LinkError::NotALink {
                program: name,
                interface: interface.to_owned(),
                error,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veth_gets_tc_anything_else_xdp_and_each_names_its_program() {
        assert_eq!(IngressHook::for_uplink(true), IngressHook::Tc);
        assert_eq!(IngressHook::for_uplink(false), IngressHook::Xdp);
        for hook in [IngressHook::Xdp, IngressHook::Tc] {
            assert_eq!(hook.to_string().parse::<IngressHook>(), Ok(hook));
            assert_ne!(hook.other(), hook);
            assert_ne!(hook.other().program(), hook.program());
        }
        assert_eq!(IngressHook::Xdp.program(), programs::INGRESS_GUARD);
        assert_eq!(IngressHook::Tc.program(), programs::INGRESS_GUARD_TC);
    }
}
