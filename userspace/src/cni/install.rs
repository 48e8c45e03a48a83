//! Chaining `xsteer-cni` into the node's network config and taking it out again: the files
//! written atomically, without ever losing a write of the main CNI plugin.
//!
//! The binary goes first, copied to a temporary file and renamed over the old one (a runtime
//! running the old one keeps its inode), so that the config never names a plugin the runtime
//! cannot find: a missing plugin would fail every pod's ADD. Then the entry goes into the config
//! ([`conflist`] edits the text). On the way out the order is reversed: the entry, then the
//! binary.
//!
//! The config file belongs to the main plugin, which rewrites it when it likes (kindnet at its
//! start and whenever the node's pod CIDR or MTU changes, by renaming a new file over it). A
//! plain rename of our edit over the path would silently undo a rewrite that landed between our
//! read and our rename, and the node would run the main plugin's old config until its next
//! rewrite. So the edit is swapped in with `renameat2(RENAME_EXCHANGE)`, which leaves the file it
//! displaced at the temporary path: if that is not what we read, someone wrote in between, their
//! file goes back, and the edit starts over from their text. (A writer that rewrites the file in
//! place, keeping its inode, is caught only if it finished before that check; kindnet, like the
//! usual CNI installers, renames.) Temporary files are named
//! `.xsteer-cni.<pid>.tmp`, an extension no runtime loads, and removed on every path.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use super::conflist::{self, ConfigKind, ConflistError, Entry, Insertion, PLUGIN_TYPE, Problem};

/// How many times an edit starts over because the file changed under it, before giving up
/// until the next change wakes the caller.
const ATTEMPTS: usize = 5;

/// The node's CNI directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    /// Where the container runtime reads network configs (`/etc/cni/net.d`).
    pub conf: PathBuf,
    /// Where it finds plugin binaries (`/opt/cni/bin`).
    pub bin: PathBuf,
}

/// Why the plugin could not be installed or uninstalled.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file or directory could not be read or written.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The config file is not one the plugin can be chained into.
    #[error(transparent)]
    Conflist(#[from] ConflistError),
    /// The config the runtime reads is a symbolic link, which a rename would replace.
    #[error(
        "{}: a symbolic link; xsteer-cni edits only a regular file and leaves the link and its \
         target as they are",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// The file changed under every attempt to edit it.
    #[error("{}: changed under each of {ATTEMPTS} attempts to edit it", path.display())]
    Busy {
        /// The file.
        path: PathBuf,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |error| InstallError::Io {
        action,
        path,
        error,
    }
}

/// What became of the entry in the node's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The entry was added to this file.
    Inserted(PathBuf),
    /// An entry of xsteer's that differed (another pin dir) gave way to this one.
    Replaced(PathBuf),
    /// The file has the entry already.
    AlreadyPresent(PathBuf),
    /// The directory has no config yet: the main plugin has not written it.
    NoConfigYet,
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Whether the binary was copied (it was missing or differed).
    pub binary_copied: bool,
    /// What became of the entry.
    pub config: Outcome,
}

/// What [`uninstall`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Each config the entry was taken out of, and whether the text is exactly what the
    /// insertion found (see [`conflist::Removal::exact`]).
    pub configs: Vec<(PathBuf, bool)>,
    /// Whether the binary was there and removed.
    pub binary_removed: bool,
}

/// Copies `plugin` into the bin dir as `xsteer-cni`, then chains `entry` into the network
/// config the runtime reads in the conf dir.
pub fn install(dirs: &Dirs, plugin: &Path, entry: &Entry) -> Result<Installed, InstallError> {
    let binary_copied = copy_binary(plugin, &dirs.bin)?;
    let config = insert(&dirs.conf, entry)?;
    Ok(Installed {
        binary_copied,
        config,
    })
}

/// Chains `entry` into the network config the runtime reads in `conf_dir`, unless it is there.
pub fn insert(conf_dir: &Path, entry: &Entry) -> Result<Outcome, InstallError> {
    insert_with(conf_dir, entry, &mut |_| {})
}

/// Takes the entry out of every config list in the conf dir that has it, then removes the
/// binary. Missing directories and files are nothing to do.
pub fn uninstall(dirs: &Dirs) -> Result<Uninstalled, InstallError> {
    let mut done = Uninstalled::default();
    for (file, kind, symlink) in config_files(&dirs.conf)? {
        // Only a regular list can hold an entry of ours: nothing else is ever written.
        if kind != ConfigKind::List || symlink {
            continue;
        }
        let removed = rewrite(
            &file,
            |text| match conflist::remove(&file, text)? {
                Some(removal) => Ok((Some(removal.exact), Some(removal.text))),
                None => Ok((None, None)),
            },
            &mut |_| {},
        )?;
        if let Some(Some(exact)) = removed {
            done.configs.push((file, exact));
        }
    }
    let binary = dirs.bin.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => done.binary_removed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("removing", &binary)(e)),
    }
    Ok(done)
}

/// [`insert`], calling `before_exchange` with the config's path right before each exchange:
/// where a test writes as the main plugin would.
fn insert_with(
    conf_dir: &Path,
    entry: &Entry,
    before_exchange: &mut dyn FnMut(&Path),
) -> Result<Outcome, InstallError> {
    // The file can go between the choice and the edit (a main plugin that renames its file):
    // then the choice is made again.
    for _ in 0..ATTEMPTS {
        let Some((file, kind, symlink)) = config_files(conf_dir)?.into_iter().next() else {
            return Ok(Outcome::NoConfigYet);
        };
        if kind == ConfigKind::Single {
            return Err(ConflistError {
                file,
                problem: Problem::SinglePlugin,
            }
            .into());
        }
        if symlink {
            return Err(InstallError::Symlink { path: file });
        }
        let edited = rewrite(
            &file,
            |text| {
                Ok(match conflist::insert(&file, text, entry)? {
                    Insertion::AlreadyPresent => (Outcome::AlreadyPresent(file.clone()), None),
                    Insertion::Appended(text) => (Outcome::Inserted(file.clone()), Some(text)),
                    Insertion::Replaced(text) => (Outcome::Replaced(file.clone()), Some(text)),
                })
            },
            before_exchange,
        )?;
        if let Some(outcome) = edited {
            return Ok(outcome);
        }
    }
    Err(InstallError::Busy {
        path: conf_dir.to_owned(),
    })
}

/// The files of `conf_dir` the runtime would load, in the order it tries them, each with its
/// kind and whether it is a symbolic link; none if the directory is missing.
fn config_files(conf_dir: &Path) -> Result<Vec<(PathBuf, ConfigKind, bool)>, InstallError> {
    let entries = match fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", conf_dir)(e)),
    };
    let mut files = Vec::new();
    for dir_entry in entries {
        let dir_entry = dir_entry.map_err(io_error("listing", conf_dir))?;
        let kind = dir_entry
            .file_type()
            .map_err(io_error("reading", &dir_entry.path()))?;
        // The runtimes skip directories only (libcni's ConfFiles): a link is loaded too.
        if !kind.is_dir() {
            files.push((dir_entry.file_name(), kind.is_symlink()));
        }
    }
    Ok(
        conflist::load_order(files.iter().map(|(name, _)| name.as_os_str()))
            .into_iter()
            .map(|(name, kind)| {
                let symlink = files.iter().any(|(n, link)| n == name && *link);
                (conf_dir.join(name), kind, symlink)
            })
            .collect(),
    )
}

/// Copies `plugin` to `<bin_dir>/xsteer-cni` (mode 0755) unless the same bytes are there;
/// returns whether it copied.
fn copy_binary(plugin: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let data = fs::read(plugin).map_err(io_error("reading the plugin", plugin))?;
    let same = fs::read(&target).is_ok_and(|there| there == data)
        && fs::metadata(&target).is_ok_and(|m| m.permissions().mode() & 0o7777 == 0o755);
    if same {
        return Ok(false);
    }
    fs::create_dir_all(bin_dir).map_err(io_error("creating", bin_dir))?;
    let temp = Temp::write(bin_dir, &data, 0o755)?;
    fs::rename(&temp.path, &target).map_err(io_error("renaming into place", &target))?;
    sync_dir(bin_dir)?;
    Ok(true)
}

/// What an edit reports, and the new text (`None`: leave the file as it is).
type Edited<T> = (T, Option<Vec<u8>>);

/// Edits `file` with `edit`, which returns what to report and the new text (`None`: leave
/// the file as it is). Returns `None` if the file is gone.
fn rewrite<T, E>(
    file: &Path,
    mut edit: E,
    before_exchange: &mut dyn FnMut(&Path),
) -> Result<Option<T>, InstallError>
where
    E: FnMut(&[u8]) -> Result<Edited<T>, InstallError>,
{
    let dir = file.parent().unwrap_or(Path::new("."));
    for _ in 0..ATTEMPTS {
        let Some((read, inode, mode)) = read_file(file)? else {
            return Ok(None);
        };
        let (report, text) = edit(&read)?;
        let Some(text) = text else {
            return Ok(Some(report));
        };
        let temp = Temp::write(dir, &text, mode)?;
        let ours = inode_of(&temp.path)?;
        before_exchange(file);
        match exchange(&temp.path, file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("exchanging the new text with", file)(e)),
        }
        // What we displaced is at the temporary path now: if it is what we read, nobody wrote
        // in between and the edit is in.
        let displaced = fs::read(&temp.path).map_err(io_error("reading", &temp.path))?;
        if inode_of(&temp.path)? == inode && displaced == read {
            sync_dir(dir)?;
            return Ok(Some(report));
        }
        put_back(&temp.path, file, ours)?;
    }
    Err(InstallError::Busy {
        path: file.to_owned(),
    })
}

/// After an exchange displaced a newer write: swaps the write at `temp` back into `file`, taking
/// out what we put there (inode `ours`). Should yet another write land meanwhile, it comes out
/// at `temp` instead, and goes back in turn: the newest write always ends at `file`.
fn put_back(temp: &Path, file: &Path, mut ours: u64) -> Result<(), InstallError> {
    for _ in 0..ATTEMPTS {
        let theirs = inode_of(temp)?;
        match exchange(temp, file) {
            Ok(()) => {}
            // Removed meanwhile: the removal is the newest word.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("putting back the newer", file)(e)),
        }
        if inode_of(temp)? == ours {
            return sync_dir(file.parent().unwrap_or(Path::new(".")));
        }
        ours = theirs;
    }
    Err(InstallError::Busy {
        path: file.to_owned(),
    })
}

/// The file's bytes, inode and permission bits; `None` if it does not exist.
fn read_file(file: &Path) -> Result<Option<(Vec<u8>, u64, u32)>, InstallError> {
    let opened = match File::open(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("opening", file)(e)),
    };
    let meta = opened.metadata().map_err(io_error("reading", file))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    io::Read::read_to_end(&mut &opened, &mut bytes).map_err(io_error("reading", file))?;
    Ok(Some((bytes, meta.ino(), meta.mode() & 0o7777)))
}

fn inode_of(path: &Path) -> Result<u64, InstallError> {
    fs::symlink_metadata(path)
        .map(|m| m.ino())
        .map_err(io_error("reading", path))
}

/// Swaps the two paths' files atomically.
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
    };
    let (a, b) = (cstr(a)?, cstr(b)?);
    // The system call rather than libc's wrapper: musl, which the image links, gained
    // renameat2 only recently.
    // SAFETY: both paths are NUL-terminated strings that outlive the call; AT_FDCWD makes them
    // relative to the working directory, and the call writes no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing", dir))
}

/// A temporary file beside its target, removed when dropped (by then it was renamed away, or
/// holds what an exchange displaced).
struct Temp {
    path: PathBuf,
}

impl Temp {
    /// Writes `data` with mode `mode` to `.xsteer-cni.<pid>.tmp` in `dir`, durably.
    fn write(dir: &Path, data: &[u8], mode: u32) -> Result<Temp, InstallError> {
        let temp = Temp {
            path: dir.join(format!(".{PLUGIN_TYPE}.{}.tmp", std::process::id())),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp.path)
            .map_err(io_error("creating", &temp.path))?;
        // Set again: the umask may have narrowed the mode at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| file.write_all(data))
            .and_then(|()| file.sync_all())
            .map_err(io_error("writing", &temp.path))?;
        Ok(temp)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // Gone already when it was renamed into place.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A fresh directory with `conf/` and `bin/`, and a plugin binary to copy.
    struct Node {
        root: PathBuf,
        dirs: Dirs,
        plugin: PathBuf,
    }

    impl Node {
        fn new(name: &str) -> Node {
            let root =
                std::env::temp_dir().join(format!("xsteer-cni-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let dirs = Dirs {
                conf: root.join("net.d"),
                bin: root.join("bin"),
            };
            fs::create_dir_all(&dirs.conf).unwrap();
            fs::create_dir_all(&dirs.bin).unwrap();
            let plugin = root.join("xsteer-cni");
            fs::write(&plugin, b"\x7fELF the plugin").unwrap();
            Node { root, dirs, plugin }
        }

        fn config(&self) -> PathBuf {
            self.dirs.conf.join("10-kindnet.conflist")
        }

        /// Writes the config as kindnet does: a new file renamed over it.
        fn main_plugin_writes(&self, text: &str) {
            let temp = self.dirs.conf.join("10-kindnet.conflist.temp");
            fs::write(&temp, text).unwrap();
            fs::rename(&temp, self.config()).unwrap();
        }

        fn read(&self) -> String {
            fs::read_to_string(self.config()).unwrap()
        }

        /// The names in both directories: no temporary file may be left.
        fn names(&self) -> Vec<String> {
            let mut names = Vec::new();
            for dir in [&self.dirs.conf, &self.dirs.bin] {
                for entry in fs::read_dir(dir).unwrap() {
                    names.push(entry.unwrap().file_name().into_string().unwrap());
                }
            }
            names.sort();
            names
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn kindnet(mtu: u32) -> String {
        format!(
            "\n{{\n\t\"cniVersion\": \"0.3.1\",\n\t\"name\": \"kindnet\",\n\t\"plugins\": [\n\t{{\n\
             \t\t\"type\": \"ptp\",\n\t\t\"ipMasq\": false,\n\t\t\"mtu\": {mtu}\n\t}},\n\t{{\n\
             \t\t\"type\": \"portmap\",\n\t\t\"capabilities\": {{\n\t\t\t\"portMappings\": true\n\
             \t\t}}\n\t}}\n\t]\n}}\n"
        )
    }

    fn with_entry(text: &str, entry: &Entry) -> String {
        match conflist::insert(Path::new("x"), text.as_bytes(), entry).unwrap() {
            Insertion::Appended(out) => String::from_utf8(out).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn entry() -> Entry {
        Entry::new("/sys/fs/bpf/xsteer")
    }

    #[test]
    fn install_then_uninstall_leaves_the_node_as_it_was() {
        let node = Node::new("round-trip");
        node.main_plugin_writes(&kindnet(1500));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        fs::set_permissions(node.config(), fs::Permissions::from_mode(0o644)).unwrap();

        let installed = install(&node.dirs, &node.plugin, &entry()).unwrap();
        assert_eq!(
            installed,
            Installed {
                binary_copied: true,
                config: Outcome::Inserted(node.config())
            }
        );
        assert_eq!(node.read(), with_entry(&kindnet(1500), &entry()));
        assert_eq!(mode(&node.config()), 0o644, "the config keeps its mode");
        let binary = node.dirs.bin.join(PLUGIN_TYPE);
        assert_eq!(fs::read(&binary).unwrap(), fs::read(&node.plugin).unwrap());
        assert_eq!(mode(&binary), 0o755);
        assert_eq!(node.names(), ["10-kindnet.conflist", "xsteer-cni"]);

        let again = install(&node.dirs, &node.plugin, &entry()).unwrap();
        assert_eq!(
            again,
            Installed {
                binary_copied: false,
                config: Outcome::AlreadyPresent(node.config())
            }
        );

        let uninstalled = uninstall(&node.dirs).unwrap();
        assert_eq!(
            uninstalled,
            Uninstalled {
                configs: vec![(node.config(), true)],
                binary_removed: true
            }
        );
        assert_eq!(node.read(), kindnet(1500));
        assert_eq!(node.names(), ["10-kindnet.conflist"]);
        assert_eq!(uninstall(&node.dirs).unwrap(), Uninstalled::default());
    }

    #[test]
    fn a_rewrite_by_the_main_plugin_during_the_edit_survives_and_gets_the_entry() {
        for in_place in [false, true] {
            let node = Node::new(if in_place { "race-in-place" } else { "race" });
            node.main_plugin_writes(&kindnet(1500));
            let calls = Cell::new(0);
            let outcome = insert_with(&node.dirs.conf, &entry(), &mut |file| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    // Between our read and our exchange: a new MTU.
                    if in_place {
                        fs::write(file, kindnet(9000)).unwrap();
                    } else {
                        node.main_plugin_writes(&kindnet(9000));
                    }
                }
            })
            .unwrap();
            assert_eq!(outcome, Outcome::Inserted(node.config()));
            assert_eq!(calls.get(), 2, "started over once");
            assert_eq!(node.read(), with_entry(&kindnet(9000), &entry()));
            assert_eq!(node.names(), ["10-kindnet.conflist"]);
        }
    }

    #[test]
    fn a_main_plugin_that_keeps_writing_makes_the_edit_give_up_leaving_its_file() {
        let node = Node::new("busy");
        node.main_plugin_writes(&kindnet(1500));
        let mtu = Cell::new(2000);
        let err = insert_with(&node.dirs.conf, &entry(), &mut |_| {
            mtu.set(mtu.get() + 1);
            node.main_plugin_writes(&kindnet(mtu.get()));
        })
        .unwrap_err();
        assert!(matches!(err, InstallError::Busy { .. }), "{err}");
        assert_eq!(node.read(), kindnet(mtu.get()));
        assert_eq!(node.names(), ["10-kindnet.conflist"]);
    }

    #[test]
    fn a_rewrite_without_the_entry_gets_it_again_and_uninstall_keeps_the_newest_text() {
        let node = Node::new("rewrite");
        node.main_plugin_writes(&kindnet(1500));
        install(&node.dirs, &node.plugin, &entry()).unwrap();
        // kindnet restarted: its template again, without the entry.
        node.main_plugin_writes(&kindnet(9000));
        assert_eq!(
            insert(&node.dirs.conf, &entry()).unwrap(),
            Outcome::Inserted(node.config())
        );
        assert_eq!(node.read(), with_entry(&kindnet(9000), &entry()));
        // Another pin dir: replaced.
        assert_eq!(
            insert(&node.dirs.conf, &Entry::new("/sys/fs/bpf/other")).unwrap(),
            Outcome::Replaced(node.config())
        );
        uninstall(&node.dirs).unwrap();
        assert_eq!(node.read(), kindnet(9000));
    }

    #[test]
    fn with_no_config_yet_only_the_binary_is_copied() {
        let node = Node::new("no-config");
        fs::write(node.dirs.conf.join("10-kindnet.conflist.temp"), "{").unwrap();
        fs::create_dir(node.dirs.conf.join("sub.conflist")).unwrap();
        let installed = install(&node.dirs, &node.plugin, &entry()).unwrap();
        assert_eq!(installed.config, Outcome::NoConfigYet);
        assert!(installed.binary_copied);
        let missing = Path::new("/nonexistent/xsteer/net.d");
        assert_eq!(insert(missing, &entry()).unwrap(), Outcome::NoConfigYet);
        let gone = Dirs {
            conf: missing.to_owned(),
            bin: missing.to_owned(),
        };
        assert_eq!(uninstall(&gone).unwrap(), Uninstalled::default());
    }

    #[test]
    fn the_config_chosen_is_the_runtimes_and_uninstall_cleans_every_list() {
        let node = Node::new("choice");
        node.main_plugin_writes(&kindnet(1500));
        install(&node.dirs, &node.plugin, &entry()).unwrap();
        // A config that sorts first appears (another CNI): the entry goes there too.
        let first = node.dirs.conf.join("05-other.conflist");
        let other = r#"{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"bridge"}]}"#;
        fs::write(&first, other).unwrap();
        assert_eq!(
            insert(&node.dirs.conf, &entry()).unwrap(),
            Outcome::Inserted(first.clone())
        );
        let uninstalled = uninstall(&node.dirs).unwrap();
        assert_eq!(
            uninstalled.configs,
            [(first.clone(), true), (node.config(), true)]
        );
        assert_eq!(fs::read_to_string(&first).unwrap(), other);
        assert_eq!(node.read(), kindnet(1500));
    }

    #[test]
    fn what_cannot_be_chained_into_is_refused_naming_the_file_and_left_alone() {
        let node = Node::new("refused");
        let single = node.dirs.conf.join("05-single.conf");
        fs::write(&single, r#"{"cniVersion":"0.4.0","type":"bridge"}"#).unwrap();
        let err = insert(&node.dirs.conf, &entry()).unwrap_err();
        assert!(
            matches!(&err, InstallError::Conflist(e) if matches!(e.problem, Problem::SinglePlugin)),
            "{err}"
        );
        assert!(err.to_string().contains("05-single.conf"), "{err}");
        fs::remove_file(&single).unwrap();

        node.main_plugin_writes("{ not json");
        let err = insert(&node.dirs.conf, &entry()).unwrap_err();
        assert!(
            err.to_string().contains("10-kindnet.conflist: not JSON"),
            "{err}"
        );
        assert_eq!(node.read(), "{ not json");

        fs::remove_file(node.config()).unwrap();
        let target = node.root.join("real.conflist");
        fs::write(&target, kindnet(1500)).unwrap();
        std::os::unix::fs::symlink(&target, node.config()).unwrap();
        let err = insert(&node.dirs.conf, &entry()).unwrap_err();
        assert!(matches!(err, InstallError::Symlink { .. }), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), kindnet(1500));
        assert_eq!(node.names(), ["10-kindnet.conflist"]);

        let err = install(&node.dirs, Path::new("/nonexistent/xsteer-cni"), &entry()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading the plugin /nonexistent/xsteer-cni:"),
            "{err}"
        );
    }
}
