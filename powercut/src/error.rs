//! The crate's one error type (the file system itself answers `errno` values instead).

/// What mounting, serving the control channel or talking to it can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or I/O failed; `what` says which and on what.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A line on the control channel was not what the protocol says.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The server understood a command and refused it.
    #[error("power-cut server refused: {0}")]
    Refused(String),
}

impl Error {
    /// An [`Error::Io`] naming what failed.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
