//! The ways an idmapped overlay can be assembled, and what they share.
//!
//! Every strategy turns the same [`Request`] into a detached overlay mount
//! fd; none of them attaches anything to the caller's mount tree except
//! `host-staged`, the last resort, which keeps its temporary mounts in a
//! root-only private directory and never removes anything still mounted.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{display_path, Error, Result};
use crate::layer::{self, OpenedDir, Role};
use crate::options::OverlayParam;
use crate::sys::{self, MountAttrs};
use crate::userns::UserNamespace;

pub(crate) mod detached;
pub(crate) mod host_staged;
pub(crate) mod private_ns;
pub(crate) mod staged;

/// How to assemble the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// The best the running kernel can do, from a live probe: `detached`,
    /// then `private-ns`, then `host-staged`.
    #[default]
    Auto,
    /// Detached idmapped clones passed to overlay as fds (kernel 6.15+).
    /// Nothing temporary ever enters a mount tree.
    Detached,
    /// Idmapped clones attached in a private mount namespace of a
    /// short-lived thread (kernel 5.19+).
    PrivateNs,
    /// Idmapped clones attached in a root-only staging directory of the
    /// host, detached and removed right after (kernel 5.19+; last resort).
    HostStaged,
}

impl Strategy {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Detached => "detached",
            Strategy::PrivateNs => "private-ns",
            Strategy::HostStaged => "host-staged",
        }
    }

    /// All strategies, `auto` first.
    pub const ALL: [Strategy; 4] = [
        Strategy::Auto,
        Strategy::Detached,
        Strategy::PrivateNs,
        Strategy::HostStaged,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "strategy",
                    s,
                    "is not one of auto, detached, private-ns, host-staged",
                )
            })
    }
}

/// Receives one line per step when the caller asked for a trace (`-v`).
pub type Trace = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything a strategy needs, validated for shape but not yet opened.
pub(crate) struct Request<'a> {
    pub lowers: &'a [PathBuf],
    pub data_lowers: &'a [PathBuf],
    pub upper: Option<&'a Path>,
    pub work: Option<&'a Path>,
    pub idmap_upper: bool,
    /// One clone per layer, no shared-parent groups.
    pub per_layer_clones: bool,
    pub params: &'a [OverlayParam],
    pub attrs: MountAttrs,
    pub userns: &'a UserNamespace,
    pub trace: Option<&'a Trace>,
    /// What the kernel can do (from the probe, with pretended gaps).
    pub caps: &'a crate::probe::ProbeReport,
}

impl Request<'_> {
    /// The clone groups for these layers: shared parents unless asked not to.
    pub fn groups(
        &self,
        layers: &[OpenedDir],
        shareable: impl Fn(&Path) -> bool,
    ) -> Vec<layer::Group> {
        if self.per_layer_clones {
            (0..layers.len()).map(layer::Group::own).collect()
        } else {
            layer::plan_groups(layers, shareable)
        }
    }

    pub fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace {
            trace(&line());
        }
    }
}

/// The directories of a request, opened and checked.
pub(crate) struct OpenedLayers {
    /// Lower layers (top-most first), then data-only layers.
    pub layers: Vec<OpenedDir>,
    pub upper: Option<OpenedDir>,
    pub work: Option<OpenedDir>,
}

/// Opens every directory of the request once and checks what can be checked
/// before the kernel sees them.
pub(crate) fn open_layers(req: &Request<'_>) -> Result<OpenedLayers> {
    let mut layers = Vec::with_capacity(req.lowers.len() + req.data_lowers.len());
    for path in req.lowers {
        layers.push(layer::open_dir(path, Role::Lower)?);
    }
    for path in req.data_lowers {
        layers.push(layer::open_dir(path, Role::Data)?);
    }
    layer::check_layer_set(&layers)?;
    let upper = req
        .upper
        .map(|p| layer::open_dir(p, Role::Upper))
        .transpose()?;
    let work = req
        .work
        .map(|p| layer::open_dir(p, Role::Work))
        .transpose()?;
    if let (Some(upper), Some(work)) = (&upper, &work) {
        check_upper_work(upper, work, &layers)?;
    }
    req.trace(|| {
        format!(
            "opened {} layer(s){}",
            layers.len(),
            if upper.is_some() {
                " plus upper and work"
            } else {
                ""
            }
        )
    });
    Ok(OpenedLayers {
        layers,
        upper,
        work,
    })
}

fn check_upper_work(upper: &OpenedDir, work: &OpenedDir, layers: &[OpenedDir]) -> Result<()> {
    if upper.stat.same_inode(&work.stat) {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            "is the upper dir itself; give an empty sibling directory of the upper dir",
        ));
    }
    if upper.stat.mnt_id != work.stat.mnt_id || upper.stat.dev != work.stat.dev {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "is on another mount than upper dir {}; overlay needs both on one mount \
                 (use sibling directories, e.g. DIR/upper and DIR/work)",
                display_path(&upper.path)
            ),
        ));
    }
    for layer in layers {
        if layer.stat.same_inode(&upper.stat) || layer.stat.same_inode(&work.stat) {
            return Err(Error::invalid_path(
                layer.role.noun(),
                &layer.path,
                "is also the upper or work dir; a directory can play one role only",
            ));
        }
    }
    check_work_contents(work)
}

/// overlay puts only these entries in its work dir; anything else means the
/// directory belongs to something else.
const OVERLAY_WORK_ENTRIES: [&str; 3] = ["work", "index", "incompat"];

fn check_work_contents(work: &OpenedDir) -> Result<()> {
    let names = sys::dir_entries(work.fd.as_fd())
        .map_err(|e| Error::os("read work dir", Some(&work.path), e))?;
    if let Some(name) = names
        .iter()
        .find(|name| !OVERLAY_WORK_ENTRIES.iter().any(|n| *name == *n))
    {
        return Err(Error::invalid_path(
            "work dir",
            &work.path,
            format!(
                "is not empty (it holds {name:?}, which overlay did not put there); \
                 give an empty directory on the upper dir's mount"
            ),
        ));
    }
    Ok(())
}

/// An overlay being configured through `fsopen`/`fsconfig`. Errors carry
/// the kernel's own messages from the fd.
pub(crate) struct OverlayContext {
    fd: OwnedFd,
}

impl OverlayContext {
    /// `fsopen("overlay")` and the pass-through parameters.
    pub fn new(req: &Request<'_>) -> Result<Self> {
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
        for param in req.params {
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
            Error::InvalidInput {
                what: "option".into(),
                input: shown,
                reason: if messages.is_empty() {
                    format!("the kernel refused it ({e})")
                } else {
                    format!("the kernel refused it: {}", messages.join("; "))
                },
                path: None,
                source: Some(e),
            }
        })
    }

    pub fn set_string(&self, key: &std::ffi::CStr, value: &std::ffi::CStr) -> Result<()> {
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
        if attrs.read_only {
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
        if expect_writable && !attrs.read_only {
            check_writable(&mount)?;
        }
        Ok(mount)
    }

    fn set_flag(&self, key: &std::ffi::CStr) -> Result<()> {
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
fn check_writable(mount: &OwnedFd) -> Result<()> {
    let read_only = sys::mount_is_read_only(mount.as_fd())
        .map_err(|e| Error::os("inspect the new overlay", None, e))?;
    if read_only {
        return Err(Error::invalid(
            "upper dir",
            "(upper and work)",
            "overlay could not write its work dir and would have mounted read-only \
             (dmesg says why; with --idmap-upper the map must cover the upper dir's owners)",
        ));
    }
    Ok(())
}

/// The `fsconfig` key for a layer role.
pub(crate) fn role_key(role: Role) -> &'static std::ffi::CStr {
    match role {
        Role::Lower => c"lowerdir+",
        Role::Data => c"datadir+",
        Role::Upper => c"upperdir",
        Role::Work => c"workdir",
    }
}

/// Explains a failed idmap of a layer clone.
pub(crate) fn idmap_error(dir: &OpenedDir, e: sys::SysError) -> Error {
    let fs = crate::fs_type::of_fd(dir.fd.as_fd());
    let hint = match e.errno {
        libc::EINVAL => format!(
            "filesystem {fs} does not take idmapped mounts on this kernel \
             (ext4, xfs, btrfs and tmpfs 6.3+ do; proc, sysfs and ramfs never)"
        ),
        libc::EPERM => "idmapping needs CAP_SYS_ADMIN and a user namespace other than the \
                        caller's own; an already idmapped mount cannot be idmapped again"
            .to_string(),
        libc::ENOSYS => "this kernel has no mount_setattr (Linux 5.12)".to_string(),
        _ => format!("filesystem {fs} refused the idmap"),
    };
    Error::os(format!("idmap {}", dir.role.noun()), Some(&dir.path), e).with_hint(hint)
}

/// CREATE and `fsmount`.
pub(crate) fn create(ctx: OverlayContext, req: &Request<'_>, has_upper: bool) -> Result<OwnedFd> {
    let attrs = req.attrs;
    as_creator(req, has_upper, move || {
        ctx.create_and_mount(attrs, has_upper)
    })
}

/// Runs `make` (the call that creates the overlay's superblock) with the
/// right credentials. overlay records its creator's credentials and does
/// all later upper-layer work with them; with an idmapped upper those must
/// map through the upper's idmap, so `make` then runs on a short-lived
/// thread whose fsuid/fsgid are the host ids of on-disk root. Credentials
/// are per thread: the caller's stay untouched. That thread shares the
/// caller's mount namespace and working directory.
pub(crate) fn as_creator<T: Send>(
    req: &Request<'_>,
    has_upper: bool,
    make: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if !(has_upper && req.idmap_upper) {
        return make();
    }
    let (uid, gid) = mounter_ids(req.userns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                sys::assume_fs_ids(uid, gid)
                    .map_err(|e| Error::os("switch to the upper layer's owner", None, e))?;
                make()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::invalid(
                    "upper dir",
                    "(upper and work)",
                    "the thread creating the overlay panicked",
                ))
            })
    })
}

/// The host ids of on-disk root in a namespace made from maps.
pub(crate) fn mounter_ids(userns: &UserNamespace) -> Result<(u32, u32)> {
    let uid = userns.uid_map().and_then(|m| m.to_host(0));
    let gid = userns.gid_map().and_then(|m| m.to_host(0));
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(Error::invalid(
            "--idmap-upper",
            userns.describe(),
            "needs --uidmap/--gidmap that map on-disk id 0: overlay writes the upper layer as \
             its creator, whose ids must map through the upper's idmap",
        )),
    }
}
