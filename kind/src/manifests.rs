//! Reading the manifests: every YAML document of every `*.yaml` file in a directory, as JSON
//! values, found again by kind and name.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// One Kubernetes object from a manifest file.
#[derive(Clone, Debug)]
pub struct Resource {
    /// The file it is in.
    pub file: PathBuf,
    /// The object as written.
    pub value: Value,
}

impl Resource {
    /// Its `kind`.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    /// Its `metadata.name`.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// Its `metadata.namespace`, if it has one.
    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

/// The objects of a directory of manifests, in file order and then document order.
#[derive(Clone, Debug)]
pub struct Manifests {
    /// Every object.
    pub resources: Vec<Resource>,
    /// The files read, sorted.
    pub files: Vec<PathBuf>,
}

impl Manifests {
    /// Reads every `*.yaml` file in `dir`.
    pub fn load(dir: &Path) -> Result<Manifests> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("reading the manifest directory {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
        files.sort();
        if files.is_empty() {
            bail!("no *.yaml manifests in {}", dir.display());
        }
        let mut resources = Vec::new();
        for file in &files {
            resources.extend(read(file)?);
        }
        Ok(Manifests { resources, files })
    }

    /// The object of `kind` named `name`; an error names what is missing.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Resource> {
        self.resources
            .iter()
            .find(|r| r.kind() == kind && r.name() == name)
            .with_context(|| format!("no {kind} named {name:?} in the manifests"))
    }
}

/// The objects in one YAML file (documents separated by `---`; empty documents skipped).
pub fn read(file: &Path) -> Result<Vec<Resource>> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse(&text)
        .with_context(|| format!("{}", file.display()))
        .map(|values| {
            values
                .into_iter()
                .map(|value| Resource {
                    file: file.to_owned(),
                    value,
                })
                .collect()
        })
}

/// The objects in YAML text.
pub fn parse(text: &str) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .with_context(|| format!("YAML document {} does not parse", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(_) => values.push(value),
            other => bail!("YAML document {} is not an object: {other}", i + 1),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_read_in_order_and_empty_ones_skipped() {
        let values = parse("---\nkind: A\n---\n# only a comment\n---\nkind: B\n").unwrap();
        let kinds: Vec<_> = values.iter().map(|v| v["kind"].clone()).collect();
        assert_eq!(kinds, [Value::from("A"), Value::from("B")]);
        assert!(parse("- a list\n").is_err());
        let err = format!("{:#}", parse("kind: A\n---\nkind: [\n").unwrap_err());
        assert!(err.contains("document 2"), "{err}");
    }

    #[test]
    fn the_manifests_hold_what_the_tasks_look_up() {
        use crate::names::*;
        let manifests = Manifests::load(&crate::manifests_dir()).unwrap();
        for (kind, name) in [
            ("ServiceAccount", "xsteer"),
            ("ClusterRole", "xsteer"),
            ("ClusterRoleBinding", "xsteer"),
            ("ConfigMap", CONFIG_MAP),
            ("DaemonSet", DAEMONSET),
        ] {
            let resource = manifests.get(kind, name).unwrap();
            if !kind.starts_with("Cluster") {
                assert_eq!(resource.namespace(), Some(NAMESPACE), "{kind} {name}");
            }
            let (key, value) = SELECTOR.split_once('=').unwrap();
            assert_eq!(
                resource.value["metadata"]["labels"][key], value,
                "{kind} {name} carries the label"
            );
        }
        assert!(
            manifests.resources.iter().all(|r| r.kind() != "Secret"),
            "no key Secret among what is applied: the tasks make a fresh one"
        );
    }
}
