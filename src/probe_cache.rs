//! The probe report kept for the rest of the boot, in the state dir: so
//! that a command line tool, which is a new process each time, does not
//! probe the kernel on every mount (a probe that must unshare copies the
//! whole mount table).
//!
//! One file per filesystem type of the layers (`probe/<fs>.json` in the
//! state tmpfs: root-only, idoverlay's own, see state.rs), holding the
//! kernel release and the boot id it was made under. It counts only while
//! both are the running ones, and only when it parses in full (every
//! feature, a path of that filesystem type); otherwise the kernel is probed
//! again and the file replaced (written to a temporary name, renamed over).
//! Read with a bound, never followed through a symlink.

use std::os::fd::AsFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::report::ProbeReport;
use crate::state::{boot_id, StateDirOnce};
use crate::sys;

/// The subdirectory of the state tmpfs that holds the reports.
pub(crate) const DIR: &str = "probe";
const FORMAT: &str = "idoverlay-probe-cache";
const VERSION: u32 = 1;
/// A report is a few KiB.
const MAX: usize = 256 * 1024;

#[derive(Serialize, Deserialize)]
struct Cached {
    format: String,
    version: u32,
    /// The idoverlay that observed it.
    idoverlay: String,
    kernel: String,
    boot_id: String,
    report: ProbeReport,
}

/// The file name for a filesystem type (`ext4.json`); odd names (an
/// unknown magic) are kept to letters and digits.
fn file_name(fs_type: &str) -> String {
    let name: String = fs_type
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    format!("{name}.json")
}

/// The report kept for layers on `fs_type`, if one of this kernel, boot
/// and idoverlay is there and whole, and its directory of that type took an idmap. Changes nothing (the state dir is not created).
pub(crate) fn load(state: &StateDirOnce, fs_type: &str) -> Option<ProbeReport> {
    let state = state.existing().ok()??;
    let dir = sys::open_dir_beneath(state.fd.as_fd(), Path::new(DIR)).ok()?;
    let bytes =
        crate::file::read_small(dir.as_fd(), Path::new(&file_name(fs_type)), MAX, false).ok()?;
    let cached: Cached = serde_json::from_slice(&bytes).ok()?;
    let whole = cached.format == FORMAT
        && cached.version == VERSION
        && cached.idoverlay == env!("CARGO_PKG_VERSION")
        && cached.kernel == sys::kernel_release()
        && cached.report.kernel == cached.kernel
        && Some(cached.boot_id.as_str()) == boot_id().as_deref()
        && !cached.report.guess
        && kernel_compat::Feature::ALL
            .iter()
            .all(|f| cached.report.features.contains_key(f))
        && cached
            .report
            .path_of_type(fs_type)
            .is_some_and(|p| p.idmap == Some(true));
    // The strategy follows from the features, as a live probe's does: a
    // report kept by an older idoverlay of this boot does not choose.
    whole.then(|| {
        let mut report = cached.report;
        crate::choose::fill_auto(&mut report);
        report
    })
}

/// Keeps `report` for the rest of the boot, for each filesystem type of
/// the paths it probed that took an idmap (creating the state dir, idoverlay's tmpfs, when
/// needed). A report made without privileges (a guess) is not kept.
pub(crate) fn store(state: &StateDirOnce, report: &ProbeReport) -> Result<()> {
    let kernel = sys::kernel_release();
    let Some(boot) = boot_id() else {
        return Ok(());
    };
    if report.guess || report.kernel != kernel {
        return Ok(());
    }
    // Only a type whose directory did take an idmap is kept: a failure is
    // probed again by the next call, so that one directory another process
    // swapped in for the layer (a mount of its own user namespace, which
    // refuses the clone) cannot refuse the type's mounts for the boot.
    let mut types: Vec<&str> = report
        .paths
        .iter()
        .filter(|p| p.idmap == Some(true))
        .map(|p| p.fs_type.as_str())
        .filter(|t| *t != "unknown")
        .collect();
    types.sort_unstable();
    types.dedup();
    if types.is_empty() {
        return Ok(());
    }
    let state_dir = state.path();
    let state = state.get_or_create()?;
    let failed = |e| Error::os("keep the probe report in", Some(state_dir), e);
    let dir = crate::state::subdir(state, DIR).map_err(failed)?;
    let bytes = serde_json::to_vec(&Cached {
        format: FORMAT.into(),
        version: VERSION,
        idoverlay: env!("CARGO_PKG_VERSION").into(),
        kernel,
        boot_id: boot.to_string(),
        report: report.clone(),
    })
    .expect("serializable");
    for fs_type in types {
        crate::state::write_atomically(dir.as_fd(), &file_name(fs_type), &bytes)
            .map(drop)
            .map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_stay_plain() {
        assert_eq!(super::file_name("ext4"), "ext4.json");
        assert_eq!(
            super::file_name("unknown (magic 0x1234)"),
            "unknown__magic_0x1234_.json"
        );
        assert_eq!(super::file_name("../x"), "___x.json");
    }
}
