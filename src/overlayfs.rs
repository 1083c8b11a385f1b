//! overlayfs as idoverlay talks to it: the filesystem context (`fsopen`,
//! `fsconfig`, with the kernel's own messages read back into errors), the
//! limits of its string interfaces, its escaping, the read-only check after
//! a mount, and the idmapped clones its layers are made of.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::layer::Role;
use crate::options::OverlayParam;
use crate::sys::{self, MountAttrs};

/// fsconfig takes at most 255 bytes per string value.
pub(crate) const FSCONFIG_VALUE_MAX: usize = 255;
/// mount(2) copies one page of options and silently cuts the rest.
pub(crate) const MOUNT_DATA_MAX: usize = 4095;

/// An overlay being configured through `fsopen`/`fsconfig`. Errors carry
/// the kernel's own messages from the fd.
pub(crate) struct OverlayContext {
    fd: OwnedFd,
}

impl OverlayContext {
    /// `fsopen("overlay")` and the pass-through parameters.
    pub fn new(params: &[OverlayParam]) -> Result<Self> {
        let fd = sys::fsopen(c"overlay").map_err(|e| {
            let hint = match e.errno {
                libc::ENODEV => {
                    "the overlay filesystem is not available: load it with `modprobe overlay`"
                }
                libc::ENOSYS => "this kernel has no fsopen (new mount API, Linux 5.2)",
                libc::EPERM => "mounting needs CAP_SYS_ADMIN",
                _ => "the kernel refused to open an overlay context",
            };
            Error::os("open an overlay context", None, e).with_hint(hint)
        })?;
        let ctx = OverlayContext { fd };
        ctx.set_string(c"source", c"overlay")?;
        for param in params {
            ctx.set_param(param)?;
        }
        Ok(ctx)
    }

    fn kernel_error(&self, op: String, path: Option<&Path>, e: sys::SysError) -> Error {
        let messages = sys::fs_messages(self.fd.as_fd());
        Error::os(op, path, e).with_kernel_messages(messages)
    }

    fn set_param(&self, param: &OverlayParam) -> Result<()> {
        let key = CString::new(param.key.as_str())
            .map_err(|_| Error::invalid("option", &param.key, "contains a NUL byte"))?;
        let result = match &param.value {
            Some(value) => {
                let value = CString::new(value.as_str())
                    .map_err(|_| Error::invalid("option", value, "contains a NUL byte"))?;
                sys::fsconfig_set_string(self.fd.as_fd(), &key, &value)
            }
            None => sys::fsconfig_set_flag(self.fd.as_fd(), &key),
        };
        result.map_err(|e| {
            let shown = match &param.value {
                Some(v) => format!("{}={}", param.key, v),
                None => param.key.clone(),
            };
            let messages = sys::fs_messages(self.fd.as_fd());
            Error::from(crate::error::Repr::InvalidInput {
                what: "option".into(),
                input: shown,
                reason: if messages.is_empty() {
                    format!("the kernel refused it ({e})")
                } else {
                    format!("the kernel refused it: {}", messages.join("; "))
                },
                path: None,
                source: Some(e),
            })
        })
    }

    pub fn set_string(&self, key: &CStr, value: &CStr) -> Result<()> {
        sys::fsconfig_set_string(self.fd.as_fd(), key, value).map_err(|e| {
            self.kernel_error(
                format!("set overlay parameter {}", key.to_string_lossy()),
                None,
                e,
            )
        })
    }

    /// `FSCONFIG_SET_FD` of a layer, named by `path` in errors.
    pub fn set_layer_fd(&self, role: Role, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
        let key = role_key(role);
        sys::fsconfig_set_fd(self.fd.as_fd(), key, fd).map_err(|e| {
            self.kernel_error(
                format!("add {} (fsconfig {})", role.noun(), key.to_string_lossy()),
                Some(path),
                e,
            )
        })
    }

    /// `FSCONFIG_CMD_CREATE`, then `fsmount`: the detached overlay.
    pub fn create_and_mount(self, attrs: MountAttrs, expect_writable: bool) -> Result<OwnedFd> {
        if attrs.contains(MountAttrs::READ_ONLY) {
            self.set_flag(c"ro")?;
        }
        sys::fsconfig_create(self.fd.as_fd()).map_err(|e| {
            let hint = match e.errno {
                libc::ELOOP => {
                    "a layer lies inside another layer (or upper/work inside a layer); \
                     overlay needs separate directory trees"
                }
                libc::EBUSY => {
                    "a layer, upper or work dir is in use by another overlay \
                     (an upper/work pair serves one mount at a time)"
                }
                _ => "the kernel log (dmesg) may say more",
            };
            self.kernel_error("create the overlay".into(), None, e)
                .with_hint(hint)
        })?;
        let mount = sys::fsmount(self.fd.as_fd(), attrs)
            .map_err(|e| self.kernel_error("mount the overlay".into(), None, e))?;
        if expect_writable && !attrs.contains(MountAttrs::READ_ONLY) {
            check_writable(&mount)?;
        }
        Ok(mount)
    }

    fn set_flag(&self, key: &CStr) -> Result<()> {
        sys::fsconfig_set_flag(self.fd.as_fd(), key).map_err(|e| {
            self.kernel_error(
                format!("set overlay flag {}", key.to_string_lossy()),
                None,
                e,
            )
        })
    }
}

/// overlay silently falls back to a read-only superblock when it cannot
/// write its work dir (e.g. an idmapped upper that does not map the
/// mounter); a writable overlay was asked for, so say so now.
pub(crate) fn check_writable(mount: &OwnedFd) -> Result<()> {
    let read_only = sys::mount_is_read_only(mount.as_fd())
        .map_err(|e| Error::os("inspect the new overlay", None, e))?;
    if read_only {
        return Err(Error::invalid(
            "upper dir",
            "(upper and work)",
            "overlay could not write its work dir and would have mounted read-only \
             (dmesg says why; with an idmapped upper the map must cover the upper dir's owners)",
        ));
    }
    Ok(())
}

/// The `fsconfig` key for a layer role.
pub(crate) fn role_key(role: Role) -> &'static CStr {
    match role {
        Role::Lower => c"lowerdir+",
        Role::Data => c"datadir+",
        Role::Upper => c"upperdir",
        Role::Work => c"workdir",
        // The target is only ever checked against the others, never handed
        // to overlay as a directory of the overlay.
        Role::Target => unreachable!("the target is not an overlay parameter"),
    }
}

/// Explains a failed idmap of a layer clone.
pub(crate) fn idmap_error(path: &Path, what: &str, on: BorrowedFd<'_>, e: sys::SysError) -> Error {
    let fs = crate::fs_type::of_fd(on);
    let hint = match e.errno {
        libc::EINVAL => format!(
            "filesystem {fs} does not take idmapped mounts on this kernel \
             (ext4, xfs, btrfs and tmpfs 6.3+ do; proc, sysfs and ramfs never)"
        ),
        libc::EPERM if !crate::userns::in_initial_user_namespace() => format!(
            "this process runs in a user namespace, which may idmap only filesystems it \
             mounted itself; {fs} here belongs to another (the host's): run idoverlay on the host"
        ),
        libc::EPERM => "idmapping needs CAP_SYS_ADMIN and a user namespace other than the \
                        caller's own; an already idmapped mount cannot be idmapped again"
            .to_string(),
        libc::ENOSYS => "this kernel has no mount_setattr (Linux 5.12)".to_string(),
        _ => format!("filesystem {fs} refused the idmap"),
    };
    Error::os(format!("idmap {what}"), Some(path), e).with_hint(hint)
}

/// overlay's escaping for a `lowerdir=` element in mount(2) data.
pub(crate) fn escape_lower(value: &[u8], out: &mut Vec<u8>) {
    if !value.iter().any(|b| matches!(b, b':' | b',' | b'\\')) {
        return out.extend_from_slice(value);
    }
    for &b in value {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Appends the pass-through parameters to mount(2) data as `,key=value`.
/// Refuses (naming it) a parameter that holds a comma, or a key with a `=`
/// (`check_param` refuses both first; this is the last guard before the
/// string): mount(2) splits its
/// data at commas, so the rest would reach the kernel as another option (a
/// `lowerdir=` neither checked nor idmapped), although fsconfig took the
/// whole value (an SELinux context may hold one). The caller then uses
/// fsconfig, or refuses.
pub(crate) fn push_params_to_mount_data<'p>(
    params: &'p [OverlayParam],
    data: &mut Vec<u8>,
) -> std::result::Result<(), &'p OverlayParam> {
    let has_comma = |s: &str| s.contains(',');
    if let Some(p) = params.iter().find(|p| {
        has_comma(&p.key) || p.key.contains('=') || p.value.as_deref().is_some_and(has_comma)
    }) {
        return Err(p);
    }
    for p in params {
        data.push(b',');
        data.extend_from_slice(p.key.as_bytes());
        if let Some(v) = &p.value {
            data.push(b'=');
            data.extend_from_slice(v.as_bytes());
        }
    }
    Ok(())
}

/// overlay's escaping for an `upperdir=`/`workdir=` value: it unescapes
/// `\x` to `x` on every kernel, and mount(2) data is split at unescaped
/// commas first. Byte-exact: names need not be UTF-8.
pub(crate) fn escape_dir_value(value: &[u8], in_mount_data: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    for &b in value {
        if b == b'\\' || (in_mount_data && b == b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// `/proc/thread-self/fd/N`: the magic link that leads to exactly the
/// file `fd` is open on (the calling thread's fd table is the process's).
pub(crate) fn fd_link(fd: BorrowedFd<'_>) -> Vec<u8> {
    format!("/proc/thread-self/fd/{}", fd.as_raw_fd()).into_bytes()
}

/// A detached clone of the mount at `source` (with the mounts below it when
/// `recursive`), idmapped through `userns` when given, with `attrs` set.
pub(crate) fn clone_and_idmap(
    source: BorrowedFd<'_>,
    recursive: bool,
    userns: Option<BorrowedFd<'_>>,
    attrs: MountAttrs,
) -> std::result::Result<OwnedFd, Failed> {
    let clone = match recursive {
        true => sys::clone_mount_tree(source),
        false => sys::clone_mount(source, Path::new("")),
    }
    .map_err(Failed::Clone)?;
    match recursive {
        true => sys::mount_setattr_tree(clone.as_fd(), userns, attrs),
        false => sys::mount_setattr(clone.as_fd(), userns, attrs),
    }
    .map_err(Failed::Idmap)?;
    Ok(clone)
}

/// Which step of [`clone_and_idmap`] failed.
#[derive(Debug)]
pub(crate) enum Failed {
    Clone(sys::SysError),
    Idmap(sys::SysError),
}

impl Failed {
    /// The syscall error either way.
    pub(crate) fn sys(self) -> sys::SysError {
        match self {
            Failed::Clone(e) | Failed::Idmap(e) => e,
        }
    }
}

/// [`clone_and_idmap`] of `source` (the directory `path`, playing the part
/// `what`, e.g. "layer"), its failure explained.
pub(crate) fn idmapped_clone(
    source: BorrowedFd<'_>,
    recursive: bool,
    userns: Option<BorrowedFd<'_>>,
    attrs: MountAttrs,
    path: &Path,
    what: &str,
) -> Result<OwnedFd> {
    clone_and_idmap(source, recursive, userns, attrs).map_err(|f| match f {
        Failed::Clone(e) => Error::os(format!("clone {what}"), Some(path), e),
        Failed::Idmap(e) => idmap_error(path, what, source, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(key: &str, value: Option<&str>) -> OverlayParam {
        OverlayParam {
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn params_reach_mount_data_only_without_a_comma() {
        let mut data = b"lowerdir=l1".to_vec();
        let params = [param("index", Some("off")), param("userxattr", None)];
        push_params_to_mount_data(&params, &mut data).unwrap();
        assert_eq!(data, b"lowerdir=l1,index=off,userxattr");
        // fsconfig takes such a value whole; mount(2) would read a second
        // lowerdir, unchecked and not idmapped.
        for bad in [
            param("context", Some("system_u:object_r:x:s0,lowerdir=/etc")),
            param("userxattr,lowerdir=/etc", None),
        ] {
            let mut data = b"lowerdir=l1".to_vec();
            let params = [param("index", Some("off")), bad];
            let refused = push_params_to_mount_data(&params, &mut data).unwrap_err();
            assert_eq!(refused.key, params[1].key);
            assert_eq!(data, b"lowerdir=l1", "nothing appended");
        }
    }
}
