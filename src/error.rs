//! The library's errors: what was being done, to which path, what the kernel
//! said, and what to do about it — always on one line.
//!
//! [`Error`] is one boxed value (a `Result` stays small on the success
//! path), with an [`ErrorKind`] for programs and accessors for the facts a
//! caller may want (errno, path, the kernel's own messages). Messages speak
//! the library's language; where a front end has its own words for the
//! remedy (a CLI flag), [`Error::advice`] says which remedy it is, and
//! [`Error::message_with`] puts the front end's phrase in place of the
//! library's.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::sys::SysError;

/// Result of a library call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong assembling, attaching or removing an overlay.
///
/// Displays as one line that names the bad input or the failed operation
/// and, where one helps, what to do.
///
/// ```
/// let err = "0:100000".parse::<idoverlay::IdMap>().unwrap_err().into_error("uid map");
/// assert_eq!(err.kind(), idoverlay::ErrorKind::InvalidInput);
/// assert!(!err.to_string().contains('\n'));
/// ```
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    repr: Repr,
    advice: Option<Advice>,
}

/// What kind of failure an [`Error`] is, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Input that is wrong whatever the kernel: a malformed map, a relative
    /// path, a layer that is not a directory, too many layers, …
    InvalidInput,
    /// A system call failed (the kernel refused).
    Os,
    /// The kernel lacks what was asked for.
    Unsupported,
    /// A privilege is missing.
    Permission,
    /// Cleanup of temporary state could not finish; nothing in use was
    /// removed, and `gc` can finish it later.
    Cleanup,
    /// idoverlay itself failed (a helper thread panicked).
    Internal,
}

impl ErrorKind {
    /// A stable word for the kind, as used in JSON output:
    /// `invalid_input`, `os`, `unsupported`, `permission`, `cleanup`,
    /// `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Os => "os",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Permission => "permission",
            ErrorKind::Cleanup => "cleanup",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Compares with the stable word ([`ErrorKind::as_str`]).
impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A remedy a front end may phrase in its own words (a command line names
/// its flags), given by [`Error::advice`]. [`Advice::phrase`] is the
/// library's own wording, which [`Error`]'s `Display` appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// Add a lower layer.
    AddLowerLayer,
    /// Add an upper and a work dir (or another layer).
    AddUpperAndWork,
    /// Add a work dir to the upper dir.
    AddWorkDir,
    /// Add an upper dir to the work dir.
    AddUpperDir,
    /// Give uid and gid maps, or a user namespace.
    GiveIdMaps,
    /// Give maps that map on-disk id 0 (for an idmapped upper).
    GiveMapsOfRoot,
    /// Give an upper and a work dir to the idmapped upper.
    IdmapUpperNeedsUpperAndWork,
    /// Give a container's user namespace, or maps.
    GiveContainerUserns,
    /// Give maps instead (of a namespace without any).
    GiveIdMapsInstead,
    /// Give layers as layers, not as overlay options.
    LayersNotAsOptions,
    /// Give maps as maps, not as overlay options.
    MapsNotAsOptions,
    /// Unmount lazily.
    UnmountLazily,
    /// Use the host-staged strategy.
    UseHostStaged,
    /// Probe again on the layers' filesystem.
    ProbeTheLayers,
    /// Probe again and save the report as the library writes it.
    ProbeAgain,
    /// Run gc to finish a cleanup.
    RunGc,
    /// Without data-only layers.
    NoDataLayers,
    /// Give each layer on its own, not as one colon-separated list.
    OneLayerEach,
    /// Have idoverlay give an empty upper to container root (in a
    /// warning: [`crate::Overlay::chown_upper`]).
    ChownUpper,
    /// Give absolute paths (the working directory's name cannot be
    /// trusted: [`crate::working_dir_name`]).
    GiveAbsolutePaths,
}

impl Advice {
    /// The library's wording, as appended to a message (its own leading
    /// separator included).
    pub fn phrase(self) -> &'static str {
        match self {
            Advice::AddLowerLayer => "; add one (top-most first)",
            Advice::AddUpperAndWork => " (an upper dir with a work dir)",
            Advice::AddWorkDir => " (empty, on the same mount)",
            Advice::AddUpperDir => "",
            Advice::GiveIdMaps => "give uid and gid maps (e.g. 0:100000:65536) or a user namespace",
            Advice::GiveMapsOfRoot => "",
            Advice::IdmapUpperNeedsUpperAndWork => "",
            Advice::GiveContainerUserns => " give a container's user namespace, or maps",
            Advice::GiveIdMapsInstead => ", or give maps instead",
            Advice::LayersNotAsOptions => {
                "; give layers as layers (lower, data-only, upper, work), or parse the \
                 whole string as mount options"
            }
            Advice::MapsNotAsOptions => "; give maps as maps, or a user namespace",
            Advice::UnmountLazily => {
                " unmount it lazily to detach it now and let the kernel free it when the last \
                 user goes"
            }
            Advice::UseHostStaged => "; the host-staged strategy works without it",
            Advice::ProbeTheLayers => "; probe again on the layers' filesystem",
            Advice::ProbeAgain => "",
            Advice::RunGc => ", gc finishes it",
            Advice::NoDataLayers => "mount without data layers, or on a newer kernel",
            Advice::OneLayerEach => ": give each layer on its own, top-most first",
            Advice::ChownUpper => "or have idoverlay chown the upper (an empty one)",
            Advice::GiveAbsolutePaths => "; give absolute paths",
        }
    }
}

/// What a failure is, with its facts (the library's own view; callers see
/// it through [`Error`]'s accessors).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Repr {
    #[error(fmt = fmt_invalid)]
    InvalidInput {
        /// What kind of input ("layer", "uid map", "option", …).
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
    #[error(
        "cleanup of {} incomplete: {detail}{}; nothing in use was removed",
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
    #[error("internal error: {what} {detail}")]
    Internal {
        /// What failed ("thread idoverlay-mount").
        what: String,
        /// How ("panicked").
        detail: String,
    },
}

impl From<Repr> for Error {
    fn from(repr: Repr) -> Self {
        // What is left behind, a later gc can always finish.
        let advice = matches!(repr, Repr::Cleanup { .. }).then_some(Advice::RunGc);
        Error(Box::new(Inner { repr, advice }))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind())
            .field("repr", &self.0.repr)
            .field("advice", &self.0.advice)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.repr)?;
        if let Some(advice) = self.0.advice {
            f.write_str(advice.phrase())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0.repr)
    }
}

impl Error {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match &self.0.repr {
            Repr::InvalidInput { .. } => ErrorKind::InvalidInput,
            Repr::Os { .. } => ErrorKind::Os,
            Repr::Unsupported { .. } => ErrorKind::Unsupported,
            Repr::Permission { .. } => ErrorKind::Permission,
            Repr::Cleanup { .. } => ErrorKind::Cleanup,
            Repr::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The errno behind the error, when a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        match &self.0.repr {
            Repr::Os { source, .. } => Some(source.errno),
            Repr::InvalidInput { source, .. } | Repr::Cleanup { source, .. } => {
                source.as_ref().map(|s| s.errno)
            }
            Repr::Unsupported { .. } | Repr::Internal { .. } => None,
            Repr::Permission { source, .. } => {
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
        match &self.0.repr {
            Repr::InvalidInput { path, .. }
            | Repr::Os { path, .. }
            | Repr::Unsupported { path, .. }
            | Repr::Permission { path, .. } => path.as_deref(),
            Repr::Cleanup { path, .. } => Some(path),
            Repr::Internal { .. } => None,
        }
    }

    /// What the kernel wrote into the `fsopen` fd about this failure.
    pub fn kernel_messages(&self) -> &[String] {
        match &self.0.repr {
            Repr::Os {
                kernel_messages, ..
            } => kernel_messages,
            _ => &[],
        }
    }

    /// The remedy, when a front end may want to phrase it in its own words.
    pub fn advice(&self) -> Option<Advice> {
        self.0.advice
    }

    /// The message with `phrase` in place of the library's wording of the
    /// advice (appended as it is: include a separator), e.g. a CLI's flag.
    pub fn message_with(&self, phrase: &str) -> String {
        let mut message = self.0.repr.to_string();
        message.push_str(phrase);
        message
    }

    /// The same error again, for a caller that meets the same failure a
    /// second time in one call (a state dir given up on).
    pub(crate) fn again(&self) -> Error {
        Error(self.0.clone())
    }

    /// An [`ErrorKind::InvalidInput`] error: `what` (the kind of input),
    /// `input` (as given) and `reason` (what is wrong and what to do).
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
        Repr::InvalidInput {
            what: what.into(),
            input: input.into(),
            reason: reason.into(),
            path: None,
            source: None,
        }
        .into()
    }

    pub(crate) fn invalid_path(
        what: impl Into<String>,
        path: &Path,
        reason: impl Into<String>,
    ) -> Self {
        Repr::InvalidInput {
            what: what.into(),
            input: display_path(path),
            reason: reason.into(),
            path: Some(path.to_path_buf()),
            source: None,
        }
        .into()
    }

    /// An [`ErrorKind::Permission`] error without a path or syscall.
    pub(crate) fn permission(
        what: impl Into<String>,
        needs: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Repr::Permission {
            what: what.into(),
            needs: needs.into(),
            hint: hint.into(),
            path: None,
            source: None,
        }
        .into()
    }

    pub(crate) fn os(op: impl Into<String>, path: Option<&Path>, source: SysError) -> Self {
        Repr::Os {
            op: op.into(),
            path: path.map(Path::to_path_buf),
            source,
            kernel_messages: Vec::new(),
            hint: None,
        }
        .into()
    }

    /// An [`ErrorKind::Internal`] error.
    pub(crate) fn internal(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Repr::Internal {
            what: what.into(),
            detail: detail.into(),
        }
        .into()
    }

    /// Adds a hint to an `Os` or `Unsupported` error that has none.
    pub(crate) fn with_hint(mut self, new: impl Into<String>) -> Self {
        match &mut self.0.repr {
            Repr::Os { hint, .. } | Repr::Unsupported { hint, .. } if hint.is_none() => {
                *hint = Some(new.into())
            }
            _ => {}
        }
        self
    }

    /// Attaches the kernel's own messages to an `Os` error.
    pub(crate) fn with_kernel_messages(mut self, messages: Vec<String>) -> Self {
        if let Repr::Os {
            kernel_messages, ..
        } = &mut self.0.repr
        {
            kernel_messages.extend(messages);
        }
        self
    }

    /// Says which remedy the message ends with.
    pub(crate) fn with_advice(mut self, advice: Advice) -> Self {
        self.0.advice = Some(advice);
        self
    }

    /// Names `path` in an `Os` error that names none.
    pub(crate) fn with_path(mut self, new: &Path) -> Self {
        if let Repr::Os { path: p @ None, .. } = &mut self.0.repr {
            *p = Some(new.to_path_buf());
        }
        self
    }
}

/// The indefinite article for `word` as it is said (`an` before a vowel,
/// an opening quote skipped): "an ext4 mount", "an \"index\"", "a tmpfs mount".
pub(crate) fn a_or_an(word: &str) -> &'static str {
    match word.trim_start_matches('"').bytes().next() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u' | b'A' | b'E' | b'I' | b'O' | b'U') => "an",
        _ => "a",
    }
}

/// A path as shown to people: quoted, with non-UTF-8 bytes and control
/// characters escaped so the message stays on one line.
pub(crate) fn display_path(path: &Path) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn articles_as_said() {
        use super::a_or_an;
        assert_eq!(a_or_an("ext4"), "an");
        assert_eq!(a_or_an("overlay"), "an");
        assert_eq!(a_or_an("\"index\""), "an");
        assert_eq!(a_or_an("tmpfs"), "a");
        assert_eq!(a_or_an("\"work\""), "a");
        assert_eq!(a_or_an(""), "a");
    }
}
