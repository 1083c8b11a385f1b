//! Opening a directory given by the user: once, in normal form, never
//! through a symlink in its last component, with errors that say what is
//! wrong with the path rather than which syscall failed.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{OpenedDir, Role};
use crate::error::{display_path, Error, Result};
use crate::sys;

/// Opens a directory given by the user: absolute path, normalized first
/// (so a trailing `/`, `/.` or `//` cannot make the last component be
/// followed), no symlink in the last component, a directory. Errors name
/// the path and say what to do.
pub fn open_dir(path: &Path, role: Role) -> Result<OpenedDir> {
    let noun = role.noun();
    let normal =
        crate::path::normalize(path).map_err(|r| Error::invalid_path(noun, path, r.reason()))?;
    // The work dir's entries are read next, and the pair's claims are
    // read, written and locked through these fds (fgetxattr, fsetxattr,
    // flock: none works on O_PATH): both opened readable.
    let readable = matches!(role, Role::Work | Role::Upper);
    // Without a symlink on the way, the normalized path is the canonical
    // one; otherwise (or on any error, explained below) the usual open,
    // of the normalized spelling, never following its last component.
    let lexical = (!crate::path::has_dotdot(&normal))
        .then(|| sys::open_dir_no_symlinks(&normal, readable).ok())
        .flatten();
    let (fd, canonical) = match lexical {
        Some(fd) => (fd, Some(normal.to_path_buf())),
        None => match sys::open_dir_nofollow(sys::cwd(), &normal, readable) {
            Ok(fd) => (fd, None),
            Err(e) => return Err(explain_open_failure(path, &normal, role, e)),
        },
    };
    let stat = sys::stat_fd(fd.as_fd())
        .map_err(|e| Error::os(format!("inspect {noun}"), Some(path), e))?;
    Ok(OpenedDir {
        path: path.to_path_buf(),
        role,
        fd,
        stat,
        canonical,
    })
}

/// Whether a layer that does not exist reads as `/a:/b`: a colon, and the
/// part before it is a directory (a name with a colon is legal, so only
/// the message changes). That part is looked at without following a
/// symlink or mounting an automount point (`/net/host:/export`).
fn looks_like_a_list(normal: &Path, role: Role) -> bool {
    if !matches!(role, Role::Lower | Role::Data) {
        return false;
    }
    let bytes = normal.as_os_str().as_bytes();
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return false;
    };
    let first = &bytes[..colon];
    if first.ends_with(b"/") {
        return false;
    }
    let first = Path::new(std::ffi::OsStr::from_bytes(first));
    sys::stat_nofollow_no_automount(sys::cwd(), first).is_ok_and(|st| st.is_dir())
}

/// Turns a failed open of `normal` (the normalized `path`) into a message
/// about the path rather than the syscall.
fn explain_open_failure(path: &Path, normal: &Path, role: Role, e: sys::SysError) -> Error {
    let noun = role.noun();
    let mut advice = None;
    let reason = match e.errno {
        libc::ENOENT => match sys::stat_nofollow(sys::cwd(), normal) {
            Ok(st) if st.is_symlink() => {
                "is a dangling symlink; give the directory itself".to_string()
            }
            _ if looks_like_a_list(normal, role) => {
                advice = Some(crate::error::Advice::OneLayerEach);
                "does not exist; it looks like a colon-separated list (overlay's lowerdir= \
                 spelling)"
                    .to_string()
            }
            _ => "does not exist".to_string(),
        },
        libc::ENOTDIR => match sys::stat_nofollow(sys::cwd(), normal) {
            Ok(st) if st.is_symlink() => "is a symlink; give the directory it points to \
                 (symlinks are never followed in a layer's last component)"
                .to_string(),
            Ok(st) => format!("is {}, not a directory", st.kind()),
            Err(_) => "has a component that is not a directory".to_string(),
        },
        libc::ELOOP => "has too many levels of symlinks".to_string(),
        libc::EACCES | libc::EPERM => {
            return Error::from(crate::error::Repr::Permission {
                what: format!("opening {noun} {}", display_path(path)),
                needs: "search permission on every directory on its path".into(),
                hint: "root lacks it here: an LSM policy, an NFS root_squash export, or a user \
                       namespace that does not own the filesystem"
                    .into(),
                path: Some(path.to_path_buf()),
                source: Some(e),
            })
        }
        libc::ENAMETOOLONG => "is too long".to_string(),
        _ => return Error::os(format!("open {noun}"), Some(path), e),
    };
    let error = Error::from(crate::error::Repr::InvalidInput {
        what: noun.to_string(),
        input: display_path(path),
        reason,
        path: Some(path.to_path_buf()),
        source: Some(e),
    });
    match advice {
        Some(advice) => error.with_advice(advice),
        None => error,
    }
}
