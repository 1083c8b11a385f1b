//! The labels containerd hands a snapshotter for a user-namespaced
//! container.
//!
//! `ctr run --uidmap … --gidmap … --remap-labels` (and CRI for pods with
//! `hostUsers: false`, containerd 2.0+) put the container's maps on the
//! Prepare request as `containerd.io/snapshot/uidmapping` and
//! `…/gidmapping`, each `container:host:size` ranges joined by commas
//! (containerd 2.x `internal/userns` `IDMap.Marshal`; 1.7 writes a single
//! range). That is exactly the syntax [`idoverlay::IdMap`] parses.

use std::collections::BTreeMap;

use idoverlay::IdMap;

use crate::error::{Error, Result};

/// Label with the uid map (containerd `snapshots.LabelSnapshotUIDMapping`).
pub const UID_MAPPING: &str = "containerd.io/snapshot/uidmapping";
/// Label with the gid map (containerd `snapshots.LabelSnapshotGIDMapping`).
pub const GID_MAPPING: &str = "containerd.io/snapshot/gidmapping";

/// A container's maps as the labels give them, with the host ids its root
/// has (the owner of the upper layer's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    /// uid map (container → host).
    pub uid: IdMap,
    /// gid map (container → host).
    pub gid: IdMap,
    /// Host uid of container uid 0.
    pub root_uid: u32,
    /// Host gid of container gid 0.
    pub root_gid: u32,
}

/// The most a label's key and value may hold together, in bytes: what
/// containerd's `labels.Validate` allows (its metadata store refuses more
/// before a request reaches a proxy snapshotter; a client on the socket
/// itself is held to the same).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Refuses labels that containerd itself would refuse: a key and value
/// longer than [`MAX_LABEL_BYTES`] together.
pub fn check_sizes(labels: &BTreeMap<String, String>) -> Result<()> {
    match labels
        .iter()
        .find(|(k, v)| k.len() + v.len() > MAX_LABEL_BYTES)
    {
        Some((k, v)) => Err(Error::InvalidArgument(format!(
            "label {:?} is {} bytes with its value, more than containerd allows \
             ({MAX_LABEL_BYTES}); keep labels short",
            k.chars().take(64).collect::<String>(),
            k.len() + v.len()
        ))),
        None => Ok(()),
    }
}

/// The maps in a snapshot's labels: `None` without map labels, an error
/// when they are malformed, only one of the two is there, or either map
/// leaves out id 0 (containerd's `RootPair` requires it too).
pub fn maps(labels: &BTreeMap<String, String>) -> Result<Option<Maps>> {
    let (uid, gid) = match (labels.get(UID_MAPPING), labels.get(GID_MAPPING)) {
        (None, None) => return Ok(None),
        (Some(u), Some(g)) => (u, g),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "give both {UID_MAPPING} and {GID_MAPPING}, or neither"
            )))
        }
    };
    let parse = |label: &str, value: &str| -> Result<IdMap> {
        value
            .parse::<IdMap>()
            .map_err(|e| Error::InvalidArgument(format!("label {label}: {e}")))
    };
    let uid = parse(UID_MAPPING, uid)?;
    let gid = parse(GID_MAPPING, gid)?;
    let root = |map: &IdMap, label: &str| {
        map.to_host(0).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "label {label} ({map}) maps no container id 0; the container's root needs a host id"
            ))
        })
    };
    Ok(Some(Maps {
        root_uid: root(&uid, UID_MAPPING)?,
        root_gid: root(&gid, GID_MAPPING)?,
        uid,
        gid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_labels_no_maps() {
        assert_eq!(maps(&labels(&[("other", "x")])).unwrap(), None);
    }

    #[test]
    fn several_ranges_as_containerd_writes_them() {
        let m = maps(&labels(&[
            (UID_MAPPING, "0:100000:1000,1000:200000:64536"),
            (GID_MAPPING, "0:300000:65536"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(m.root_uid, 100000);
        assert_eq!(m.root_gid, 300000);
        assert_eq!(m.uid.to_host(1000), Some(200000));
        assert_eq!(m.uid.ranges().len(), 2);
    }

    #[test]
    fn label_sizes_as_containerd_allows() {
        let at = "k".repeat(MAX_LABEL_BYTES - 1);
        assert!(check_sizes(&labels(&[(&at, "v")])).is_ok());
        let over = labels(&[("ok", "v"), (&at, "vv")]);
        let err = check_sizes(&over).unwrap_err().to_string();
        assert!(err.contains("4097 bytes"), "{err}");
    }

    #[test]
    fn refused() {
        for bad in [
            labels(&[(UID_MAPPING, "0:100000:65536")]),
            labels(&[(UID_MAPPING, "1:100000:65536"), (GID_MAPPING, "0:1:1")]),
            labels(&[(UID_MAPPING, "-1:-1:-2"), (GID_MAPPING, "0:0:66666")]),
            labels(&[(UID_MAPPING, ""), (GID_MAPPING, "0:0:1")]),
        ] {
            assert!(
                matches!(maps(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
