//! Maps that outlive the process: created once, pinned under a directory, adopted afterwards.
//!
//! `xsteer apply` and a restarted agent must see the maps the last run filled, or the
//! programs attached to the interfaces would keep reading maps nobody updates. aya's
//! `map_pin_path` does exactly this: it opens the pinned map if one is there and otherwise
//! creates it and pins it.

use std::path::Path;

use aya::EbpfLoader;

use super::{Dataplane, DataplaneError, MAPS, OBJECT};

impl Dataplane {
    /// Loads the object with every map adopted from, or created and pinned at, `dir/<name>`.
    ///
    /// `dir` must be on bpffs; it is created if missing.
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        std::fs::create_dir_all(dir).map_err(|error| DataplaneError::PinDir {
            path: dir.to_path_buf(),
            error,
        })?;
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
            spis_mirror: None,
        })
    }

    /// Whether every map is pinned under `dir`.
    pub fn is_pinned(dir: &Path) -> bool {
        MAPS.iter().all(|name| dir.join(name).exists())
    }
}
