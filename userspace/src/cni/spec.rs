//! The CNI protocol as xsteer-cni speaks it: the environment a runtime sets, the config on
//! stdin, the result and the error JSON on stdout (CNI specification 1.1.0 and 1.0.0, and the 0.3
//! and 0.4 versions that runtimes still send: kindnet's conflist says 0.3.1).
//!
//! The plugin is chained: it never makes a result of its own. The result it prints is the
//! previous plugin's (`prevResult`), passed through as the same JSON value.

use std::path::PathBuf;

use aya::programs::ProgramError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{apply::DEFAULT_PIN_DIR, dataplane::links::LinkError};

/// The CNI versions this plugin speaks; 0.1.0 and 0.2.0 results carry no interfaces.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: what the plugin answers in when the config names none it
/// speaks.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The versions that know CHECK (it came with 0.4.0).
const CHECK_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The spec's well-known error codes that this plugin uses, and its own from 100 on.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the node is not ready, the same call may succeed later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The classifier could not be attached to a pod's veth.
    pub const ATTACH: u32 = 100;
    /// CHECK found a pod's veth without the classifier.
    pub const NOT_CLASSIFIED: u32 = 101;
}

/// A CNI command (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A container was added to the network.
    Add,
    /// A container left the network.
    Del,
    /// Whether a container's networking is as ADD left it.
    Check,
    /// Which versions the plugin speaks.
    Version,
    /// Whether the plugin could serve an ADD now (CNI 1.1.0).
    Status,
    /// Clean up what attachments that are gone left behind (CNI 1.1.0).
    Gc,
}

/// Why an invocation failed; each maps to a CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config's `cniVersion` is not one this plugin speaks.
    #[error(
        "cniVersion {version:?} is not supported: xsteer-cni supports {}",
        SUPPORTED_VERSIONS.join(", ")
    )]
    IncompatibleVersion {
        /// The version the config names.
        version: String,
    },
    /// CHECK under a version older than 0.4.0.
    #[error("config version {version} does not allow CHECK (it came with CNI 0.4.0)")]
    CheckNotAllowed {
        /// The config's version.
        version: String,
    },
    /// A variable the command needs is not set.
    #[error("{name} is not set: it is required for {command:?}")]
    MissingEnv {
        /// The variable.
        name: &'static str,
        /// The command.
        command: Command,
    },
    /// `CNI_COMMAND` is not set.
    #[error("CNI_COMMAND is not set: it must be one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    MissingCommand,
    /// `CNI_COMMAND` names a command this plugin does not know.
    #[error("unknown CNI_COMMAND {0:?}: it must be one of ADD, DEL, CHECK, STATUS, GC, VERSION")]
    UnknownCommand(String),
    /// The config could not be read from stdin.
    #[error("reading the network config from stdin: {0}")]
    Stdin(std::io::Error),
    /// The config is not the JSON this plugin expects.
    #[error("decoding the network config: {0}")]
    Decode(serde_json::Error),
    /// ADD or CHECK without the previous plugin's result.
    #[error(
        "missing prevResult: xsteer-cni is a chained plugin and must follow the main plugin \
         (ptp, bridge, ...) in a conflist"
    )]
    MissingPrevResult,
    /// A field holds a value the plugin cannot use.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// The node's dataplane or its guards are not in place; the same call may succeed once
    /// the agent has started.
    #[error("{0}")]
    NotReady(String),
    /// STATUS found the node not ready: an ADD now would fail with [`CniError::NotReady`].
    #[error("{0}")]
    Unavailable(String),
    /// The kernel could not be asked over netlink, or a pin could not be removed.
    #[error("{what}: {error}")]
    Kernel {
        /// What was being done.
        what: String,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// A pinned program could not be opened, or an interface's programs listed.
    #[error("{what}: {error}")]
    Program {
        /// What was being done.
        what: String,
        /// What the kernel or aya said.
        error: ProgramError,
    },
    /// A pinned link could not be opened or read (boxed: aya's errors are large).
    #[error(transparent)]
    Link(Box<LinkError>),
    /// The classifier could not be attached to a pod's veth.
    #[error("classifying pod veth {interface}: {error}")]
    Attach {
        /// The veth.
        interface: String,
        /// Why (boxed: aya's errors are large).
        error: Box<LinkError>,
    },
    /// CHECK found a pod's veth without an attached classifier link.
    #[error("pod veth {interface}: {problem}")]
    NotClassified {
        /// The veth.
        interface: String,
        /// What is wrong.
        problem: String,
    },
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CheckNotAllowed { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            CniError::MissingEnv { .. }
            | CniError::MissingCommand
            | CniError::UnknownCommand(_) => code::INVALID_ENV,
            CniError::Stdin(_)
            | CniError::Kernel { .. }
            | CniError::Program { .. }
            | CniError::Link(_) => code::IO,
            CniError::Decode(_) => code::DECODE,
            CniError::MissingPrevResult | CniError::InvalidConfig(_) => code::INVALID_CONFIG,
            CniError::NotReady(_) => code::TRY_AGAIN_LATER,
            CniError::Unavailable(_) => code::NOT_AVAILABLE,
            CniError::Attach { .. } => code::ATTACH,
            CniError::NotClassified { .. } => code::NOT_CLASSIFIED,
        }
    }

    /// The error JSON the spec prescribes, in `version`.
    pub fn to_json(&self, version: &str) -> String {
        json!({
            "cniVersion": version,
            "code": self.code(),
            "msg": self.to_string(),
        })
        .to_string()
    }
}

/// What the runtime says through the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// The command.
    pub command: Command,
    /// The container (`CNI_CONTAINERID`), for diagnostics; none for VERSION, STATUS and GC.
    pub container_id: Option<String>,
}

impl Env {
    /// Reads the environment through `var`, checking that the command's required variables are
    /// set. `CNI_NETNS` and `CNI_IFNAME` are required as the spec says, though the plugin works
    /// on the host side only; `CNI_PATH` and `CNI_ARGS` are not used.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match var("CNI_COMMAND").as_deref() {
            None | Some("") => return Err(CniError::MissingCommand),
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => return Err(CniError::UnknownCommand(other.to_owned())),
        };
        let required: &[&'static str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            // The namespace may be gone by the time of DEL.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            // They concern the network, not a container.
            Command::Version | Command::Status | Command::Gc => &[],
        };
        for &name in required {
            if var(name).is_none_or(|v| v.is_empty()) {
                return Err(CniError::MissingEnv { name, command });
            }
        }
        Ok(Env {
            command,
            container_id: var("CNI_CONTAINERID"),
        })
    }
}

/// The config as written on stdin; unknown fields (the runtime adds some) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    pin_dir: Option<PathBuf>,
    prev_result: Option<Value>,
}

/// The plugin's network config.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// The CNI version the runtime speaks, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// Where the agent pins the dataplane (`pinDir`, by default the agent's default).
    pub pin_dir: PathBuf,
    /// The previous plugin's result, exactly as given; `None` when absent or null.
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Parses the config from `stdin`. A config without `cniVersion` is 0.1.0's, which this
    /// plugin does not speak.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        let version = raw.cni_version.unwrap_or_else(|| "0.1.0".to_owned());
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(CniError::IncompatibleVersion { version });
        }
        let pin_dir = raw
            .pin_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
        if !pin_dir.is_absolute() {
            return Err(CniError::InvalidConfig(format!(
                "pinDir {} is not an absolute path",
                pin_dir.display()
            )));
        }
        Ok(NetConf {
            cni_version: version,
            pin_dir,
            prev_result: raw.prev_result.filter(|v| !v.is_null()),
        })
    }

    /// Whether this version allows CHECK.
    pub fn allows_check(&self) -> bool {
        CHECK_VERSIONS.contains(&self.cni_version.as_str())
    }

    /// The previous result, which ADD and CHECK require.
    pub fn required_prev_result(&self) -> Result<&Value, CniError> {
        self.prev_result.as_ref().ok_or(CniError::MissingPrevResult)
    }
}

/// An interface of a result, as far as the plugin reads it.
#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(default)]
    sandbox: Option<String>,
}

/// The part of a result the plugin reads.
#[derive(Deserialize)]
struct PrevResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
}

/// The host-side interfaces of a result: those without a sandbox (a pod's veth on the node, a
/// bridge), in the result's order.
pub fn host_interfaces(result: &Value) -> Result<Vec<String>, CniError> {
    let result = PrevResult::deserialize(result).map_err(CniError::Decode)?;
    Ok(result
        .interfaces
        .into_iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .map(|i| i.name)
        .collect())
}

/// What VERSION prints.
pub fn version_json() -> String {
    json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn commands_and_their_variables() {
        assert_eq!(env(ADD).unwrap().command, Command::Add);
        assert_eq!(env(ADD).unwrap().container_id.as_deref(), Some("c1"));
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        // DEL does without the namespace.
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(del.unwrap().command, Command::Del);
        // STATUS and GC concern the network: nothing but the command is required.
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap().command,
            Command::Status
        );
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let error = env(&vars).unwrap_err();
            assert_eq!(error.code(), code::INVALID_ENV);
            assert!(error.to_string().contains(missing), "{error}");
        }
    }

    #[test]
    fn a_missing_or_unknown_command_is_an_invalid_environment() {
        let missing = env(&[]).unwrap_err();
        assert!(matches!(missing, CniError::MissingCommand));
        assert_eq!(missing.code(), code::INVALID_ENV);
        let unknown = env(&[("CNI_COMMAND", "INIT")]).unwrap_err();
        assert_eq!(unknown.code(), code::INVALID_ENV);
        assert!(unknown.to_string().contains("\"INIT\""), "{unknown}");
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"kindnet","type":"xsteer-cni","runtimeConfig":{}}"#,
        )
        .unwrap();
        assert_eq!(conf.cni_version, "0.3.1");
        assert_eq!(conf.pin_dir, PathBuf::from("/sys/fs/bpf/xsteer"));
        assert_eq!(conf.prev_result, None);
        assert!(!conf.allows_check());
        assert!(matches!(
            conf.required_prev_result(),
            Err(CniError::MissingPrevResult)
        ));

        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","type":"xsteer-cni","pinDir":"/run/x","prevResult":null}"#,
        )
        .unwrap();
        assert_eq!(conf.pin_dir, PathBuf::from("/run/x"));
        assert_eq!(conf.prev_result, None);
        assert!(conf.allows_check());
    }

    #[test]
    fn versions() {
        for version in SUPPORTED_VERSIONS {
            let text = format!(r#"{{"cniVersion":"{version}","type":"xsteer-cni"}}"#);
            assert_eq!(
                NetConf::parse(text.as_bytes()).unwrap().cni_version,
                version
            );
        }
        for refused in [r#""cniVersion":"0.2.0","#, r#""cniVersion":"1.2.0","#, ""] {
            let text = format!(r#"{{{refused}"type":"xsteer-cni"}}"#);
            let error = NetConf::parse(text.as_bytes()).unwrap_err();
            assert_eq!(error.code(), code::INCOMPATIBLE_VERSION, "{refused}");
            assert!(error.to_string().contains("1.1.0"), "{error}");
        }
    }

    #[test]
    fn bad_content() {
        for text in [
            &b"{"[..],
            b"",
            br#"{"cniVersion":3}"#,
            br#"{"cniVersion":"1.0.0","pinDir":5}"#,
        ] {
            assert_eq!(NetConf::parse(text).unwrap_err().code(), code::DECODE);
        }
        let relative = NetConf::parse(br#"{"cniVersion":"1.0.0","pinDir":"xsteer"}"#);
        assert_eq!(relative.unwrap_err().code(), code::INVALID_CONFIG);
    }

    #[test]
    fn host_interfaces_are_those_without_a_sandbox() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"},
                {"name": "vethempty", "sandbox": ""},
            ],
            "ips": [{"address": "10.0.0.5/32", "interface": 2}],
        });
        assert_eq!(
            host_interfaces(&result).unwrap(),
            ["cni0", "veth3243", "vethempty"]
        );
        assert!(host_interfaces(&json!({"ips": []})).unwrap().is_empty());
        let bad = host_interfaces(&json!({"interfaces": "veth0"})).unwrap_err();
        assert_eq!(bad.code(), code::DECODE);
    }

    #[test]
    fn the_previous_result_is_kept_as_the_same_value() {
        let prev = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "veth1", "mac": "aa:bb:cc:dd:ee:ff"}],
            "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
            "x-unknown": {"nested": [1, 2.5, null, true]},
        });
        let stdin = json!({"cniVersion": "0.3.1", "type": "xsteer-cni", "prevResult": prev});
        let conf = NetConf::parse(stdin.to_string().as_bytes()).unwrap();
        let printed = serde_json::to_string(conf.required_prev_result().unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&printed).unwrap(), prev);
    }

    #[test]
    fn error_and_version_json() {
        let error: Value =
            serde_json::from_str(&CniError::MissingPrevResult.to_json("0.3.1")).unwrap();
        assert_eq!(error["cniVersion"], "0.3.1");
        assert_eq!(error["code"], 7);
        assert!(
            error["msg"]
                .as_str()
                .unwrap()
                .starts_with("missing prevResult")
        );
        let version: Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(
            version,
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        let not_ready = CniError::NotReady("no pinned pod classifier".into());
        assert_eq!(not_ready.code(), code::TRY_AGAIN_LATER);
        let unavailable = CniError::Unavailable("no pinned pod classifier".into());
        assert_eq!(unavailable.code(), code::NOT_AVAILABLE);
    }
}
