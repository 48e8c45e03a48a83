//! The container runtime's half of CNI, as far as the lab needs it: read a node's network
//! configuration list and run its plugins for a pod, as libcni does for containerd and CRI-O.
//!
//! ADD runs the plugins in list order, each given the previous one's result as `prevResult`; the
//! last result is the pod's, cached for DEL. DEL runs them in reverse order with the cached result.
//! A plugin that fails stops the chain: its error (the CNI error JSON it printed) is returned as
//! a [`PluginError`], and the runtime (here: [`super::pods`]) cleans up and may retry, as the
//! kubelet does.
//!
//! Plugins run inside the node's network namespace, entered with setns(2) only, so they see the
//! node's bpffs as the agent does (see [`super::netns`]).

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::netns::command_in;

/// A plugin's refusal, as it reported it on stdout.
#[derive(Debug, thiserror::Error)]
#[error("CNI plugin {plugin} failed {command}: error {code}: {msg}{}", details_suffix(.details))]
pub struct PluginError {
    /// The plugin's `type`.
    pub plugin: String,
    /// ADD, DEL or CHECK.
    pub command: &'static str,
    /// The CNI error code (11: try again later).
    pub code: u64,
    /// Its message.
    pub msg: String,
    /// Its details, possibly empty.
    pub details: String,
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

/// What a CNI call is about: one pod's sandbox.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface inside it.
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`), e.g. `IP=` for host-local.
    pub args: String,
    /// Addresses asked of IPAM as `"args": {"cni": {"ips": [...]}}` in the config of each plugin
    /// with an `ipam` section (CNI's conventions); empty: none. host-local takes one address of
    /// each family there, but only one address in all in `IP=`.
    pub ips: Vec<String>,
}

/// A node's CNI setup: where its configuration and plugins are, and its namespace.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// The node's network namespace (a name under /run/netns).
    pub node_netns: String,
    /// The configuration directory (`/etc/cni/net.d` on a node).
    pub conf_dir: PathBuf,
    /// `CNI_PATH`: where plugins are looked for, in order.
    pub path: Vec<PathBuf>,
    /// Where results are cached for DEL (`/var/lib/cni/results` with libcni).
    pub cache_dir: PathBuf,
}

/// A network configuration list, as read from its file.
#[derive(Clone, Debug)]
pub struct ConfList {
    /// The file.
    pub file: PathBuf,
    /// Its `name`.
    pub name: String,
    /// Its `cniVersion`.
    pub version: String,
    /// Its `plugins`, each a JSON object with a `type`.
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// The plugin types in order, e.g. `["ptp", "xsteer-cni"]`.
    pub fn types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }
}

impl Runtime {
    /// The list the runtime uses: the first `*.conflist` by name in the conf dir.
    pub fn conflist(&self) -> Result<ConfList> {
        let mut files: Vec<_> = fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
            .collect();
        files.sort();
        let Some(file) = files.into_iter().next() else {
            bail!("no *.conflist in {}", self.conf_dir.display());
        };
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("{}: no string {name:?}", file.display()))
        };
        let (name, version) = (field("name")?, field("cniVersion")?);
        let plugins = value
            .get("plugins")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: no \"plugins\" array", file.display()))?
            .iter()
            .map(|p| {
                p.as_object()
                    .filter(|p| p.get("type").and_then(Value::as_str).is_some())
                    .cloned()
                    .with_context(|| format!("{}: a plugin without a \"type\"", file.display()))
            })
            .collect::<Result<_>>()?;
        Ok(ConfList {
            file,
            name,
            version,
            plugins,
        })
    }

    fn cache_path(&self, sandbox: &Sandbox) -> PathBuf {
        self.cache_dir
            .join(format!("{}.json", sandbox.container_id))
    }

    /// Runs ADD through the list; returns the last plugin's result, also cached for DEL.
    pub fn add(&self, sandbox: &Sandbox) -> Result<Value> {
        let list = self.conflist()?;
        let mut result = None;
        for plugin in &list.plugins {
            result = Some(self.exec("ADD", &list, plugin, sandbox, result.as_ref())?);
        }
        let result = result.with_context(|| format!("{}: no plugins", list.file.display()))?;
        fs::create_dir_all(&self.cache_dir)
            .with_context(|| format!("creating {}", self.cache_dir.display()))?;
        let cache = self.cache_path(sandbox);
        fs::write(&cache, result.to_string())
            .with_context(|| format!("writing {}", cache.display()))?;
        Ok(result)
    }

    /// Runs DEL through the list in reverse, with the cached result if there is one; removes the
    /// cache. Every plugin is called even if one fails; the first failure is returned.
    pub fn del(&self, sandbox: &Sandbox) -> Result<()> {
        let list = self.conflist()?;
        let cache = self.cache_path(sandbox);
        let cached: Option<Value> = fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let mut first_error = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.exec("DEL", &list, plugin, sandbox, cached.as_ref()) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        match fs::remove_file(&cache) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", cache.display()))
            }
            _ => Ok(()),
        }
    }

    /// Runs one plugin; its stdout is its result, or its error when it exits non-zero.
    fn exec(
        &self,
        command: &'static str,
        list: &ConfList,
        plugin: &Map<String, Value>,
        sandbox: &Sandbox,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let binary = self.find(kind)?;
        let mut conf = plugin.clone();
        conf.insert("name".into(), Value::String(list.name.clone()));
        conf.insert("cniVersion".into(), Value::String(list.version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        if !sandbox.ips.is_empty() && conf.contains_key("ipam") {
            conf.insert(
                "args".into(),
                serde_json::json!({ "cni": { "ips": sandbox.ips } }),
            );
        }
        let path = std::env::join_paths(&self.path).context("joining CNI_PATH")?;
        let mut child = Command::new(&binary);
        child
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", &sandbox.netns)
            .env("CNI_IFNAME", &sandbox.ifname)
            .env("CNI_ARGS", &sandbox.args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command_in(&mut child, &self.node_netns, false)?;
        let mut child = child
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        child
            .stdin
            .take()
            .context("the plugin's stdin")?
            .write_all(Value::Object(conf).to_string().as_bytes())
            .with_context(|| format!("writing the config to {kind}"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {kind}"))?;
        let stdout: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let field = |name| {
                stdout
                    .as_ref()
                    .and_then(|v| v.get(name))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let code = stdout
                .as_ref()
                .and_then(|v| v.get("code"))
                .and_then(Value::as_u64);
            let Some(code) = code else {
                bail!(
                    "CNI plugin {kind} failed {command} ({}) without a CNI error; stdout: {:?}, stderr: {:?}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            };
            return Err(PluginError {
                plugin: kind.to_owned(),
                command,
                code,
                msg: field("msg"),
                details: field("details"),
            }
            .into());
        }
        match (command, stdout) {
            ("ADD", Some(result)) => Ok(result),
            ("ADD", None) => bail!(
                "CNI plugin {kind} succeeded ADD but printed no JSON result: {:?}",
                String::from_utf8_lossy(&out.stdout).trim()
            ),
            _ => Ok(Value::Null),
        }
    }

    fn find(&self, kind: &str) -> Result<PathBuf> {
        if kind.is_empty() || kind.contains('/') {
            bail!("bad plugin type {kind:?}");
        }
        self.path
            .iter()
            .map(|dir| dir.join(kind))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "no CNI plugin {kind} in {}",
                    self.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }
}

/// The host-side interfaces of a result: those without a `sandbox` (in the node's namespace).
pub fn host_interfaces(result: &Value) -> Vec<String> {
    result
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The addresses of a result (both families, in the result's order), without their prefix
/// length.
pub fn addresses(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ptp_result_names_its_host_veth_and_address() {
        // ptp 1.1.1's ADD result for the lab's conflist (cniVersion 0.3.1).
        let result: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","interfaces":[{"name":"veth1c6f0e9b","mac":"2a:f1:3e:66:19:7c"},
            {"name":"eth0","mac":"66:0b:8b:c2:30:08","sandbox":"/run/netns/xsl-node1-pod1"}],
            "ips":[{"version":"4","interface":1,"address":"10.244.1.2/24","gateway":"10.244.1.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(host_interfaces(&result), ["veth1c6f0e9b"]);
        assert_eq!(addresses(&result), ["10.244.1.2"]);
    }

    #[test]
    fn the_first_conflist_by_name_is_the_one_used() {
        let dir = std::env::temp_dir().join(format!("xsteer-cni-runtime-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        fs::write(
            dir.join("10-a.conflist"),
            r#"{"cniVersion":"0.3.1","name":"a","plugins":[{"type":"ptp"},{"type":"xsteer-cni"}]}"#,
        )
        .unwrap();
        fs::write(dir.join("05-ignored.txt"), "not a config").unwrap();
        let runtime = Runtime {
            node_netns: String::new(),
            conf_dir: dir.clone(),
            path: vec![],
            cache_dir: dir.join("results"),
        };
        let list = runtime.conflist().unwrap();
        assert_eq!((list.name.as_str(), list.version.as_str()), ("a", "0.3.1"));
        assert_eq!(list.types(), ["ptp", "xsteer-cni"]);
        fs::write(dir.join("10-a.conflist"), r#"{"name":"a","plugins":[]}"#).unwrap();
        let e = runtime.conflist().unwrap_err().to_string();
        assert!(e.contains("cniVersion"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
