//! What `private-ns` and `host-staged` share: idmapped clones attached in a
//! staging directory, and the overlay built from their *paths*, for kernels
//! whose overlay cannot take detached layers as fds.
//!
//! Names are short and plain (`0`, `1/snapshots/12/fs`, `u/upper`): a name
//! is shared-parent relative only when every component is made of
//! `[A-Za-z0-9._+@-]`, so it never needs overlay's escaping and cannot be
//! misparsed; anything else gets a clone of its own under a numeric name.
//! Every name is checked to reach the very directory opened at first
//! (device and inode), and group clones carry `MOUNT_ATTR_NOSYMFOLLOW`, so
//! no symlink can redirect overlay's own lookup of the string.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use kernel_compat::Feature;

use super::{idmap_error, OpenedLayers, OverlayContext, Request};
use crate::error::{Error, Result};
use crate::layer::{self, GroupRoot, OpenedDir, Role};
use crate::sys::{self, MountAttrs};

/// fsconfig takes at most 255 bytes per string value.
pub const FSCONFIG_VALUE_MAX: usize = 255;
/// mount(2) copies one page of options and silently cuts the rest.
pub const MOUNT_DATA_MAX: usize = 4095;

/// A directory where clones are attached, and how the kernel reaches it.
pub(crate) struct Stage<'a> {
    /// The staging directory.
    pub dir: BorrowedFd<'a>,
    /// What overlay's path lookup must prepend to a staged name: empty when
    /// names resolve relative to the thread's cwd (the staging dir itself),
    /// the staging dir's absolute path otherwise.
    pub prefix: PathBuf,
    /// Names attached so far, oldest first (for cleanup).
    pub attached: Vec<String>,
}

impl Stage<'_> {
    fn attach(&mut self, mount: &OwnedFd, name: &str) -> Result<()> {
        sys::mkdir(self.dir, Path::new(name), 0o700).map_err(|e| {
            Error::os(
                "create staging mount point",
                Some(&self.prefix.join(name)),
                e,
            )
        })?;
        sys::move_mount(mount.as_fd(), self.dir, Path::new(name))
            .map_err(|e| Error::os("attach staged clone at", Some(&self.prefix.join(name)), e))?;
        self.attached.push(name.to_string());
        Ok(())
    }

    fn kernel_path(&self, name: &str, rel: &Path) -> PathBuf {
        let mut p = self.prefix.join(name);
        if !rel.as_os_str().is_empty() {
            p.push(rel);
        }
        p
    }
}

/// Whether a relative path can be part of a staged name as is.
pub(crate) fn plain_rel(rel: &Path) -> bool {
    rel.as_os_str().len() <= 200
        && rel.components().all(|c| match c {
            Component::Normal(name) => name
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._+@-".contains(b)),
            _ => false,
        })
}

const LAYER_ATTRS: MountAttrs = MountAttrs {
    read_only: true,
    nosuid: false,
    nodev: false,
    noexec: false,
    nosymfollow: true,
    noatime: false,
    nodiratime: false,
};

/// Attaches idmapped clones of every layer (and upper/work) in `stage`, then
/// builds the overlay from their staged paths. Returns the detached overlay.
pub(crate) fn build(
    req: &Request<'_>,
    opened: &OpenedLayers,
    stage: &mut Stage<'_>,
) -> Result<OwnedFd> {
    let plus = req.caps.observed(Feature::OverlayLowerdirPlus);
    if !plus && opened.layers.iter().any(|l| l.role == Role::Data) {
        return Err(Error::Unsupported {
            what: "data-only layers (--data-lower)".into(),
            needs: format!("kernel 6.7 ({})", Feature::OverlayLowerdirPlus),
            kernel: req.caps.kernel.clone(),
            hint: Some("mount without data layers, or on a newer kernel".into()),
        });
    }
    let userns = req.userns.as_fd();
    // With lowerdir+ each layer is its own string and shared-parent names
    // fit; the one-string interface needs the shortest names, so there every
    // layer gets its own clone.
    let groups = if plus {
        req.groups(&opened.layers, plain_rel)
    } else {
        (0..opened.layers.len()).map(layer::Group::own).collect()
    };
    let mut names: Vec<Option<PathBuf>> = vec![None; opened.layers.len()];
    let mut next = 0usize;
    let mut new_name = || {
        next += 1;
        (next - 1).to_string()
    };
    for group in &groups {
        match &group.root {
            GroupRoot::Own(i) => {
                let dir = &opened.layers[*i];
                let name = new_name();
                stage.attach(
                    &clone_idmapped(dir.fd.as_fd(), dir, userns, LAYER_ATTRS)?,
                    &name,
                )?;
                names[*i] = Some(stage.kernel_path(&name, Path::new("")));
            }
            GroupRoot::Shared { fd, .. } => {
                let first = &opened.layers[group.members[0].layer];
                let name = new_name();
                stage.attach(
                    &clone_idmapped(fd.as_fd(), first, userns, LAYER_ATTRS)?,
                    &name,
                )?;
                req.trace(|| {
                    format!(
                        "staged shared parent as {name} for {} layer(s)",
                        group.members.len()
                    )
                });
                for member in &group.members {
                    let dir = &opened.layers[member.layer];
                    let path = stage.kernel_path(&name, &member.rel);
                    let reachable = same_dir_beneath(stage.dir, &name, &member.rel, dir);
                    if reachable && path.as_os_str().len() <= FSCONFIG_VALUE_MAX {
                        names[member.layer] = Some(path);
                    } else {
                        let own = new_name();
                        stage.attach(
                            &clone_idmapped(dir.fd.as_fd(), dir, userns, LAYER_ATTRS)?,
                            &own,
                        )?;
                        names[member.layer] = Some(stage.kernel_path(&own, Path::new("")));
                    }
                }
            }
        }
    }
    let names: Vec<PathBuf> = names
        .into_iter()
        .map(|n| n.expect("every layer staged"))
        .collect();
    req.trace(|| {
        format!(
            "staged {} clone(s) for {} layer(s)",
            stage.attached.len(),
            names.len()
        )
    });

    let upper_work = match (&opened.upper, &opened.work) {
        (Some(upper), Some(work)) => Some(stage_upper_work(req, upper, work, stage)?),
        _ => None,
    };

    if plus {
        req.trace(|| "overlay from lowerdir+ strings".to_string());
        let ctx = OverlayContext::new(req)?;
        for (dir, name) in opened.layers.iter().zip(&names) {
            ctx.set_string(super::role_key(dir.role), &c_path(name, dir)?)
                .map_err(|e| with_path(e, &dir.path))?;
        }
        if let (Some((up, wk)), Some(upper), Some(work)) =
            (&upper_work, &opened.upper, &opened.work)
        {
            ctx.set_string(c"upperdir", &escaped(up, upper, false)?)?;
            ctx.set_string(c"workdir", &escaped(wk, work, false)?)?;
        }
        return super::create(ctx, req, upper_work.is_some());
    }

    // One `lowerdir=` string: through fsconfig when it fits in one value
    // (the kernel's messages then come back), else through mount(2).
    let lowerdir = names
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    if lowerdir.len() <= FSCONFIG_VALUE_MAX {
        req.trace(|| {
            format!(
                "overlay from one lowerdir= string via fsconfig ({} bytes)",
                lowerdir.len()
            )
        });
        let ctx = OverlayContext::new(req)?;
        ctx.set_string(c"lowerdir", &CString::new(lowerdir).expect("plain names"))?;
        if let (Some((up, wk)), Some(upper), Some(work)) =
            (&upper_work, &opened.upper, &opened.work)
        {
            ctx.set_string(c"upperdir", &escaped(up, upper, false)?)?;
            ctx.set_string(c"workdir", &escaped(wk, work, false)?)?;
        }
        return super::create(ctx, req, upper_work.is_some());
    }
    req.trace(|| {
        format!(
            "overlay from one lowerdir= string via mount(2) ({} bytes)",
            lowerdir.len()
        )
    });
    mount_legacy(
        req,
        stage,
        &lowerdir,
        upper_work.as_ref(),
        opened.upper.is_some(),
    )
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Os {
            op,
            path: None,
            source,
            kernel_messages,
            hint,
        } => Error::Os {
            op,
            path: Some(path.to_path_buf()),
            source,
            kernel_messages,
            hint,
        },
        other => other,
    }
}

/// overlay unescapes `upperdir=`/`workdir=` values (`\x` → `x`) on every
/// kernel, and mount(2) data is split at unescaped commas first: escape
/// backslashes, and commas when the value goes into mount(2) data.
pub(crate) fn escape_dir(path: &Path, in_mount_data: bool) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if c == '\\' || (in_mount_data && c == ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn escaped(path: &Path, dir: &OpenedDir, in_mount_data: bool) -> Result<CString> {
    if std::str::from_utf8(path.as_os_str().as_bytes()).is_err() {
        return Err(Error::invalid_path(
            dir.role.noun(),
            &dir.path,
            "is not valid UTF-8 below its parent, which this kernel's overlay needs as a string \
             (no layer fds before 6.15); rename it",
        ));
    }
    let text = escape_dir(path, in_mount_data);
    if text.len() > FSCONFIG_VALUE_MAX {
        return Err(Error::invalid_path(
            dir.role.noun(),
            &dir.path,
            "is too deep below its parent for this kernel's overlay (255 bytes per path string)",
        ));
    }
    CString::new(text)
        .map_err(|_| Error::invalid_path(dir.role.noun(), &dir.path, "contains a NUL byte"))
}

fn c_path(path: &Path, dir: &OpenedDir) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid_path(dir.role.noun(), &dir.path, "contains a NUL byte"))
}

/// A detached clone of `fd` (a layer or a shared parent), idmapped.
fn clone_idmapped(
    fd: BorrowedFd<'_>,
    dir: &OpenedDir,
    userns: BorrowedFd<'_>,
    attrs: MountAttrs,
) -> Result<OwnedFd> {
    let clone = sys::clone_mount(fd, Path::new(""))
        .map_err(|e| Error::os(format!("clone {}", dir.role.noun()), Some(&dir.path), e))?;
    sys::mount_setattr(clone.as_fd(), Some(userns), attrs).map_err(|e| idmap_error(dir, e))?;
    Ok(clone)
}

/// Whether `name/rel` in the stage is the directory opened at first,
/// reached without a symlink or mount crossing.
fn same_dir_beneath(stage: BorrowedFd<'_>, name: &str, rel: &Path, dir: &OpenedDir) -> bool {
    if rel.as_os_str().is_empty() {
        return false;
    }
    let Ok(root) = sys::open_dir_path(stage, Path::new(name)) else {
        return false;
    };
    sys::open_dir_beneath(root.as_fd(), rel)
        .and_then(|fd| sys::stat_fd(fd.as_fd()))
        .is_ok_and(|st| st.same_inode(&dir.stat))
}

/// Upper and work through one clone of a directory above both (overlay
/// needs them on one mount), idmapped only when asked; staged as `u`.
fn stage_upper_work(
    req: &Request<'_>,
    upper: &OpenedDir,
    work: &OpenedDir,
    stage: &mut Stage<'_>,
) -> Result<(PathBuf, PathBuf)> {
    let pair = [
        layer::open_dir(&upper.path, upper.role)?,
        layer::open_dir(&work.path, work.role)?,
    ];
    let groups = layer::plan_groups(&pair, |_| true);
    let refuse = || {
        Error::invalid_path(
            "upper dir",
            &upper.path,
            "and the work dir must sit below one directory on one mount, reachable from it \
             without a symlink, for this kernel's overlay (no layer fds before 6.15)",
        )
    };
    let [group] = &groups[..] else {
        return Err(refuse());
    };
    let GroupRoot::Shared { fd, .. } = &group.root else {
        return Err(refuse());
    };
    let clone = sys::clone_mount(fd.as_fd(), Path::new(""))
        .map_err(|e| Error::os("clone upper/work parent", Some(&upper.path), e))?;
    if req.idmap_upper {
        sys::mount_setattr(
            clone.as_fd(),
            Some(req.userns.as_fd()),
            MountAttrs::default(),
        )
        .map_err(|e| idmap_error(upper, e))?;
    }
    stage.attach(&clone, "u")?;
    let mut paths = Vec::new();
    for (dir, member) in pair.iter().zip(&group.members) {
        if !same_dir_beneath(stage.dir, "u", &member.rel, dir) {
            return Err(refuse());
        }
        paths.push(stage.kernel_path("u", &member.rel));
    }
    let work_path = paths.pop().expect("two paths");
    let upper_path = paths.pop().expect("two paths");
    Ok((upper_path, work_path))
}

/// The overlay through mount(2) (one page of options), attached at `o` in
/// the stage, then cloned into a detached mount.
fn mount_legacy(
    req: &Request<'_>,
    stage: &mut Stage<'_>,
    lowerdir: &str,
    upper_work: Option<&(PathBuf, PathBuf)>,
    has_upper: bool,
) -> Result<OwnedFd> {
    let mut data = format!("lowerdir={lowerdir}");
    if let Some((up, wk)) = upper_work {
        data.push_str(",upperdir=");
        data.push_str(&escape_dir(up, true));
        data.push_str(",workdir=");
        data.push_str(&escape_dir(wk, true));
    }
    for p in req.params {
        if p.key.contains(',') || p.value.as_deref().is_some_and(|v| v.contains(',')) {
            return Err(Error::invalid(
                "option",
                &p.key,
                "contains a comma, which mount(2) options cannot carry",
            ));
        }
        data.push(',');
        data.push_str(&p.key);
        if let Some(v) = &p.value {
            data.push('=');
            data.push_str(v);
        }
    }
    if data.len() > MOUNT_DATA_MAX {
        return Err(Error::invalid(
            "layers",
            format!("{} layers", lowerdir.split(':').count()),
            format!(
                "need {} bytes of mount options on this kernel (no lowerdir+ before 6.7), \
                 more than the {MOUNT_DATA_MAX} mount(2) takes; use fewer layers, a shorter \
                 --state-dir, or the private-ns strategy",
                data.len()
            ),
        ));
    }
    sys::mkdir(stage.dir, Path::new("o"), 0o700).map_err(|e| {
        Error::os(
            "create staging mount point",
            Some(&stage.prefix.join("o")),
            e,
        )
    })?;
    let target = stage.prefix.join("o");
    let target = if target.is_absolute() {
        target
    } else {
        Path::new(".").join(target)
    };
    let data_c =
        CString::new(data).map_err(|_| Error::invalid("options", "", "contain a NUL byte"))?;
    let read_only = req.attrs.read_only;
    let mounted = super::as_creator(req, has_upper, || {
        Ok(sys::mount_legacy(
            c"overlay", &target, c"overlay", read_only, &data_c,
        ))
    })?;
    if let Err(e) = mounted {
        let hint = match e.errno {
            libc::ELOOP => "a layer lies inside another layer",
            _ => "the kernel log (dmesg) says why (mount(2) returns no message)",
        };
        return Err(Error::os("mount the overlay (mount(2))", None, e).with_hint(hint));
    }
    stage.attached.push("o".into());
    let overlay = sys::clone_mount(stage.dir, Path::new("o"))
        .map_err(|e| Error::os("clone the staged overlay", Some(&target), e))?;
    let attrs = MountAttrs {
        read_only: false,
        ..req.attrs
    };
    if attrs != MountAttrs::default() {
        sys::mount_setattr(overlay.as_fd(), None, attrs)
            .map_err(|e| Error::os("set mount flags on the overlay", None, e))?;
    }
    if has_upper
        && !req.attrs.read_only
        && sys::mount_is_read_only(overlay.as_fd()).unwrap_or(false)
    {
        return Err(Error::invalid(
            "upper dir",
            "(upper and work)",
            "overlay could not write its work dir and mounted read-only (dmesg says why)",
        ));
    }
    Ok(overlay)
}
