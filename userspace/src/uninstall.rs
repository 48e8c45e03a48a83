//! `xsteer uninstall`: removes everything xsteer owns on a node, and nothing else.
//!
//! Order matters even on the way out: the pinned classifier and its links go first, so nothing
//! is marked any more and the CNI plugin classifies no new pod; then the reconcile towards an
//! empty state removes map entries, routes, the rule, policies and SAs in its safe order; the
//! guards go last, so until the very end a pod packet bound for another node is dropped rather
//! than sent in plaintext. After that, pod traffic between nodes is no longer encrypted: that
//! is what uninstalling means.

use std::{fs, io, path::Path};

use xsteer_common::programs;

use crate::{
    dataplane::{self, Dataplane, DataplaneError, links},
    kernel::Netlink,
    reconcile::{self, Change, ReconcileError, Snapshot, plan::plan},
    state::KeyLedger,
};

/// Why an uninstall failed.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The netlink sockets could not be opened.
    #[error("opening netlink sockets: {0}")]
    Netlink(io::Error),
    /// The pinned maps could not be opened.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// Reading or removing kernel objects failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// A pin could not be removed.
    #[error("removing {path}: {error}")]
    Unpin {
        /// The pin.
        path: String,
        /// What the OS said.
        error: io::Error,
    },
}

fn unpin_all(pin_dir: &Path, program: &str) -> Result<Vec<String>, UninstallError> {
    let interfaces = links::pinned_interfaces(pin_dir, program);
    for interface in &interfaces {
        links::unpin(pin_dir, program, interface).map_err(|error| UninstallError::Unpin {
            path: links::pin_path(pin_dir, program, interface)
                .display()
                .to_string(),
            error,
        })?;
    }
    Ok(interfaces)
}

/// Removes xsteer's links and pins under `pin_dir`, and its SAs, policies, rule, routes in
/// `table` and map entries; `report` is called with each step. Returns the number of steps.
pub async fn uninstall(
    pin_dir: &Path,
    state_dir: &Path,
    table: u32,
    mut report: impl FnMut(&str),
) -> Result<usize, UninstallError> {
    let mut steps = 0;
    // The pinned classifier first: the CNI plugin attaches nothing more from here on.
    let program = dataplane::program_pin_path(pin_dir, programs::POD_CLASSIFIER);
    match fs::remove_file(&program) {
        Ok(()) => {
            report(&format!("unpin {}", program.display()));
            steps += 1;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(UninstallError::Unpin {
                path: program.display().to_string(),
                error,
            });
        }
    }
    for interface in unpin_all(pin_dir, programs::POD_CLASSIFIER)? {
        report(&format!(
            "detach {} from {interface}",
            programs::POD_CLASSIFIER
        ));
        steps += 1;
    }

    let netlink = Netlink::connect().map_err(UninstallError::Netlink)?;
    let pinned = Dataplane::is_pinned(pin_dir);
    let mut dataplane = if pinned {
        Dataplane::load_pinned(pin_dir)?
    } else {
        // Nothing pinned: only kernel objects can be left; empty maps read as nothing.
        Dataplane::load()?
    };
    let have = reconcile::read(&netlink, &mut dataplane, table).await?;
    let changes: Vec<Change> = plan(&have, &Snapshot::default());
    let mut ledger = KeyLedger::open(state_dir).map_err(ReconcileError::from)?;
    // Removals only: no SA is added, so none is outbound.
    let mut outbound = reconcile::Outbound {
        ledger: &mut ledger,
        node_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        peers: Default::default(),
        epochs: Vec::new(),
    };
    reconcile::execute(
        &netlink,
        &mut dataplane,
        &mut outbound,
        table,
        &changes,
        |c| report(&c.to_string()),
    )
    .await?;
    steps += changes.len();
    drop(dataplane);

    for program in [
        programs::EGRESS_GUARD,
        programs::INGRESS_GUARD,
        programs::INGRESS_GUARD_TC,
    ] {
        for interface in unpin_all(pin_dir, program)? {
            report(&format!("detach {program} from {interface}"));
            steps += 1;
        }
    }
    if pin_dir.exists() {
        // Removing a pinned map's file drops the last reference once no program holds it.
        fs::remove_dir_all(pin_dir).map_err(|error| UninstallError::Unpin {
            path: pin_dir.display().to_string(),
            error,
        })?;
        report(&format!("remove {}", pin_dir.display()));
        steps += 1;
    }
    Ok(steps)
}
