//! Which strategy runs: `auto` resolved from what the kernel was observed
//! to do, a forced one checked against it — the one place that decides.

use std::path::Path;

use kernel_compat::{Feature, KernelVersion};

use crate::error::{display_path, Error, Result};
use crate::report::ProbeReport;
use crate::strategy::Strategy;
use crate::userns::UserNamespace;
use crate::Advice;

/// The same report with these features marked as missing, and the
/// strategy chosen again: how tests force the fallback code paths that
/// this kernel would not take on its own.
pub(crate) fn with_missing(report: &ProbeReport, missing: &[Feature]) -> ProbeReport {
    let mut report = report.clone();
    for f in missing {
        if let Some(r) = report.features.get_mut(f) {
            r.observed = Some(false);
            r.errno = None;
            r.note = Some("pretended missing".into());
        }
    }
    fill_auto(&mut report);
    report
}

/// Sets the report's `strategy` and `reason` to what `auto` would choose.
pub(crate) fn fill_auto(report: &mut ProbeReport) {
    let version: Option<KernelVersion> = report.kernel.parse().ok();
    let (strategy, reason) = auto(report, version.as_ref());
    report.strategy = strategy;
    report.reason = reason;
}

/// Why `strategy` cannot run here, or `None` when it can.
pub(crate) fn refuses(report: &ProbeReport, strategy: Strategy) -> Option<(Feature, String)> {
    use Feature::*;
    let needs: &[Feature] = match strategy {
        Strategy::Auto => return None,
        Strategy::Detached => &[OverlayDetachedLayers],
        Strategy::PrivateNs => &[PrivateMountNs, OverlayIdmappedLayers],
        Strategy::HostStaged => &[OverlayIdmappedLayers],
    };
    // A private namespace is not probed where detached layers work (that
    // would copy the mount table): then private-ns is tried, and says so
    // if unshare is refused.
    let missing = |f: Feature| match report.feature(f).observed {
        Some(seen) => !seen,
        None => f != PrivateMountNs || !report.observed(OverlayDetachedLayers),
    };
    needs.iter().find(|f| missing(**f)).map(|f| {
        let r = report.feature(*f);
        let how = match (r.observed, r.errno.as_deref(), &r.note) {
            (Some(false), Some(e), _) => format!("the kernel refused it ({e})"),
            (_, _, Some(note)) => note.clone(),
            _ => "not observed".into(),
        };
        (*f, how)
    })
}

/// The strategy to run: `auto` resolved from the probe, a forced one
/// checked against it.
pub(crate) fn for_request(
    asked: Strategy,
    report: &ProbeReport,
    first_layer: &Path,
    layer_fs: &str,
    userns: &UserNamespace,
) -> Result<Strategy> {
    let kernel = report.kernel.clone();
    // The layers' filesystem refusing idmapped mounts on a kernel that has
    // them is the answer whatever the strategy: say which layer and
    // filesystem, and from which version it would work. When the kernel
    // should idmap this filesystem, a user namespace given as a file (with
    // no maps, or the caller's own) is the likelier cause.
    if let Some(layer) = report.path_of_type(layer_fs) {
        let kernel_idmaps =
            report.feature(Feature::MountSetattrIdmap).errno.as_deref() != Some("ENOSYS");
        if layer.idmap == Some(false) && kernel_idmaps {
            let fs = &layer.fs_type;
            if layer.errno.as_deref() == Some("EPERM")
                && !crate::userns::in_initial_user_namespace()
            {
                return Err(Error::from(crate::error::Repr::Permission {
                    what: format!("idmapping layer {} on {fs}", display_path(first_layer)),
                    needs: "CAP_SYS_ADMIN in the user namespace that mounted its filesystem".into(),
                    hint: "this process runs in a user namespace, which may idmap only \
                           filesystems it mounted itself; run idoverlay on the host"
                        .into(),
                    path: Some(first_layer.to_path_buf()),
                    source: None,
                }));
            }
            if let (true, Some(file)) = (layer.idmap_expected, userns.file()) {
                return Err(Error::invalid_path(
                    "user namespace",
                    file,
                    format!(
                        "cannot idmap {fs} here ({}): does it have uid and gid maps?",
                        layer.errno.as_deref().unwrap_or("refused")
                    ),
                )
                .with_advice(Advice::GiveContainerUserns));
            }
            let needs = match kernel_compat::idmap_since(fs) {
                Some((major, minor)) => format!("kernel {major}.{minor} ({fs} idmapped mounts)"),
                None => "a filesystem that takes idmapped mounts".to_string(),
            };
            return Err(Error::from(crate::error::Repr::Unsupported {
                what: format!("layer {} on {fs}", display_path(first_layer)),
                needs,
                kernel,
                hint: Some(format!(
                    "{fs} does not take idmapped mounts here; keep the layers on ext4, xfs or \
                     btrfs (tmpfs from 6.3)"
                )),
                path: Some(first_layer.to_path_buf()),
            }));
        }
    }
    if asked == Strategy::Auto {
        return report.strategy.ok_or_else(|| {
            Error::from(crate::error::Repr::Unsupported {
                what: "an idmapped overlay".into(),
                needs: format!("kernel 5.19 ({})", Feature::OverlayIdmappedLayers),
                kernel,
                hint: Some(report.reason.clone()),
                path: None,
            })
        });
    }
    match refuses(report, asked) {
        None => Ok(asked),
        Some((feature, how)) => {
            let (major, minor) = feature.since();
            let alternative = match report.strategy {
                Some(s) => format!("auto would use {s}"),
                None => format!("nothing works here: {}", report.reason),
            };
            Err(Error::from(crate::error::Repr::Unsupported {
                what: format!("the {asked} strategy"),
                needs: format!("kernel {major}.{minor} ({feature})"),
                kernel,
                hint: Some(format!("{how}; {alternative}")),
                path: None,
            }))
        }
    }
}

/// The strategy `auto` picks from a report, and why.
fn auto(report: &ProbeReport, version: Option<&KernelVersion>) -> (Option<Strategy>, String) {
    use Feature::*;
    let kernel = &report.kernel;
    if report.guess {
        // No live answer: the version table, labelled as a guess.
        let Some(v) = version else {
            return (
                None,
                format!("not probed (needs CAP_SYS_ADMIN) and kernel {kernel:?} is not a version"),
            );
        };
        let (strategy, why) = if OverlayDetachedLayers.expected_on(v) {
            (Some(Strategy::Detached), "6.15+ takes detached layer fds")
        } else if OverlayIdmappedLayers.expected_on(v) {
            (
                Some(Strategy::PrivateNs),
                "5.19+ takes idmapped layers attached in a private namespace",
            )
        } else {
            (None, "idmapped overlays need 5.19")
        };
        return (
            strategy,
            format!(
                "guess from the version table ({kernel}): {why}; not probed (needs CAP_SYS_ADMIN)"
            ),
        );
    }
    let idmap_any =
        report.observed(MountSetattrIdmap) || report.paths.iter().any(|p| p.idmap == Some(true));
    if !idmap_any {
        let why = match report.feature(MountSetattrIdmap).errno.as_deref() {
            Some("ENOSYS") => "this kernel has no mount_setattr (idmapped mounts need 5.12, idmapped overlay layers 5.19)".to_string(),
            _ if report.paths.is_empty() => "no probed filesystem takes idmapped mounts (tmpfs needs 6.3); probe again naming a directory on the layers' filesystem".to_string(),
            _ => "none of the probed filesystems takes idmapped mounts".to_string(),
        };
        return (None, why);
    }
    if report.observed(OverlayDetachedLayers) {
        return (
            Some(Strategy::Detached),
            "overlay takes detached idmapped clones as fds (overlay_detached_layers): no temporary mount anywhere".into(),
        );
    }
    if report.observed(OverlayIdmappedLayers) {
        // Not probed where detached layers work (seen here only when those
        // are pretended missing): tried, like a forced private-ns.
        if report.feature(PrivateMountNs).observed != Some(false) {
            return (
                Some(Strategy::PrivateNs),
                "no detached layer fds (6.15), but idmapped layers attached in a thread's private mount namespace work".into(),
            );
        }
        return (
            Some(Strategy::HostStaged),
            "no detached layer fds and no private mount namespace: idmapped layers staged in a root-only directory".into(),
        );
    }
    let feature = report.feature(OverlayIdmappedLayers);
    match feature.observed {
        None => (
            None,
            format!(
                "overlay over idmapped layers could not be probed ({}); probe again naming a directory on the layers' filesystem",
                feature.note.clone().unwrap_or_default()
            ),
        ),
        _ => (
            None,
            format!(
                "overlay refuses idmapped layers here ({}); that needs kernel 5.19",
                feature.errno.as_deref().unwrap_or("error")
            ),
        ),
    }
}
