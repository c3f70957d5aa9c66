//! `kuvasto serve`: open the engine, serve DICOMweb until SIGINT/SIGTERM, then shut down
//! gracefully: stop accepting, give in-flight requests `shutdown_grace_seconds` to finish,
//! abandon what is left (an unfinished upload never becomes visible), close the store.

use crate::archive::{Archive, Rules};
use crate::config::Config;
use crate::dicomweb::{self, AppState};
use anyhow::Context;
use axum::serve::ListenerExt;
use kuvasto_engine::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Opens the store and logs what recovery found.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let data_dir = &config.storage.data_dir;
    let store = Store::open(data_dir, config.store_config()?)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let report = store.recovery_report();
    tracing::info!(
        data_dir = %data_dir.display(),
        sealed_segments = report.sealed_loaded,
        scanned_segments = report.scanned,
        torn_tails = report.torn_tails.len(),
        sealed_now = report.sealed_now.len(),
        "store open"
    );
    for (segment, offset) in &report.torn_tails {
        tracing::warn!(
            segment,
            offset,
            torn_window_bytes = report.torn_window_bytes,
            "torn tail cut at open: bytes from this offset were written but never acknowledged (a crash or power cut)"
        );
    }
    if let Some(problem) = &report.store_file_problem {
        tracing::warn!(%problem, "store.kvm unreadable; recovery used the largest torn window");
    }
    for damage in &report.corruption {
        tracing::error!(%damage, "corruption found at open; affected objects are not served");
    }
    for record in store.unreadable_at_open() {
        tracing::error!(
            segment = record.segment_id,
            offset = record.offset,
            key = %record.key,
            reason = %record.reason,
            "damaged metadata record found at open; the instance is left out of the catalog"
        );
    }
    Ok(store)
}

/// The archive rules over an open store, as the configuration's profile says.
pub fn open_archive(config: &Config, store: Store) -> anyhow::Result<Archive> {
    use crate::archive::validation::{Nomenclature, PatientIdPolicy};
    let standalone = config.standalone()?;
    let directory = config.directory()?;
    let nomenclature = if config.archive.examination_codes_file.is_empty() {
        Nomenclature::builtin()
    } else {
        Nomenclature::load(std::path::Path::new(&config.archive.examination_codes_file))
            .map_err(|e| anyhow::anyhow!("archive.examination_codes_file: {e}"))?
    };
    let patient_ids = PatientIdPolicy::new(
        &config.archive.temporary_id_patterns,
        config.archive.accept_temporary_identity_codes,
    )
    .map_err(|e| anyhow::anyhow!("archive.temporary_id_patterns: {e}"))?;
    let rules = Rules {
        duplicates: config.duplicate_policy()?,
        accept_unknown_sop_classes: config.archive.accept_unknown_sop_classes,
        documents_first: crate::archive::DocumentsFirst::parse(&config.archive.documents_first)
            .map_err(|e| anyhow::anyhow!("archive.documents_first: {e}"))?,
        validate: !standalone && config.archive.validate,
        service_event_tag: config.service_event_tag()?,
        audit_source_id: config.archive.organisation.clone(),
        retention: config.retention()?,
    };
    tracing::info!(
        profile = %config.archive.profile,
        documents_first = %config.archive.documents_first,
        validate = rules.validate,
        examination_codes = nomenclature.len(),
        "archive rules"
    );
    Archive::open(crate::archive::ArchiveParts {
        store,
        rules,
        directory,
        nomenclature,
        patient_ids,
        metrics: Arc::new(crate::metrics::Metrics::new()),
    })
    .context("opening the archive rules' state and audit log")
}

/// Runs the server until a termination signal.
pub fn serve(config: Config) -> anyhow::Result<()> {
    // Certificates and keys first: a bad file stops the start before the store is opened.
    let tls = crate::tls::Tls::load_for(&config)?;
    let store = open_store(&config)?;
    let stats = store.stats();
    tracing::info!(
        segments = stats.segments,
        live_keys = stats.live_keys,
        bytes = stats.segment_bytes,
        "store ready"
    );
    let archive = Arc::new(open_archive(&config, store)?);
    // `kuvasto compact|stats|export` on this machine reach the running node through it.
    let admin = match crate::ops::socket::AdminSocket::start(
        &config.storage.data_dir,
        archive.clone(),
    ) {
        Ok(admin) => Some(admin),
        Err(e) => {
            // Not fatal: the operator commands then need the server stopped.
            tracing::warn!(error = %format!("{e:#}"), "no admin socket: kuvasto compact, stats and export need the server stopped");
            None
        }
    };
    let scheduler = crate::ops::schedule::Scheduler::start(&config.compaction, archive.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kuvasto-http")
        .build()
        .context("starting the async runtime")?;
    // Instance Availability Notifications, for studies stored over either protocol.
    let notifier = Arc::new(crate::dimse::notify::Notifier::start(&config.dimse)?);
    let state = Arc::new(AppState {
        archive: archive.clone(),
        http: config.http.clone(),
        extra_tags: config.extra_tags()?,
        bound: std::sync::OnceLock::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(config.http.requests_max)),
        notifier: notifier.clone(),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    let dimse = crate::dimse::scp::Listener::start(crate::dimse::session::Services {
        archive: archive.clone(),
        config: config.dimse.clone(),
        extra_tags: config.extra_tags()?,
        notifier: notifier.clone(),
        tls: tls.clone(),
    })?;
    if let Some(path) = &config.dimse_address_file {
        std::fs::write(path, dimse.address.to_string())
            .with_context(|| format!("writing the DIMSE address file {}", path.display()))?;
    }
    if let (Some(path), Some(address)) = (&config.dimse_tls_address_file, dimse.tls_address) {
        std::fs::write(path, address.to_string())
            .with_context(|| format!("writing the DIMSE TLS address file {}", path.display()))?;
    }
    let http_tls = if config.http.tls { tls.clone() } else { None };
    let served = runtime.block_on(run_http(state.clone(), &config, grace, http_tls));
    dimse.stop(grace);
    // A scheduled compaction under way is waited for (it has no midway stop). One asked for
    // through the admin socket is not: the process may end under it, which is a crash it
    // recovers from (copies count only once sealed and renamed; originals go last).
    drop(scheduler);
    drop(admin);
    // Abandon whatever is still running on the blocking pool (uploads see their body end
    // and drop their unfinished instance).
    state.slots.close();
    drop(state);
    // The grace period is over (or everything finished): blocking work still running gets
    // a moment to notice its request is gone.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    match Arc::try_unwrap(archive) {
        Ok(archive) => match archive.into_store() {
            Some(store) => {
                store.close();
                tracing::info!("store closed cleanly");
            }
            None => tracing::warn!("the store was still held at shutdown; it closes as the process exits"),
        },
        Err(_) => tracing::warn!(
            "requests still held the store after the grace period; it closes as the process exits (nothing unacknowledged becomes visible)"
        ),
    }
    Ok(())
}

/// Serves HTTP, or HTTPS when `tls` is given, until a termination signal.
async fn run_http(
    state: dicomweb::State,
    config: &Config,
    grace: Duration,
    tls: Option<Arc<crate::tls::Tls>>,
) -> anyhow::Result<()> {
    // Before anything announces readiness, so a signal sent right after is never missed.
    let signals = Signals::install()?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP to {}", config.http.listen))?;
    let local = listener.local_addr()?;
    let _ = state.bound.set(local);
    tracing::info!(address = %local, prefix = dicomweb::PREFIX, tls = tls.is_some(), "DICOMweb listening");
    if let Some(path) = &config.address_file {
        std::fs::write(path, local.to_string())
            .with_context(|| format!("writing the address file {}", path.display()))?;
    }
    let app = dicomweb::router(state.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = match tls {
        None => {
            // Small responses must not wait for Nagle (see NOTES: storescu/clients stall
            // without it).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
        Some(tls) => {
            // Handshakes on their own tasks; TCP_NODELAY set there.
            let listener = crate::tls::http::TlsListener::new(listener, tls)
                .context("starting the HTTPS listener")?;
            let server = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<crate::tls::http::TlsPeer>(),
            )
            .with_graceful_shutdown(stopped);
            tokio::spawn(async move { server.await })
        }
    };
    signals.wait().await;
    state
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: no new connections; in-flight requests may finish"
    );
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.context("HTTP server task")?.context("HTTP server")?,
        Err(_) => tracing::warn!("grace period over; abandoning in-flight requests"),
    }
    Ok(())
}

/// SIGTERM and SIGINT, handled (not fatal) from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}
