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
//! is an error that names the map, both layouts and what to do.

use std::path::Path;

use aya::{EbpfLoader, maps::MapInfo};

use super::{Dataplane, DataplaneError, MAPS, OBJECT};

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

/// Checks every map pinned under `dir` against this build's object.
fn check_pins(dir: &Path) -> Result<(), DataplaneError> {
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
        if found != expected {
            return Err(DataplaneError::PinnedLayout {
                path,
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    Ok(())
}

impl Dataplane {
    /// Loads the object with every map adopted from, or created and pinned at, `dir/<name>`.
    ///
    /// `dir` must be on bpffs; it is created if missing. A pinned map whose layout differs from
    /// this build's is [`DataplaneError::PinnedLayout`], and nothing is loaded.
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        std::fs::create_dir_all(dir).map_err(|error| DataplaneError::PinDir {
            path: dir.to_path_buf(),
            error,
        })?;
        check_pins(dir)?;
        let paths: Vec<_> = MAPS.iter().map(|name| (*name, dir.join(name))).collect();
        let mut loader = EbpfLoader::new();
        loader.override_global("AYA_LOG_LEVEL", &0u8, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        Ok(Dataplane {
            ebpf,
            remote_mirror: None,
            remote6_mirror: None,
            spis_mirror: None,
        })
    }

    /// Whether every map is pinned under `dir`.
    pub fn is_pinned(dir: &Path) -> bool {
        MAPS.iter().all(|name| dir.join(name).exists())
    }
}
