//! `kuvasto serve`: open the engine, report what recovery found, run until SIGINT/SIGTERM,
//! then close cleanly (in-flight writes finish or are refused; nothing acknowledged is lost).

use crate::config::StorageArgs;
use anyhow::Context;
use kuvasto_engine::Store;

/// Opens the store and logs what recovery found.
pub fn open_store(args: &StorageArgs) -> anyhow::Result<Store> {
    let store = Store::open(&args.data_dir, args.store_config())
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let report = store.recovery_report();
    tracing::info!(
        data_dir = %args.data_dir.display(),
        sealed_segments = report.sealed_loaded,
        scanned_segments = report.scanned,
        torn_tails = report.torn_tails.len(),
        sealed_now = report.sealed_now.len(),
        "store open"
    );
    for damage in &report.corruption {
        tracing::error!(%damage, "corruption found at open; affected objects are not served");
    }
    Ok(store)
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in this thread; call before any thread starts, so every thread
/// inherits the mask and [`wait_for_termination`] is the one place they are delivered.
pub fn block_termination_signals() -> anyhow::Result<()> {
    let set = termination_signals();
    // SAFETY: `set` is initialised; a null old-mask pointer is allowed.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        anyhow::bail!("cannot block SIGINT/SIGTERM");
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM arrives.
fn wait_for_termination() -> anyhow::Result<()> {
    let set = termination_signals();
    let mut signal = 0;
    // SAFETY: `set` is initialised and `signal` is a valid place for the result.
    if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
        anyhow::bail!("sigwait failed");
    }
    tracing::info!(signal, "shutting down");
    Ok(())
}

/// Runs the server until a termination signal.
pub fn serve(args: &StorageArgs) -> anyhow::Result<()> {
    block_termination_signals()?;
    let store = open_store(args)?;
    let stats = store.stats();
    tracing::info!(
        segments = stats.segments,
        live_keys = stats.live_keys,
        bytes = stats.segment_bytes,
        "serving (protocol listeners arrive with the DICOMweb and DIMSE issues); Ctrl-C stops"
    );
    wait_for_termination()?;
    store.close();
    tracing::info!("store closed cleanly");
    Ok(())
}
