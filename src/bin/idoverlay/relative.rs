//! Relative paths, as mount(8) takes them: a relative TARGET, layer,
//! upper or work dir (flags or `-o lowerdir=…`), OCI config or probe report
//! is joined with the working directory, read once per process, before
//! anything is opened. The state dir is not: it is one directory per node,
//! which must not move with the caller's working directory.
//!
//! The join is lexical: `getcwd(3)` gives the working directory's real path
//! (the kernel's own, no symlink in it), used only when, walked from `/`,
//! it leads to the working directory and no directory on its way can be
//! renamed by anyone but root (`idoverlay::working_dir_name`): the kernel
//! resolves a relative name from the working directory's inode, and a name
//! joined with it must not be redirected by another user's renames in
//! between. Then the joined path names what the kernel would reach from
//! the working directory, and the library then
//! treats it as any absolute input: normalized, resolved once, a symlink
//! in its last component never followed (`t/`, `t/.`, `t//` included).
//! Everything reported afterwards (messages, `--json`'s `target`) shows
//! the absolute path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;

/// The working directory, read the first time a relative path needs it
/// and never again: every relative input of one command is joined with
/// the same directory.
fn cwd() -> &'static std::result::Result<PathBuf, String> {
    static CWD: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    // Its name, walked from `/`: one nobody but root can redirect.
    CWD.get_or_init(|| idoverlay::working_dir_name().map_err(|e| e.to_string()))
}

/// `path` made absolute: an absolute (or empty) path as it is, a relative
/// one joined with the working directory, without its `.` and empty
/// components (`..` is kept for the kernel to resolve). `what` names the
/// input in the message when the working directory cannot be read.
pub fn absolute(what: &str, path: &Path) -> Result<PathBuf> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.starts_with(b"/") {
        return Ok(path.to_path_buf());
    }
    let dir = match cwd() {
        Ok(dir) => dir,
        Err(why) => {
            return Err(idoverlay::Error::invalid_input(
                what,
                path.to_string_lossy(),
                format!(
                    "is a relative path, and the working directory's name cannot be used \
                     ({why})"
                ),
            )
            .into())
        }
    };
    Ok(join(dir, bytes))
}

/// `dir` (absolute) and `rel`, with `rel`'s `.` and empty components left
/// out.
fn join(dir: &Path, rel: &[u8]) -> PathBuf {
    let mut out = dir.as_os_str().as_bytes().to_vec();
    for c in rel
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// [`absolute`] of an optional path.
pub fn absolute_opt(what: &str, path: Option<&PathBuf>) -> Result<Option<PathBuf>> {
    path.map(|p| absolute(what, p)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_without_dot_and_empty_components() {
        let j = |dir: &str, rel: &str| join(Path::new(dir), rel.as_bytes());
        assert_eq!(j("/c", "t"), PathBuf::from("/c/t"));
        assert_eq!(j("/c", "t/"), PathBuf::from("/c/t"));
        assert_eq!(j("/c", "t/."), PathBuf::from("/c/t"));
        assert_eq!(j("/c", "t//"), PathBuf::from("/c/t"));
        assert_eq!(j("/c", "./a//b/./"), PathBuf::from("/c/a/b"));
        assert_eq!(j("/c", "."), PathBuf::from("/c"));
        assert_eq!(j("/", "t"), PathBuf::from("/t"));
        // `..` stays: the library refuses a last `..` as for any path.
        assert_eq!(j("/c", "a/.."), PathBuf::from("/c/a/.."));
        assert_eq!(j("/c", "../x"), PathBuf::from("/c/../x"));
    }

    #[test]
    fn absolute_and_empty_paths_stay_as_given() {
        assert_eq!(
            absolute("t", Path::new("/x//y/")).unwrap(),
            PathBuf::from("/x//y/")
        );
        assert_eq!(absolute("t", Path::new("")).unwrap(), PathBuf::new());
    }
}
