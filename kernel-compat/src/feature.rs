//! What each mainline kernel brought to idmapped overlays, with the commit
//! or merge that settles it.

use std::collections::BTreeSet;
use std::fmt;

use crate::KernelVersion;

/// A kernel capability that decides how an idmapped overlay can be built.
///
/// The names (see [`Feature::name`]) are part of the stable JSON output of
/// `idoverlay probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// `fsopen`, `fsconfig`, `fsmount`, `open_tree`, `move_mount`.
    NewMountApi,
    /// `mount_setattr(MOUNT_ATTR_IDMAP)` on a detached clone of the probed filesystem.
    MountSetattrIdmap,
    /// overlayfs accepts idmapped layers attached in the caller's namespace, by path.
    OverlayIdmappedLayers,
    /// overlayfs parses its parameters itself through `fsconfig` (fs_context port).
    OverlayNewMountApi,
    /// `lowerdir+` / `datadir+`: one layer per `fsconfig` string.
    OverlayLowerdirPlus,
    /// `FSCONFIG_SET_FD` with a plain directory fd of an attached mount.
    OverlayFdLayers,
    /// O_PATH fds and detached (`open_tree` clone) mounts as layers.
    OverlayDetachedLayers,
    /// `MOUNT_ATTR_IDMAP` on the merged overlay mount itself.
    OverlayMergedIdmap,
    /// A single thread may `unshare(CLONE_NEWNS)` and get a private mount namespace.
    PrivateMountNs,
}

impl Feature {
    /// Every feature, in the order the kernel gained them.
    pub const ALL: [Feature; 9] = [
        Feature::NewMountApi,
        Feature::MountSetattrIdmap,
        Feature::OverlayIdmappedLayers,
        Feature::OverlayNewMountApi,
        Feature::OverlayLowerdirPlus,
        Feature::OverlayFdLayers,
        Feature::OverlayDetachedLayers,
        Feature::OverlayMergedIdmap,
        Feature::PrivateMountNs,
    ];

    /// The stable name used in JSON output and documentation.
    pub fn name(self) -> &'static str {
        match self {
            Feature::NewMountApi => "new_mount_api",
            Feature::MountSetattrIdmap => "mount_setattr_idmap",
            Feature::OverlayIdmappedLayers => "overlay_idmapped_layers",
            Feature::OverlayNewMountApi => "overlay_new_mount_api",
            Feature::OverlayLowerdirPlus => "overlay_lowerdir_plus",
            Feature::OverlayFdLayers => "overlay_fd_layers",
            Feature::OverlayDetachedLayers => "overlay_detached_layers",
            Feature::OverlayMergedIdmap => "overlay_merged_idmap",
            Feature::PrivateMountNs => "private_mount_ns",
        }
    }

    /// The feature with this stable name.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }

    /// One line saying what the feature is.
    pub fn description(self) -> &'static str {
        match self {
            Feature::NewMountApi => "fsopen/fsconfig/fsmount/open_tree/move_mount",
            Feature::MountSetattrIdmap => "an idmapped clone of the probed filesystem",
            Feature::OverlayIdmappedLayers => "overlay over idmapped layers attached by path",
            Feature::OverlayNewMountApi => "overlay configured through fsconfig keys",
            Feature::OverlayLowerdirPlus => "lowerdir+ strings, one layer per fsconfig call",
            Feature::OverlayFdLayers => "FSCONFIG_SET_FD with a plain directory fd",
            Feature::OverlayDetachedLayers => "O_PATH / detached idmapped clones as layers",
            Feature::OverlayMergedIdmap => "MOUNT_ATTR_IDMAP on the merged overlay",
            Feature::PrivateMountNs => "a thread may unshare its mount namespace",
        }
    }

    /// The first mainline release that shipped the feature, as `(major, minor)`.
    pub fn since(self) -> (u64, u64) {
        match self {
            Feature::NewMountApi => (5, 2),
            Feature::MountSetattrIdmap => (5, 12),
            Feature::OverlayIdmappedLayers => (5, 19),
            Feature::OverlayNewMountApi => (6, 5),
            Feature::OverlayLowerdirPlus => (6, 7),
            Feature::OverlayFdLayers => (6, 13),
            Feature::OverlayDetachedLayers => (6, 15),
            Feature::OverlayMergedIdmap => (7, 3),
            // unshare(CLONE_NEWNS) by one thread has been allowed since
            // CLONE_NEWNS became unshareable (2.6.16); it implies CLONE_FS.
            Feature::PrivateMountNs => (2, 6),
        }
    }

    /// Where the version comes from: a commit, a merge or a file in the kernel tree.
    pub fn source(self) -> &'static str {
        match self {
            Feature::NewMountApi => {
                "v5.2 merge of Al Viro's work.mount-syscalls (fs/fsopen.c, fs/namespace.c: open_tree, move_mount)"
            }
            Feature::MountSetattrIdmap => {
                "v5.12 merge \"idmapped-mounts-v5.12\" (fs/namespace.c: do_mount_setattr, MOUNT_ATTR_IDMAP); ext4/xfs/fat FS_ALLOW_IDMAP 9caccd41541a"
            }
            Feature::OverlayIdmappedLayers => {
                "v5.19 bc70682a497c \"ovl: support idmapped layers\" (5.12-5.18 refuse idmapped layers)"
            }
            Feature::OverlayNewMountApi => {
                "v6.5 \"ovl: port to new mount api\" (fs/overlayfs/params.c, ovl_parse_param)"
            }
            Feature::OverlayLowerdirPlus => {
                "v6.7 ovl-update-6.7 merge: \"ovl: add support for appending lowerdirs one by one\" (Opt_lowerdir_add, Opt_datadir_add)"
            }
            Feature::OverlayFdLayers => {
                "v6.13 a08557d19ef4 \"ovl: specify layers via file descriptors\" (fs_param_is_file_or_string)"
            }
            Feature::OverlayDetachedLayers => {
                "v6.15 db04662e2f4f \"fs: allow detached mounts in clone_private_mount()\" (O_PATH fds: 0ff053b98a0f, fget_raw in fsconfig, also in 6.13.11/6.14.2)"
            }
            Feature::OverlayMergedIdmap => {
                "v7.3 vfs-7.3-rc1.ovl merge (aaed66fadba2): adedb6a00a1e \"ovl: allow idmapping overlay mounts\" sets FS_ALLOW_IDMAP"
            }
            Feature::PrivateMountNs => {
                "kernel/fork.c ksys_unshare: CLONE_NEWNS implies CLONE_FS; only CLONE_THREAD/SIGHAND/VM need a single-threaded caller"
            }
        }
    }

    /// Whether a mainline kernel of this version has the feature.
    pub fn expected_on(self, kernel: &KernelVersion) -> bool {
        let (major, minor) = self.since();
        kernel.at_least(major, minor)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Feature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
            format!("unknown feature {s:?}; known: {}", names.join(", "))
        })
    }
}

/// The features a mainline kernel of this version is expected to have.
///
/// This is knowledge, not observation: distributions backport features and
/// build kernels without others, which is why `idoverlay probe` also asks the
/// running kernel.
///
/// ```
/// use kernel_compat::{expected, Feature, KernelVersion};
/// let v: KernelVersion = "6.12.57+deb13-cloud-amd64".parse().unwrap();
/// let set = expected(&v);
/// assert!(set.contains(&Feature::OverlayLowerdirPlus));
/// assert!(!set.contains(&Feature::OverlayFdLayers));
/// ```
pub fn expected(kernel: &KernelVersion) -> BTreeSet<Feature> {
    Feature::ALL
        .into_iter()
        .filter(|f| f.expected_on(kernel))
        .collect()
}

/// The first mainline version in which a filesystem accepts idmapped mounts
/// (it sets `FS_ALLOW_IDMAP`), by the name in `/proc/filesystems`.
///
/// `None` for filesystems that never did (proc, sysfs, ramfs, …) or that
/// this table does not know.
pub fn idmap_since(fs_type: &str) -> Option<(u64, u64)> {
    Some(match fs_type {
        "ext4" | "ext3" | "ext2" | "xfs" | "vfat" | "msdos" | "fat" => (5, 12),
        "btrfs" => (5, 15),
        "f2fs" => (5, 18),
        "erofs" => (5, 19),
        "squashfs" => (6, 2),
        "tmpfs" => (6, 3),
        "overlay" => Feature::OverlayMergedIdmap.since(),
        _ => return None,
    })
}

/// Whether a mainline kernel of this version takes idmapped mounts of `fs_type`.
pub fn idmap_expected(kernel: &KernelVersion, fs_type: &str) -> bool {
    Feature::MountSetattrIdmap.expected_on(kernel)
        && idmap_since(fs_type).is_some_and(|(major, minor)| kernel.at_least(major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &str) -> BTreeSet<Feature> {
        expected(&v.parse().unwrap())
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        let names: BTreeSet<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Feature::ALL.len());
        for f in Feature::ALL {
            assert_eq!(f.name().parse::<Feature>(), Ok(f));
        }
        assert!("lowerdir_plus".parse::<Feature>().is_err());
    }

    #[test]
    fn boundaries() {
        use Feature::*;
        let cases = [
            ("5.18.19", OverlayIdmappedLayers, false),
            ("5.19.0", OverlayIdmappedLayers, true),
            ("6.4.16", OverlayNewMountApi, false),
            ("6.5.0", OverlayNewMountApi, true),
            ("6.6.58", OverlayLowerdirPlus, false),
            ("6.7.0", OverlayLowerdirPlus, true),
            ("6.12.57+deb13-cloud-amd64", OverlayFdLayers, false),
            ("6.13.0", OverlayFdLayers, true),
            ("6.14.11", OverlayDetachedLayers, false),
            ("6.15.0", OverlayDetachedLayers, true),
            ("7.2.9", OverlayMergedIdmap, false),
            ("7.3.0-rc1", OverlayMergedIdmap, true),
            ("5.11.22", MountSetattrIdmap, false),
            ("5.12.0", MountSetattrIdmap, true),
            ("5.1.21", NewMountApi, false),
            ("5.2.0", NewMountApi, true),
        ];
        for (v, f, want) in cases {
            assert_eq!(set(v).contains(&f), want, "{f} on {v}");
        }
    }

    #[test]
    fn whole_sets_at_project_kernels() {
        use Feature::*;
        assert_eq!(
            set("5.10.0-35-cloud-amd64"),
            [NewMountApi, PrivateMountNs].into()
        );
        assert_eq!(
            set("6.1.0-50-cloud-amd64"),
            [
                NewMountApi,
                MountSetattrIdmap,
                OverlayIdmappedLayers,
                PrivateMountNs
            ]
            .into()
        );
        let all_but_merged: BTreeSet<Feature> = Feature::ALL
            .into_iter()
            .filter(|f| *f != OverlayMergedIdmap)
            .collect();
        assert_eq!(set("6.18.44-fc-v669"), all_but_merged);
        assert_eq!(set("7.3.1"), Feature::ALL.into());
    }

    #[test]
    fn filesystem_idmap_table() {
        let v61: KernelVersion = "6.1.0".parse().unwrap();
        let v63: KernelVersion = "6.3.0".parse().unwrap();
        assert!(idmap_expected(&v61, "ext4"));
        assert!(!idmap_expected(&v61, "tmpfs"));
        assert!(idmap_expected(&v63, "tmpfs"));
        assert!(!idmap_expected(&v63, "proc"));
        assert!(!idmap_expected(&"5.10".parse().unwrap(), "ext4"));
    }
}
