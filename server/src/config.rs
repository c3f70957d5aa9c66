//! Server configuration: command-line flags with environment overrides.

use clap::Args;
use kuvasto_engine::StoreConfig;
use std::path::PathBuf;

/// Where and how the engine stores data.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "KUVASTO_DATA_DIR", default_value = "kuvasto-data")]
    pub data_dir: PathBuf,
    /// Seal segments at this size (MiB).
    #[arg(long, env = "KUVASTO_SEGMENT_SIZE_MIB", default_value_t = 1024)]
    pub segment_size_mib: u64,
    /// Write segments with O_DIRECT (recommended; `false` uses the page cache).
    #[arg(long, env = "KUVASTO_DIRECT_IO", default_value_t = true, action = clap::ArgAction::Set)]
    pub direct_io: bool,
}

impl StorageArgs {
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            segment_size_bytes_max: self.segment_size_mib * 1024 * 1024,
            direct_io: self.direct_io,
            ..StoreConfig::default()
        }
    }
}
