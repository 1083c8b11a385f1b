//! The snapshotter's errors, and the gRPC codes containerd expects for them.
//!
//! containerd turns the gRPC code back into its errdefs (`NotFound`,
//! `AlreadyExists`, …) and relies on them: an unpack that finds its layer's
//! name `AlreadyExists` on Commit takes that as done, so the codes are part
//! of the protocol, not decoration.

use std::io;
use std::path::PathBuf;

use containerd_snapshots::tonic::Status;

use crate::remove::RemoveError;

/// A result with the snapshotter's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a snapshotter operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has that key or name.
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    /// A snapshot with that key or name exists already.
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    /// The request does not fit the snapshot's state (parent not
    /// committed, children left, a mount inside, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A malformed request (an id map label that does not parse, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// A filesystem call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Assembling, attaching or unmounting an overlay failed (the
    /// library's message, which says why and what to do).
    #[error("{0}")]
    Mount(String),
    /// Removing a snapshot's directory stopped.
    #[error(transparent)]
    Remove(#[from] RemoveError),
}

impl Error {
    /// An [`Error::Io`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        }
    )*};
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

impl From<idoverlay::Error> for Error {
    fn from(e: idoverlay::Error) -> Self {
        Error::Mount(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) | Error::Remove(RemoveError::MountBeneath(_)) => {
                Status::failed_precondition(msg)
            }
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            _ => Status::internal(msg),
        }
    }
}
