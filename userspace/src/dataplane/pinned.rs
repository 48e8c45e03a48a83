//! Maps that outlive the process: created once, pinned under a directory, adopted afterwards.
//!
//! `xsteer apply` and a restarted agent must see the maps the last run filled, or the
//! programs attached to the interfaces would keep reading maps nobody updates. aya's
//! `map_pin_path` does exactly this: it opens the pinned map if one is there and otherwise
//! creates it and pins it.
//!
//! aya adopts a pinned map without comparing it with the object's definition, so a map left by
//! a build with another layout (another type, key or value size, capacity) would be read and
//! written with the wrong sizes. Every pin is checked against the object first, and a mismatch
//! is an error that names the map, both layouts and what to do; save for a map of statistics
//! only, which the agent and `apply` replace with an empty one (a build that adds a counter
//! changes the size of `counters`, and its counts are worth less than an upgrade that stops).

use std::{fmt, path::Path, path::PathBuf};

use aya::{EbpfLoader, maps::MapInfo};
use xsteer_common::maps as map_names;

use super::{Dataplane, DataplaneError, MAPS, OBJECT};

/// Maps that hold statistics only: replacing one loses counts, nothing the programs decide on.
const STATISTICS: [&str; 1] = [map_names::COUNTERS];

/// A pinned map of statistics whose layout differed from this build's, replaced by an empty one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The pin.
    pub path: PathBuf,
    /// The old map's layout.
    pub found: String,
    /// The layout of the new one.
    pub expected: String,
}

impl fmt::Display for Renewed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pinned map {} had {}, but this build's programs need {}: replaced by an empty one, \
             so its counts start again from zero (the programs attached now count into the old \
             map until they are replaced)",
            self.path.display(),
            self.found,
            self.expected
        )
    }
}

/// A map's kernel layout: what must match for a pinned map to be adopted.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = aya_obj::generated::bpf_map_type::try_from(self.map_type)
            .ok()
            .and_then(|t| aya::maps::MapType::try_from(t).ok())
            .map_or_else(|| self.map_type.to_string(), |t| format!("{t:?}"));
        write!(
            f,
            "type {kind}, {} entries, {}-byte keys, {}-byte values, flags {:#x}",
            self.max_entries, self.key_size, self.value_size, self.flags
        )
    }
}

/// Checks every map pinned under `dir` against this build's object; with `renew_statistics`,
/// removes the pin of a map in [`STATISTICS`] of another layout instead of refusing it, and
/// returns what it removed.
fn check_pins(dir: &Path, renew_statistics: bool) -> Result<Vec<Renewed>, DataplaneError> {
    let mut renewed = Vec::new();
    let object =
        aya_obj::Object::parse(OBJECT).map_err(|e| DataplaneError::Object(e.to_string()))?;
    for name in MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let def = object
            .maps
            .get(name)
            .ok_or(DataplaneError::Missing { kind: "map", name })?;
        let expected = Layout {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            flags: def.map_flags(),
        };
        let info = MapInfo::from_pin(&path).map_err(|error| DataplaneError::Map { name, error })?;
        let found = Layout {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        if found != expected && renew_statistics && STATISTICS.contains(&name) {
            std::fs::remove_file(&path).map_err(|error| DataplaneError::PinFile {
                what: "removing",
                path: path.clone(),
                error,
            })?;
            renewed.push(Renewed {
                path,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        } else if found != expected {
            return Err(DataplaneError::PinnedLayout {
                path,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(renewed)
}

impl Dataplane {
    /// Loads the object with every map adopted from, or created and pinned at, `dir/<name>`.
    ///
    /// `dir` must be on bpffs; it is created if missing. A pinned map whose layout differs from
    /// this build's is [`DataplaneError::PinnedLayout`], and nothing is loaded.
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        Self::load_pinned_renewing(dir, false).map(|(dataplane, _)| dataplane)
    }

    /// As [`Dataplane::load_pinned`], for the agent and `apply`, which attach their own programs
    /// next: a pinned map of statistics only (`counters`) of another layout is replaced by an
    /// empty one rather than refused, and returned so that the caller can say so.
    pub fn load_pinned_as_owner(dir: &Path) -> Result<(Self, Vec<Renewed>), DataplaneError> {
        Self::load_pinned_renewing(dir, true)
    }

    fn load_pinned_renewing(
        dir: &Path,
        renew_statistics: bool,
    ) -> Result<(Self, Vec<Renewed>), DataplaneError> {
        std::fs::create_dir_all(dir).map_err(|error| DataplaneError::PinDir {
            path: dir.to_path_buf(),
            error,
        })?;
        let renewed = check_pins(dir, renew_statistics)?;
        let paths: Vec<_> = MAPS.iter().map(|name| (*name, dir.join(name))).collect();
        let mut loader = EbpfLoader::new();
        loader.override_global("AYA_LOG_LEVEL", &0u8, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let dataplane = Dataplane {
            ebpf,
            remote_mirror: None,
            remote6_mirror: None,
            spis_mirror: None,
        };
        Ok((dataplane, renewed))
    }

    /// Whether every map is pinned under `dir`.
    pub fn is_pinned(dir: &Path) -> bool {
        MAPS.iter().all(|name| dir.join(name).exists())
    }
}
