//! `xsteer config render`: a config template with `${NAME}` filled in from the environment.
//!
//! A DaemonSet's pods share one ConfigMap, yet each agent's config names its own node. The
//! Downward API hands a pod its node's name and address as environment variables; an init
//! container fills them in once, before the agent starts, so the agent reads an ordinary file
//! and nothing in the config's meaning depends on where it runs.
//!
//! A value lands inside a TOML string, so only plain values are accepted (letters, digits and
//! `. _ - : /`): a value can never add a key or close a string. A name that is not set is an
//! error naming it, never an empty string.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// `${` without a closing `}`, or a name that is not `[A-Z_][A-Z0-9_]*`.
    #[error("line {line}: {what}")]
    Syntax {
        /// 1-based line of the template.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A name the environment does not set.
    #[error("line {line}: ${{{name}}} is not set in the environment")]
    Unset {
        /// 1-based line of the template.
        line: usize,
        /// The variable.
        name: String,
    },
    /// A value with a character that could change the config's structure.
    #[error(
        "line {line}: ${{{name}}} is {value:?}, which is not a plain value (letters, digits, \
         '.', '_', '-', ':', '/')"
    )]
    Unsafe {
        /// 1-based line of the template.
        line: usize,
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
    /// Reading the template or writing the output failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// Reading or writing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
}

/// Fills in every `${NAME}` of `template` with `lookup(NAME)`.
pub fn render(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    for (i, line) in template.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(RenderError::Syntax {
                    line: line_no,
                    what: "`${` without a closing `}`".into(),
                });
            };
            let name = &after[..end];
            if !is_name(name) {
                return Err(RenderError::Syntax {
                    line: line_no,
                    what: format!("{name:?} is not a variable name ([A-Z_][A-Z0-9_]*)"),
                });
            }
            let value = lookup(name).ok_or_else(|| RenderError::Unset {
                line: line_no,
                name: name.to_owned(),
            })?;
            if value.is_empty() || !value.chars().all(is_plain) {
                return Err(RenderError::Unsafe {
                    line: line_no,
                    name: name.to_owned(),
                    value,
                });
            }
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Renders the file `template` with the process environment into `output`, replacing it
/// atomically (a reader sees the old file or the new one), mode 0644.
pub fn render_file(template: &Path, output: &Path) -> Result<(), RenderError> {
    render_file_with(template, output, |name| std::env::var(name).ok())
}

fn render_file_with(
    template: &Path,
    output: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), RenderError> {
    let text = fs::read_to_string(template).map_err(|error| RenderError::Io {
        what: "reading the template",
        path: template.to_owned(),
        error,
    })?;
    let rendered = render(&text, lookup)?;
    let io_error = |error| RenderError::Io {
        what: "writing",
        path: output.to_owned(),
        error,
    };
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)
        .map_err(io_error)?;
    file.write_all(rendered.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&partial, output).map_err(io_error)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-:/".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NODE_NAME" => Some("kind-worker".into()),
            "NODE_IP" => Some("172.18.0.3".into()),
            "EVIL" => Some("x\"\nkey_file = \"/tmp/k".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn every_name_is_filled_in_and_the_rest_kept() {
        let out = render(
            "a = 1 # $HOME and $ alone stay\n[node]\nname = \"${NODE_NAME}\"\nip = \"${NODE_IP}\"\n\
             both = \"${NODE_NAME}@${NODE_IP}\"",
            env,
        )
        .unwrap();
        assert_eq!(
            out,
            "a = 1 # $HOME and $ alone stay\n[node]\nname = \"kind-worker\"\nip = \"172.18.0.3\"\n\
             both = \"kind-worker@172.18.0.3\""
        );
    }

    #[test]
    fn unset_unsafe_and_malformed_names_are_refused_by_line() {
        let err = |t: &str| render(t, env).unwrap_err().to_string();
        assert_eq!(
            err("a\nb = \"${NOPE}\""),
            "line 2: ${NOPE} is not set in the environment"
        );
        assert!(err("x = \"${EVIL}\"").contains("not a plain value"));
        assert!(err("x = \"${EMPTY}\"").contains("not a plain value"));
        assert!(err("x = \"${NODE_NAME\"").contains("without a closing"));
        assert!(err("x = \"${node_name}\"").contains("not a variable name"));
        assert!(err("x = \"${}\"").contains("not a variable name"));
    }

    #[test]
    fn the_output_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("xsteer-template-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let template = dir.join("in.toml");
        let output = dir.join("out.toml");
        fs::write(&template, "name = \"${NODE_NAME}\"\n").unwrap();
        fs::write(&output, "old").unwrap();
        render_file_with(&template, &output, env).unwrap();
        let text = fs::read_to_string(&output).unwrap();
        assert_eq!(text, "name = \"kind-worker\"\n");
        assert!(!dir.join("out.toml.partial").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
