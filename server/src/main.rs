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
    /// Expire studies whose retention has run out ([[retention]] rules; each expiry
    /// audited), then reclaim the space of deleted, replaced and expired instances: copy the
    /// live records of sealed segments that are mostly garbage into new segments and remove
    /// the old ones. On a running server (through its admin socket) reads and writes go on
    /// meanwhile; on a stopped one it opens the data directory itself.
    Compact {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        compact: kuvasto_server::ops::compact::CompactArgs,
    },
    /// Open the store, print what recovery found and its sizes, and exit (non-zero on corruption).
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Bulk-load a legacy PACS export (directory trees, DICOMDIRs, files with or without
    /// extension) through the archive rules, offline (stop the server first), resumable from
    /// a journal. Exit code 0 when every file was stored (or already was), 1 when some were
    /// rejected (the report says which), 2 for usage and open errors. See
    /// docs/configuration.md.
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        import: kuvasto_server::import::ImportArgs,
    },
    /// Scrub the store with the server stopped: every record of every segment (header and
    /// body checksums, directories, trailers) and every block of every index run, listing each
    /// damaged place with the objects it affects. Segments are never repaired (restore the
    /// named objects from a backup); `--repair-indices` rebuilds damaged index runs from the
    /// segments. Exit code 0 when clean (or only index runs were damaged and are repaired),
    /// 1 when damage was found, 2 for usage and open errors. See docs/configuration.md.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        verify: kuvasto_server::verify::VerifyArgs,
    },
    /// What the archive holds: instances, studies and bytes per register and modality,
    /// segment fill and garbage ratio. Works on a stopped node and, through its admin
    /// socket, on a running one.
    Stats {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        stats: kuvasto_server::ops::stats::StatsArgs,
    },
    /// Write studies (by Study Instance UID or by patient) back to Part-10 files, audited
    /// as an export. Works on a stopped node and, through its admin socket, on a running
    /// one. Exit code 0 when everything was written, 1 when some instances were not, 2 for
    /// usage and open errors.
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        export: kuvasto_server::ops::export::ExportArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Structured logs: key=value text by default, one JSON object per line with
    // KUVASTO_LOG_FORMAT=json (for log shippers); RUST_LOG filters (default "info"; "warn"
    // for `import`, whose audit records are in the store and whose progress is on stderr).
    let default_filter = match cli.command {
        Command::Import { .. } => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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
    match cli.command {
        Command::Serve { config } => kuvasto_server::serve::serve(config.resolve()?),
        Command::Compact { config, compact } => {
            use kuvasto_server::ops::{cli, Request};
            let code = match compact.request() {
                Ok(request) => cli::run(&config, Request::Compact(request), compact.json),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    cli::EXIT_ERROR
                }
            };
            std::process::exit(code);
        }
        Command::Import { config, import } => {
            // 0: all stored; 1: some rejected; 2: usage or open errors.
            let code = match kuvasto_server::import::run(&config, &import) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    2
                }
            };
            std::process::exit(code);
        }
        Command::Verify { config, verify } => {
            // 0: clean (or index runs repaired); 1: damage found; 2: usage or open errors.
            let code = match kuvasto_server::verify::run(&config, &verify) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    kuvasto_server::verify::EXIT_ERROR
                }
            };
            std::process::exit(code);
        }
        Command::Stats { config, stats } => {
            use kuvasto_server::ops::{cli, Request};
            let code = match stats.request() {
                Ok(request) => cli::run(&config, Request::Stats(request), stats.json),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    cli::EXIT_ERROR
                }
            };
            std::process::exit(code);
        }
        Command::Export { config, export } => {
            use kuvasto_server::ops::{cli, Request};
            let code = match export.request() {
                Ok(request) => cli::run(&config, Request::Export(request), export.json),
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    cli::EXIT_ERROR
                }
            };
            std::process::exit(code);
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
