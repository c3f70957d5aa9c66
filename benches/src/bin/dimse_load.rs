//! C-STORE load over DIMSE with as little sender CPU as possible, to measure what the server
//! can take when the sender is not the bottleneck (dcmtk's `storescu` parses and re-encodes
//! every file, ~0.6 ms of CPU per 0.5 MB instance on this machine).
//!
//! ```text
//! target/release/loadgen write-files --dir /tmp/ct --count 4000 --size-bytes 524288
//! target/release/dimse_load --address 127.0.0.1:11112 --dir /tmp/ct --clients 8
//! ```
//!
//! Each client thread opens one association (dicom-ul) proposing the SOP class and transfer
//! syntax of the files (read from the first file's meta group), then takes files from the
//! shared list until it is empty: reads the file, sends the C-STORE-RQ and the data set in
//! PDVs of the server's maximum size, and waits for the response. Reports instances/s, MB/s
//! and latency percentiles; every non-0000 status is an error.

use anyhow::Context;
use clap::Parser;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use kuvasto_dimse::command::{field, Command, DATA_SET_PRESENT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "dimse_load", about = "C-STORE load generator for a DIMSE SCP")]
struct Cli {
    /// The SCP's `HOST:PORT`.
    #[arg(long)]
    address: String,
    /// Called AE title.
    #[arg(long, default_value = "KUVASTO")]
    called: String,
    /// Directory of Part 10 files (all of the same SOP class and transfer syntax).
    #[arg(long)]
    dir: PathBuf,
    /// Associations (threads) sending at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

/// SOP class, SOP instance, transfer syntax and data set offset of a Part 10 file.
struct Meta {
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    data_set_offset: usize,
}

fn meta(file: &[u8]) -> anyhow::Result<Meta> {
    anyhow::ensure!(
        file.len() > 144 && &file[128..132] == b"DICM",
        "not a Part 10 file"
    );
    let group_len = u32::from_le_bytes(file[140..144].try_into()?) as usize;
    let end = 144 + group_len;
    anyhow::ensure!(end <= file.len(), "file meta group beyond the file");
    let mut at = 144;
    let (mut class, mut instance, mut ts) = (String::new(), String::new(), String::new());
    while at + 8 <= end {
        let element = u16::from_le_bytes([file[at + 2], file[at + 3]]);
        let vr = &file[at + 4..at + 6];
        let (len, header) = if matches!(vr, b"OB" | b"OW" | b"UN" | b"SQ" | b"UT" | b"UC") {
            (
                u32::from_le_bytes(file[at + 8..at + 12].try_into()?) as usize,
                12,
            )
        } else {
            (u16::from_le_bytes([file[at + 6], file[at + 7]]) as usize, 8)
        };
        let value = file
            .get(at + header..at + header + len)
            .context("file meta element beyond the group")?;
        let text = || {
            String::from_utf8_lossy(value)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        match element {
            0x0002 => class = text(),
            0x0003 => instance = text(),
            0x0010 => ts = text(),
            _ => {}
        }
        at += header + len;
    }
    Ok(Meta {
        sop_class: class,
        sop_instance: instance,
        transfer_syntax: ts,
        data_set_offset: end,
    })
}

fn pdu(context: u8, value_type: PDataValueType, data: Vec<u8>, is_last: bool) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type,
            is_last,
            data,
        }],
    }
}

#[derive(Default)]
struct Results {
    latencies: Vec<Duration>,
    bytes: u64,
    errors: Vec<String>,
}

fn client(cli: &Cli, files: &[PathBuf], next: &AtomicUsize, first: &Meta) -> Results {
    let mut results = Results::default();
    let association = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("DIMSELOAD")
        .called_ae_title(cli.called.clone())
        .with_presentation_context(first.sop_class.clone(), vec![first.transfer_syntax.clone()])
        .max_pdu_length(65_536)
        .establish(cli.address.as_str());
    let mut association = match association {
        Ok(a) => a,
        Err(e) => {
            results.errors.push(format!("associate: {e}"));
            return results;
        }
    };
    let _ = association.inner_stream().set_nodelay(true);
    let Some(context) = association.presentation_contexts().first().map(|c| c.id) else {
        results
            .errors
            .push("no presentation context accepted".into());
        return results;
    };
    let pdv_max = match association.acceptor_max_pdu_length() {
        0 => 1 << 20,
        n => (n - 6) as usize,
    };
    let mut message_id = 0u16;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(path) = files.get(i) else {
            break;
        };
        let mut run = || -> anyhow::Result<(Duration, u64)> {
            let file = std::fs::read(path)?;
            let m = meta(&file)?;
            message_id = message_id.wrapping_add(1);
            let command = Command {
                field: field::C_STORE_RQ,
                affected_sop_class_uid: Some(m.sop_class),
                affected_sop_instance_uid: Some(m.sop_instance),
                message_id: Some(message_id),
                priority: Some(0),
                data_set_type: DATA_SET_PRESENT,
                ..Command::default()
            };
            let started = Instant::now();
            association.send(&pdu(
                context,
                PDataValueType::Command,
                command.encode(),
                true,
            ))?;
            let data = &file[m.data_set_offset..];
            let mut chunks = data.chunks(pdv_max).peekable();
            while let Some(chunk) = chunks.next() {
                let last = chunks.peek().is_none();
                association.send(&pdu(context, PDataValueType::Data, chunk.to_vec(), last))?;
            }
            let Pdu::PData { data: reply } = association.receive()? else {
                anyhow::bail!("expected a C-STORE-RSP");
            };
            let response =
                Command::decode(&reply[0].data).map_err(|e| anyhow::anyhow!("response: {e}"))?;
            anyhow::ensure!(
                response.status == Some(0),
                "status {:04X?} {:?}",
                response.status,
                response.error_comment
            );
            Ok((started.elapsed(), file.len() as u64))
        };
        match run() {
            Ok((latency, bytes)) => {
                results.latencies.push(latency);
                results.bytes += bytes;
            }
            Err(e) => {
                results.errors.push(format!("{}: {e}", path.display()));
                break;
            }
        }
    }
    let _ = association.release();
    results
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cli.dir)
        .with_context(|| format!("listing {}", cli.dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no files in {}", cli.dir.display());
    let first = meta(&std::fs::read(&files[0])?)?;
    let next = AtomicUsize::new(0);
    let all = Mutex::new(Results::default());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cli.clients {
            scope.spawn(|| {
                let r = client(&cli, &files, &next, &first);
                if let Ok(mut all) = all.lock() {
                    all.latencies.extend(r.latencies);
                    all.bytes += r.bytes;
                    all.errors.extend(r.errors);
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = all.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    all.latencies.sort();
    let n = all.latencies.len();
    let pct = |p: f64| {
        all.latencies
            .get(((n as f64 * p) as usize).min(n.saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "dimse c-store: {n} instances in {elapsed:.2} s = {:.0} instances/s, {:.0} MB/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; errors {}",
        n as f64 / elapsed,
        all.bytes as f64 / elapsed / 1e6,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        all.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        all.errors.len()
    );
    for e in all.errors.iter().take(5) {
        println!("  error: {e}");
    }
    Ok(())
}
