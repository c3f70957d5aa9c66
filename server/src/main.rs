//! `kuvasto`: the archive server and its operator commands.

use clap::{Parser, Subcommand};
use kuvasto_server::config::ConfigArgs;

#[derive(Parser)]
#[command(
    name = "kuvasto",
    version,
    about = "Kuvasto: a national medical imaging archive"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: DICOMweb on http://127.0.0.1:8080/dicom-web, data in ./kuvasto-data
    /// (see docs/configuration.md for the file, flags and environment variables).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Reclaim the space of deleted and replaced instances: copy the live records of sealed
    /// segments that are mostly garbage into new segments and remove the old ones. Run it
    /// with the server stopped (the store is locked while the server runs).
    Compact {
        #[command(flatten)]
        config: ConfigArgs,
        /// Compact sealed segments at least this fraction garbage (0.0 to 1.0).
        #[arg(long, default_value_t = 0.5)]
        garbage_ratio_min: f64,
    },
    /// Open the store, print what recovery found and its sizes, and exit (non-zero on corruption).
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> anyhow::Result<()> {
    // Structured logs: key=value text by default, one JSON object per line with
    // KUVASTO_LOG_FORMAT=json (for log shippers); RUST_LOG filters (default "info").
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("KUVASTO_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Ok(other) => {
            builder.init();
            tracing::warn!(
                format = other,
                "KUVASTO_LOG_FORMAT is `text` or `json`; using text"
            );
        }
    }
    match Cli::parse().command {
        Command::Serve { config } => kuvasto_server::serve::serve(config.resolve()?),
        Command::Compact {
            config,
            garbage_ratio_min,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&garbage_ratio_min),
                "--garbage-ratio-min must be between 0.0 and 1.0"
            );
            let store = kuvasto_server::serve::open_store(&config.resolve()?)?;
            let report = store.compact(&kuvasto_engine::CompactOptions {
                segments: None,
                garbage_ratio_min,
            })?;
            println!(
                "compacted {} segments into {}: {} -> {} bytes ({} objects, {} tombstones moved)",
                report.segments_removed.len(),
                report.segments_written.len(),
                report.bytes_before,
                report.bytes_after,
                report.objects_moved,
                report.tombstones_moved
            );
            store.close();
            Ok(())
        }
        Command::Check { config } => {
            let store = kuvasto_server::serve::open_store(&config.resolve()?)?;
            let stats = store.stats();
            println!(
                "segments {} (sealed {}), {} bytes, {} live keys",
                stats.segments, stats.sealed_segments, stats.segment_bytes, stats.live_keys
            );
            let index = store.catalog_open_report().clone();
            if let Some(catalog) = store.catalog() {
                let runs = catalog.run_counts();
                let instances: u64 = runs.iter().map(|r| u64::from(r.instances)).sum();
                println!(
                    "index: {} runs ({instances} instance rows), {} in memory, {} runs set aside and rebuilt",
                    runs.len(),
                    catalog.mem_len(),
                    index.runs_rejected.len()
                );
                // Every byte of every run against its block checksum.
                catalog.verify().map_err(|e| {
                    anyhow::anyhow!("{e}; the next query that reads it sets the run aside and rebuilds it from the segments, or remove the file and reopen")
                })?;
            }
            let corruption = store.recovery_report().corruption.len();
            store.close();
            if corruption > 0 {
                anyhow::bail!("{corruption} damaged places found; see the log above");
            }
            Ok(())
        }
    }
}
