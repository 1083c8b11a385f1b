//! What a probe found: the kernel, each feature (expected from the
//! version table, observed live), the directories it was asked about, and
//! the strategy `auto` would choose from that. Saved as JSON by `idoverlay
//! probe --json` and loaded back, checked, by [`ProbeReport::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kernel_compat::Feature;
use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;
use crate::sys;

/// The most a saved probe report may hold.
const REPORT_MAX: usize = 256 * 1024;

/// What the probe found for one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureResult {
    /// Whether a mainline kernel of this version has it (for idmap
    /// features: on the filesystem it was probed on).
    pub expected: bool,
    /// Whether it worked here; `None` when it could not be probed.
    pub observed: Option<bool>,
    /// The errno of the failed attempt (`EINVAL`), when it failed.
    pub errno: Option<String>,
    /// Why it was not probed, or what it was probed on.
    pub note: Option<String>,
}

impl FeatureResult {
    /// Expected and observed are both known and differ.
    pub fn disagrees(&self) -> bool {
        self.observed.is_some_and(|o| o != self.expected)
    }
}

/// What the probe found for a directory the user named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathResult {
    /// The directory.
    pub path: PathBuf,
    /// Its filesystem type (`ext4`, `tmpfs`, …).
    pub fs_type: String,
    /// Whether a clone of it took an idmap; `None` when not probed.
    pub idmap: Option<bool>,
    /// Whether a mainline kernel of this version idmaps this filesystem.
    pub idmap_expected: bool,
    /// The errno of the failed attempt.
    pub errno: Option<String>,
    /// Why it was not probed, when it was not.
    pub note: Option<String>,
}

/// The whole answer: kernel, features, paths, and the strategy `auto`
/// would choose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The kernel release string (`uname -r`).
    pub kernel: String,
    /// Per feature; in JSON keyed by its stable name
    /// ([`Feature::name`]). A report always holds every feature: one made
    /// by [`crate::probe::probe`] does, and [`ProbeReport::load`] refuses one
    /// that does not.
    #[serde(with = "feature_map")]
    pub features: BTreeMap<Feature, FeatureResult>,
    /// Per `--path`.
    pub paths: Vec<PathResult>,
    /// What `auto` would choose; `None` when no strategy can work.
    pub strategy: Option<Strategy>,
    /// Why that strategy (or none).
    pub reason: String,
    /// True when the strategy comes from the version table because the
    /// live probe could not run (no CAP_SYS_ADMIN).
    pub guess: bool,
}

impl ProbeReport {
    /// Whether the feature was observed to work.
    pub fn observed(&self, feature: Feature) -> bool {
        self.feature(feature).observed.unwrap_or(false)
    }

    /// The result for one feature.
    ///
    /// A feature the report lacks (only a report put together by hand can)
    /// reads as never probed.
    pub fn feature(&self, feature: Feature) -> &FeatureResult {
        const NOT_IN_REPORT: FeatureResult = FeatureResult {
            expected: false,
            observed: None,
            errno: None,
            note: None,
        };
        self.features.get(&feature).unwrap_or(&NOT_IN_REPORT)
    }

    /// Features where the kernel disagrees with the version table.
    pub fn disagreements(&self) -> Vec<Feature> {
        Feature::ALL
            .into_iter()
            .filter(|f| self.feature(*f).disagrees())
            .collect()
    }
}

impl ProbeReport {
    /// A report saved from `idoverlay probe --json`, for callers that probe
    /// once (e.g. at boot) and mount many times. Refused when it was made
    /// on another kernel.
    pub fn load(path: &Path) -> crate::Result<ProbeReport> {
        let invalid = |reason: String| crate::Error::invalid_path("probe report", path, reason);
        // A saved report is a few KiB; a path may name /dev/zero or a FIFO.
        let bytes = crate::file::read_small(sys::cwd(), path, REPORT_MAX, true)
            .map_err(|e| e.into_error("probe report", path))?;
        let report: ProbeReport = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("is not a saved probe report: {e}")))?;
        let running = sys::kernel_release();
        if report.kernel != running {
            return Err(invalid(format!(
                "was made on kernel {}, this is {running}; probe again",
                report.kernel,
            )));
        }
        if let Some(f) = Feature::ALL
            .into_iter()
            .find(|f| !report.features.contains_key(f))
        {
            return Err(invalid(format!(
                "has no result for feature {f}; probe again and save the whole report"
            )));
        }
        if report.guess {
            return Err(invalid(
                "is a guess (made without CAP_SYS_ADMIN); probe again as root".into(),
            ));
        }
        Ok(report)
    }

    /// What the report says about a filesystem type, if it probed one.
    pub fn path_of_type(&self, fs_type: &str) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.fs_type == fs_type)
    }
}

/// `features` in JSON: an object keyed by feature name; an unknown name is
/// refused when loading (a report from a different idoverlay).
mod feature_map {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Feature, FeatureResult>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(f, r)| (f.name(), r)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Feature, FeatureResult>, D::Error> {
        let by_name = BTreeMap::<String, FeatureResult>::deserialize(d)?;
        by_name
            .into_iter()
            .map(|(name, r)| {
                let f = name
                    .parse::<Feature>()
                    .map_err(|_| serde::de::Error::custom(format!("unknown feature {name:?}")))?;
                Ok((f, r))
            })
            .collect()
    }
}
