//! The agent's part in chaining `xsteer-cni` (crate::cni): it installs the plugin once the
//! dataplane the plugin needs is in place, and keeps the entry in the node's network config
//! while the main CNI plugin rewrites the file. A failure is logged and tried again at the next
//! change or poll; it never stops the agent, whose veth watch still classifies every pod (only
//! later than the plugin would). When the agent stops, the plugin stays chained: it works from
//! the pinned dataplane, which outlives the agent, and the next agent finds it in place.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    cni::{
        conflist::{Entry, PLUGIN_TYPE},
        install::{self, Dirs, InstallError, Installed, Outcome},
    },
    watch::DirWatch,
};

/// The least time between two edits of the config. A main plugin that rewrites its file whenever
/// it differs from its own would otherwise take turns with the agent as fast as inotify wakes
/// them; spaced, the turns come once a poll, each logged, and the rewrite the agent skipped is
/// seen at the next poll.
const EDIT_SPACING: Duration = Duration::from_secs(1);

/// Where the agent installs the plugin from and to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniOptions {
    /// The node's CNI config and bin dirs.
    pub dirs: Dirs,
    /// The plugin binary to copy into the bin dir.
    pub plugin: PathBuf,
}

/// The plugin on the node, as the agent keeps it.
pub(super) struct Chain {
    opts: CniOptions,
    entry: Entry,
    /// Whether the binary is known to be in place: until it is, every attempt copies it again.
    binary_in_place: bool,
    /// What was last logged, so that a state that lasts is logged once, not at every poll.
    last: Option<String>,
    /// When the agent last edited the config.
    edited: Option<Instant>,
}

impl Chain {
    /// The plugin to install with the entry naming `pin_dir`.
    pub(super) fn new(opts: CniOptions, pin_dir: &str) -> Chain {
        Chain {
            opts,
            entry: Entry::new(pin_dir),
            binary_in_place: false,
            last: None,
            edited: None,
        }
    }

    /// Watches the config and bin dirs, so that a rewrite of the config or a removed binary
    /// is seen at once; `None` (and a warning) if inotify cannot, the poll then catches the
    /// config's changes.
    pub(super) fn watch(&self) -> Option<DirWatch> {
        let dirs = [self.opts.dirs.conf.as_path(), self.opts.dirs.bin.as_path()];
        match DirWatch::new(dirs) {
            Ok(watch) => Some(watch),
            Err(e) => {
                warn!("cni: cannot watch {dirs:?} for changes, polling every second only: {e}");
                None
            }
        }
    }

    /// Copies the binary unless the same is in place, and makes sure the entry is in the
    /// config.
    pub(super) fn install(&mut self) {
        if self.too_soon() {
            return;
        }
        let result = install::install(&self.opts.dirs, &self.opts.plugin, &self.entry);
        self.binary_in_place = result.is_ok();
        if let Ok(Installed {
            binary_copied: true,
            ..
        }) = &result
        {
            info!(
                "cni: copied {} to {}",
                self.opts.plugin.display(),
                self.opts.dirs.bin.join(PLUGIN_TYPE).display()
            );
        }
        self.report(result.map(|installed| installed.config));
    }

    /// Makes sure the entry is in the config: reads only the config, unless the binary is not
    /// known to be in place yet, when it installs in full.
    pub(super) fn ensure(&mut self) {
        if self.too_soon() {
            return;
        }
        if !self.binary_in_place {
            return self.install();
        }
        let result = install::insert(&self.opts.dirs.conf, &self.entry);
        self.report(result);
    }

    /// Whether the last edit is too recent for another (see [`EDIT_SPACING`]).
    fn too_soon(&self) -> bool {
        self.edited.is_some_and(|at| at.elapsed() < EDIT_SPACING)
    }

    /// Logs an edit every time, a state (the entry in place, no config yet, a failure) when it
    /// is new.
    fn report(&mut self, result: Result<Outcome, InstallError>) {
        let present = |file: &Path| format!("cni: {PLUGIN_TYPE} is in {}", file.display());
        let (state, news) = match result {
            Ok(Outcome::Inserted(file)) => (
                present(&file),
                Some(format!(
                    "cni: inserted {PLUGIN_TYPE} into {}",
                    file.display()
                )),
            ),
            Ok(Outcome::Replaced(file)) => (
                present(&file),
                Some(format!(
                    "cni: replaced another entry of {PLUGIN_TYPE} in {} with {}",
                    file.display(),
                    self.entry.text()
                )),
            ),
            Ok(Outcome::AlreadyPresent(file)) => (present(&file), None),
            Ok(Outcome::NoConfigYet) => (
                format!(
                    "cni: no network config in {} yet (the main CNI plugin has not written it): \
                     {PLUGIN_TYPE} goes in when it appears",
                    self.opts.dirs.conf.display()
                ),
                None,
            ),
            Err(e) => {
                let line = format!(
                    "cni: installing {PLUGIN_TYPE} failed, trying again at the next change: {e}; \
                     meanwhile new pods get the classifier from the agent's veth watch, not from \
                     the plugin"
                );
                if self.last.as_ref() != Some(&line) {
                    warn!("{line}");
                }
                self.last = Some(line);
                return;
            }
        };
        match news {
            Some(news) => {
                info!("{news}");
                self.edited = Some(Instant::now());
            }
            None if self.last.as_ref() != Some(&state) => info!("{state}"),
            None => {}
        }
        self.last = Some(state);
    }
}

/// The default plugin binary: `xsteer-cni` beside the running executable, as the image holds
/// them.
pub fn default_plugin() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().unwrap_or(Path::new("/")).join(PLUGIN_TYPE))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_failed_install_is_tried_again_in_full_and_a_rewrite_gets_the_entry_back() {
        let root = std::env::temp_dir().join(format!("xsteer-agent-cni-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dirs = Dirs {
            conf: root.join("net.d"),
            bin: root.join("bin"),
        };
        fs::create_dir_all(&dirs.conf).unwrap();
        let config = dirs.conf.join("10-kindnet.conflist");
        let main = r#"{"cniVersion":"0.3.1","name":"kindnet","plugins":[{"type":"ptp"}]}"#;
        fs::write(&config, main).unwrap();
        let plugin = root.join("xsteer-cni");
        let mut chain = Chain::new(
            CniOptions {
                dirs: dirs.clone(),
                plugin: plugin.clone(),
            },
            "/sys/fs/bpf/xsteer",
        );

        // No plugin binary yet: nothing is chained, and the next poll tries in full.
        chain.install();
        assert!(!chain.binary_in_place);
        assert_eq!(fs::read_to_string(&config).unwrap(), main);
        assert!(chain.last.as_deref().unwrap().contains("failed"));
        fs::write(&plugin, "the plugin").unwrap();
        chain.ensure();
        assert!(chain.binary_in_place);
        assert_eq!(fs::read(dirs.bin.join(PLUGIN_TYPE)).unwrap(), b"the plugin");
        let chained = fs::read_to_string(&config).unwrap();
        assert!(chained.contains(chain.entry.text()));

        // The main plugin writes its file again: the next poll puts the entry back, not sooner
        // than a second after the last edit.
        fs::write(&config, main).unwrap();
        chain.install();
        assert_eq!(fs::read_to_string(&config).unwrap(), main, "too soon");
        chain.edited = Some(Instant::now() - EDIT_SPACING);
        chain.ensure();
        assert_eq!(fs::read_to_string(&config).unwrap(), chained);
        assert_eq!(
            chain.last.as_deref(),
            Some(format!("cni: xsteer-cni is in {}", config.display()).as_str())
        );
        let _ = fs::remove_dir_all(&root);
    }
}
