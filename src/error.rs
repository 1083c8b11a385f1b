//! The library's errors: what was being done, to which path, what the kernel
//! said, and what to do about it — always on one line.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::sys::SysError;

/// Result of a library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong assembling, attaching or removing an overlay.
///
/// Every variant displays as one line that names the bad input or the failed
/// operation and, where one helps, a hint. [`Error::kind`], [`Error::errno`]
/// and [`Error::path`] give the same facts to programs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that is wrong whatever the kernel: a malformed map, a relative
    /// path, a layer that is not a directory, too many layers, …
    #[error(fmt = fmt_invalid)]
    InvalidInput {
        /// What kind of input ("layer", "--uidmap", "option", …).
        what: String,
        /// The input as given (lossily printed when not UTF-8).
        input: String,
        /// What is wrong with it and what to do instead.
        reason: String,
        /// The path involved, when the input is one.
        path: Option<PathBuf>,
        /// The syscall that revealed the problem, when one did.
        #[source]
        source: Option<SysError>,
    },
    /// A system call failed while doing `op`.
    #[error(fmt = fmt_os)]
    Os {
        /// What idoverlay was doing ("clone layer", "create the overlay", …).
        op: String,
        /// The path it was doing it to.
        path: Option<PathBuf>,
        /// The failed syscall with its arguments and errno.
        #[source]
        source: SysError,
        /// What the kernel wrote into the `fsopen` fd, if anything.
        kernel_messages: Vec<String>,
        /// What the user can do about it.
        hint: Option<String>,
    },
    /// The kernel lacks what was asked for.
    #[error("{what} needs {needs}; this is {kernel}{}", hint_suffix(hint))]
    Unsupported {
        /// What was asked ("the detached strategy", "idmapped overlays", …).
        what: String,
        /// What it needs, e.g. "kernel 6.15 (overlay_detached_layers)".
        needs: String,
        /// The running kernel's release.
        kernel: String,
        /// What would work instead.
        hint: Option<String>,
        /// The path concerned, when one is (a layer on the wrong filesystem).
        path: Option<PathBuf>,
    },
    /// The caller lacks a privilege the operation needs.
    #[error("{what} needs {needs}; {hint}")]
    Permission {
        /// What was attempted.
        what: String,
        /// The privilege, e.g. "CAP_SYS_ADMIN".
        needs: String,
        /// How to get it.
        hint: String,
        /// The path concerned, when there is one.
        path: Option<PathBuf>,
        /// The syscall the kernel refused, when one was.
        #[source]
        source: Option<SysError>,
    },
    /// Cleanup of temporary state could not finish; nothing was removed
    /// that was still in use, and `idoverlay gc` can finish it later.
    #[error(
        "cleanup of {} incomplete: {detail}{}; nothing in use was removed, run `idoverlay gc` to finish",
        display_path(path),
        source.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
    )]
    Cleanup {
        /// What was left behind and why.
        detail: String,
        /// The staging directory concerned.
        path: PathBuf,
        /// The syscall that failed.
        #[source]
        source: Option<SysError>,
    },
}

impl Error {
    /// A stable word for the kind of error, used in JSON output:
    /// `invalid_input`, `os`, `unsupported`, `permission` or `cleanup`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::Os { .. } => "os",
            Error::Unsupported { .. } => "unsupported",
            Error::Permission { .. } => "permission",
            Error::Cleanup { .. } => "cleanup",
        }
    }

    /// The errno behind the error, when a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => Some(source.errno),
            Error::InvalidInput { source, .. } | Error::Cleanup { source, .. } => {
                source.as_ref().map(|s| s.errno)
            }
            Error::Unsupported { .. } => None,
            Error::Permission { source, .. } => {
                Some(source.as_ref().map_or(libc::EPERM, |s| s.errno))
            }
        }
    }

    /// The errno's symbolic name (`EINVAL`), when a syscall failed.
    pub fn errno_name(&self) -> Option<&'static str> {
        self.errno().map(crate::sys::errno_name)
    }

    /// The path the error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::InvalidInput { path, .. } | Error::Os { path, .. } => path.as_deref(),
            Error::Cleanup { path, .. } => Some(path),
            Error::Unsupported { path, .. } | Error::Permission { path, .. } => path.as_deref(),
        }
    }

    /// What the kernel wrote into the `fsopen` fd about this failure.
    pub fn kernel_messages(&self) -> &[String] {
        match self {
            Error::Os {
                kernel_messages, ..
            } => kernel_messages,
            _ => &[],
        }
    }

    /// An [`Error::InvalidInput`]: `what` (the kind of input), `input` (as
    /// given) and `reason` (what is wrong and what to do instead).
    pub fn invalid_input(
        what: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::invalid(what, input, reason)
    }

    pub(crate) fn invalid(
        what: impl Into<String>,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            what: what.into(),
            input: input.into(),
            reason: reason.into(),
            path: None,
            source: None,
        }
    }

    pub(crate) fn invalid_path(
        what: impl Into<String>,
        path: &Path,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            what: what.into(),
            input: display_path(path),
            reason: reason.into(),
            path: Some(path.to_path_buf()),
            source: None,
        }
    }

    /// An [`Error::Permission`] without a path or syscall.
    pub(crate) fn permission(
        what: impl Into<String>,
        needs: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Permission {
            what: what.into(),
            needs: needs.into(),
            hint: hint.into(),
            path: None,
            source: None,
        }
    }

    pub(crate) fn os(op: impl Into<String>, path: Option<&Path>, source: SysError) -> Self {
        Error::Os {
            op: op.into(),
            path: path.map(Path::to_path_buf),
            source,
            kernel_messages: Vec::new(),
            hint: None,
        }
    }

    /// Adds a hint to an [`Error::Os`] or [`Error::Unsupported`] that has none.
    pub(crate) fn with_hint(mut self, new: impl Into<String>) -> Self {
        match &mut self {
            Error::Os { hint, .. } | Error::Unsupported { hint, .. } if hint.is_none() => {
                *hint = Some(new.into())
            }
            _ => {}
        }
        self
    }

    /// Attaches the kernel's own messages to an [`Error::Os`].
    pub(crate) fn with_kernel_messages(mut self, messages: Vec<String>) -> Self {
        if let Error::Os {
            kernel_messages, ..
        } = &mut self
        {
            kernel_messages.extend(messages);
        }
        self
    }
}

/// A path as shown to people: quoted, with non-UTF-8 bytes and control
/// characters escaped so the message stays on one line.
pub fn display_path(path: &Path) -> String {
    format!("{:?}", path.as_os_str())
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

fn fmt_invalid(
    what: &String,
    input: &String,
    reason: &String,
    _path: &Option<PathBuf>,
    _source: &Option<SysError>,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    // Paths arrive quoted already; other input is quoted here.
    if input.starts_with('"') {
        write!(f, "{what} {input}: {reason}")
    } else {
        write!(f, "{what} {input:?}: {reason}")
    }
}

fn fmt_os(
    op: &String,
    path: &Option<PathBuf>,
    source: &SysError,
    kernel_messages: &[String],
    hint: &Option<String>,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    write!(f, "cannot {op}")?;
    if let Some(path) = path {
        write!(f, " {}", display_path(path))?;
    }
    write!(f, ": {source}")?;
    if !kernel_messages.is_empty() {
        write!(f, "; kernel says: {}", kernel_messages.join("; "))?;
    }
    write!(f, "{}", hint_suffix(hint))
}
