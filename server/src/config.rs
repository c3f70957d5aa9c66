//! Server configuration: command-line flags with environment overrides.

use clap::Args;
use kuvasto_engine::dicom::Tag;
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
    /// Extra top-level attributes to index, as `GGGGEEEE` hex tags, comma-separated
    /// (e.g. `00180050,00081090`).
    #[arg(long, env = "KUVASTO_INDEX_EXTRA_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    pub index_extra_tags: Vec<Tag>,
}

/// Parses `GGGGEEEE` (optionally `(GGGG,EEEE)`) into a tag.
pub fn parse_tag(text: &str) -> Result<Tag, String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | ',' | ' '))
        .collect();
    if hex.len() != 8 {
        return Err(format!(
            "{text:?} is not a tag: expected 8 hex digits, GGGGEEEE"
        ));
    }
    u32::from_str_radix(&hex, 16)
        .map(Tag)
        .map_err(|_| format!("{text:?} is not a tag: expected 8 hex digits, GGGGEEEE"))
}

impl StorageArgs {
    pub fn store_config(&self) -> StoreConfig {
        let mut config = StoreConfig {
            segment_size_bytes_max: self.segment_size_mib * 1024 * 1024,
            direct_io: self.direct_io,
            ..StoreConfig::default()
        };
        config.instances.extra_tags = self.index_extra_tags.clone();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_in_both_spellings_and_bad_ones_are_refused() {
        assert_eq!(parse_tag("00180050"), Ok(Tag::new(0x0018, 0x0050)));
        assert_eq!(parse_tag("(0018,0050)"), Ok(Tag::new(0x0018, 0x0050)));
        assert!(parse_tag("0018005").is_err());
        assert!(parse_tag("0018005Z").is_err());
    }
}
