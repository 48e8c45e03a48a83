//! An OCI image archive written from scratch: one layer, its config, a manifest, an index and
//! `oci-layout`, in a tar, with Docker's `manifest.json` beside them.
//!
//! Why both formats: the OCI layout is the standard one (podman, skopeo, containerd); Docker
//! before 25 and tools that go through it read only `manifest.json`. Docker 25's own `docker
//! save` writes the same pair. The image's name is given the way each reader looks for it:
//! `io.containerd.image.name` (containerd, hence `kind load image-archive`; also podman and
//! Docker 25), `org.opencontainers.image.ref.name` (the OCI tag, for `skopeo
//! oci-archive:FILE:TAG`), and `RepoTags` in `manifest.json` (older Docker).
//!
//! Everything is written from its inputs alone, with fixed owners and timestamps, so the same
//! binary and timestamp give the same archive, byte for byte. The layer is left uncompressed:
//! every reader accepts it, its digest is its diff ID, and no compressor's version changes it.

use std::io::Write;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A file in the image's single layer.
pub struct File<'a> {
    /// Its path, relative (`usr/bin/xsteer`).
    pub path: &'a str,
    /// Unix permission bits.
    pub mode: u32,
    /// The content.
    pub data: &'a [u8],
}

/// What the image is: its name, its files and how it runs.
pub struct Image<'a> {
    /// The reference it is loaded as, e.g. `xsteer:dev`.
    pub reference: &'a Reference,
    /// The layer's files; directories on their paths are added.
    pub files: &'a [File<'a>],
    /// Empty directories to add (mount points), relative, with their mode.
    pub dirs: &'a [(&'a str, u32)],
    /// The entrypoint.
    pub entrypoint: &'a [&'a str],
    /// The default arguments.
    pub cmd: &'a [&'a str],
    /// Labels of the image config.
    pub labels: &'a [(&'a str, String)],
    /// Seconds since the Unix epoch for every timestamp in the archive.
    pub created: u64,
}

/// An image reference `repository:tag`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The repository, e.g. `xsteer` or `registry.example/team/xsteer`.
    pub repository: String,
    /// The tag, e.g. `dev`.
    pub tag: String,
}

impl Reference {
    /// Parses `repository:tag`; the tag is required (a moving `latest` makes a kind node pull).
    pub fn parse(text: &str) -> Result<Reference> {
        let Some((repository, tag)) = text.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))
        else {
            bail!("image reference {text:?} has no tag: give repository:tag, e.g. xsteer:dev");
        };
        let repository_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:".contains(c))
            });
        if !repository_ok {
            bail!(
                "image repository {repository:?}: lowercase letters, digits, '.', '_', '-' in \
                 '/'-separated parts"
            );
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !tag.starts_with(['.', '-']);
        if !tag_ok {
            bail!(
                "image tag {tag:?}: 1..=128 letters, digits, '.', '_', '-', not starting with \
                 '.' or '-'"
            );
        }
        Ok(Reference {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The fully qualified name containerd and Docker store it under: a repository without a
    /// registry is Docker Hub's (`docker.io/library/xsteer:dev`), as a kubelet resolves an
    /// image field `xsteer:dev`.
    pub fn qualified(&self) -> String {
        let first = self.repository.split('/').next().unwrap_or_default();
        let has_registry =
            self.repository.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        match (has_registry, self.repository.contains('/')) {
            (true, _) => format!("{self}"),
            (false, true) => format!("docker.io/{self}"),
            (false, false) => format!("docker.io/library/{self}"),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// What was written: the archive and the digests a reader reports.
pub struct Written {
    /// The archive's bytes.
    pub archive: Vec<u8>,
    /// The manifest's digest (`sha256:...`): what `skopeo inspect` calls the image's digest.
    pub manifest_digest: String,
    /// The config's digest: the image ID Docker and podman show (its first 12 hex digits).
    pub config_digest: String,
}

/// Builds the archive in memory (it is a few megabytes).
pub fn write(image: &Image) -> Result<Written> {
    let layer = layer(image)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&config(image, &layer_digest))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer_digest, layer.len())],
    }))?;
    let manifest_digest = digest(&manifest);
    let mut manifest_descriptor = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        &manifest_digest,
        manifest.len(),
    );
    manifest_descriptor["annotations"] = json!({
        "io.containerd.image.name": image.reference.qualified(),
        "org.opencontainers.image.ref.name": image.reference.tag,
    });
    manifest_descriptor["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_descriptor],
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [image.reference.to_string()],
        "Layers": [blob(&layer_digest)],
    }]))?;

    let mut archive = Tar::new(image.created);
    archive.dir("blobs", 0o755)?;
    archive.dir("blobs/sha256", 0o755)?;
    // Blobs in digest order, so the archive does not depend on the order they were made in.
    let mut blobs = [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ];
    blobs.sort_by_key(|(d, _)| *d);
    for (d, data) in blobs {
        archive.file(&blob(d), 0o644, data)?;
    }
    archive.file("index.json", 0o644, &index)?;
    archive.file("manifest.json", 0o644, &docker_manifest)?;
    archive.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Written {
        archive: archive.finish()?,
        manifest_digest,
        config_digest,
    })
}

/// The layer: the files, the directories on their paths and the extra directories, sorted.
fn layer(image: &Image) -> Result<Vec<u8>> {
    let mut dirs: Vec<(String, u32)> = image
        .dirs
        .iter()
        .map(|(d, mode)| (d.trim_end_matches('/').to_owned(), *mode))
        .collect();
    for file in image.files {
        let mut parent = std::path::Path::new(file.path).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push((dir.to_string_lossy().into_owned(), 0o755));
            parent = dir.parent();
        }
    }
    dirs.sort();
    dirs.dedup_by(|a, b| a.0 == b.0);
    let mut files: Vec<&File> = image.files.iter().collect();
    files.sort_by_key(|f| f.path);

    let mut tar = Tar::new(image.created);
    for (dir, mode) in &dirs {
        tar.dir(dir, *mode)?;
    }
    for file in files {
        tar.file(file.path, file.mode, file.data)?;
    }
    tar.finish()
}

/// The image config (OCI image spec, "config"): how the image runs, and its one layer's diff ID.
fn config(image: &Image, layer_digest: &str) -> Value {
    let created = rfc3339(image.created);
    let labels: serde_json::Map<String, Value> = image
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
        .collect();
    json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    })
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// `sha256:` and the hex digest of `data`.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::from("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A tar written in memory with fixed owner (root) and modification time.
struct Tar {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Tar {
    fn new(mtime: u64) -> Tar {
        Tar {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut header = self.header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut header, format!("{path}/"), std::io::empty())
            .with_context(|| format!("adding directory {path} to a tar"))
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut header = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .with_context(|| format!("adding {path} to a tar"))
    }

    fn finish(self) -> Result<Vec<u8>> {
        let mut out = self.builder.into_inner().context("finishing a tar")?;
        out.flush()?;
        Ok(out)
    }
}

/// `secs` since the Unix epoch as an RFC 3339 UTC timestamp (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, data));
        }
        out
    }

    fn sample(reference: &Reference) -> Written {
        write(&Image {
            reference,
            files: &[File {
                path: "usr/bin/xsteer",
                mode: 0o755,
                data: b"\x7fELF not really",
            }],
            dirs: &[("tmp", 0o1777)],
            entrypoint: &["xsteer"],
            cmd: &["agent", "--config", "/etc/xsteer/xsteer.toml"],
            labels: &[("org.opencontainers.image.version", "0.1.0".into())],
            created: 1_700_000_000,
        })
        .unwrap()
    }

    #[test]
    fn every_blob_is_named_by_its_digest_and_the_index_leads_to_the_layer() {
        let reference = Reference::parse("xsteer:dev").unwrap();
        let written = sample(&reference);
        let files = entries(&written.archive);
        let get = |name: &str| -> &Vec<u8> {
            &files
                .iter()
                .find(|(p, _)| p == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .1
        };
        for (path, data) in files.iter().filter(|(p, _)| p.starts_with("blobs/sha256/")) {
            if !path.ends_with('/') {
                assert_eq!(
                    format!("blobs/sha256/{}", &digest(data)[7..]),
                    *path,
                    "blob named by its digest"
                );
            }
        }
        assert_eq!(get("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: Value = serde_json::from_slice(get("index.json")).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], written.manifest_digest.as_str());
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "docker.io/library/xsteer:dev"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "dev"
        );
        let manifest: Value = serde_json::from_slice(get(&format!(
            "blobs/sha256/{}",
            &written.manifest_digest[7..]
        )))
        .unwrap();
        assert_eq!(manifest["config"]["digest"], written.config_digest.as_str());
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        let config: Value = serde_json::from_slice(get(&format!(
            "blobs/sha256/{}",
            &written.config_digest[7..]
        )))
        .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Entrypoint"], json!(["xsteer"]));
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");

        let docker: Value = serde_json::from_slice(get("manifest.json")).unwrap();
        assert_eq!(docker[0]["RepoTags"], json!(["xsteer:dev"]));
        assert_eq!(
            docker[0]["Layers"][0],
            format!("blobs/sha256/{}", &layer_digest[7..])
        );

        let layer = entries(get(&format!("blobs/sha256/{}", &layer_digest[7..])));
        let paths: Vec<&str> = layer.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["tmp/", "usr/", "usr/bin/", "usr/bin/xsteer"]);
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let reference = Reference::parse("xsteer:dev").unwrap();
        assert_eq!(sample(&reference).archive, sample(&reference).archive);
    }

    #[test]
    fn references_need_a_tag_and_are_qualified_as_a_kubelet_does() {
        for (text, qualified) in [
            ("xsteer:dev", "docker.io/library/xsteer:dev"),
            ("team/xsteer:1.2", "docker.io/team/xsteer:1.2"),
            (
                "registry.example:5000/team/xsteer:v1",
                "registry.example:5000/team/xsteer:v1",
            ),
            ("localhost/xsteer:dev", "localhost/xsteer:dev"),
        ] {
            assert_eq!(Reference::parse(text).unwrap().qualified(), qualified);
        }
        for bad in [
            "xsteer",
            "registry.example:5000/xsteer",
            "Xsteer:dev",
            "xsteer:",
            "xsteer:-x",
            ":dev",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
