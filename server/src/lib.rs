//! # Kuvasto server
//!
//! The network side of Kuvasto: protocol adapters over one set of archive rules over the
//! engine. Data flows one way: client → protocol adapter ([`dicomweb`]) → archive rules
//! ([`archive`]) → engine [`Store`](kuvasto_engine::Store).
//!
//! - [`config`]: defaults, the TOML file, environment and flags;
//! - [`archive`]: the rules every protocol calls (identities, checks, audit);
//! - [`dicomweb`]: STOW-RS, QIDO-RS, WADO-RS and DELETE over HTTP;
//! - [`serve`]: `kuvasto serve`, the runtime, listeners and graceful shutdown.
//! - [`tls`]: TLS for both listeners and mutual TLS (client certificate → identity).

pub mod api;
pub mod archive;
pub mod config;
pub mod dicomweb;
pub mod dimse;
pub mod import;
pub mod metrics;
pub mod ops;
pub mod serve;
pub mod tls;
pub mod verify;
