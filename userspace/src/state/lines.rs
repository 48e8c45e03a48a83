//! Append-only line files: read them whole, append one line durably, replace them whole
//! atomically.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

/// Creates `dir` (and its parents) with mode 0700 if it is missing.
pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The lines of `path`, trimmed; a missing file has none.
pub(super) fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    match File::open(path) {
        Ok(file) => BufReader::new(file)
            .lines()
            .map(|line| line.map(|l| l.trim().to_owned()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Appends `line` to `path` durably (written and fsynced), creating the file with mode 0600 and
/// its directory with mode 0700 if needed.
pub(super) fn append_line(path: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{line}")?;
    file.sync_all()
}

/// Replaces `path` with `lines` atomically and durably ([`crate::durable`]), mode 0600.
pub(super) fn replace(path: &Path, lines: &[String]) -> io::Result<()> {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    crate::durable::replace(path, text.as_bytes(), 0o600)
}
