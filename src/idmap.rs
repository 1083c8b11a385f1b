//! Id maps: which on-disk ids show up as which host ids through a mount.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The kernel accepts at most this many ranges per map (since Linux 4.15).
pub const MAX_RANGES: usize = 340;

/// One contiguous range of a map: `size` ids starting at `container` on disk
/// (inside the user namespace) show as the ids starting at `host`.
///
/// The order is the OCI and containerd one, `container:host:size`; it is also
/// the order of the columns in `/proc/PID/uid_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdRange {
    /// First id inside the user namespace (the id stored on disk).
    pub container: u32,
    /// First id outside, on the host (the id seen through the idmapped mount).
    pub host: u32,
    /// How many ids the range covers (at least 1).
    pub size: u32,
}

impl IdRange {
    fn container_end(&self) -> u64 {
        u64::from(self.container) + u64::from(self.size)
    }

    fn host_end(&self) -> u64 {
        u64::from(self.host) + u64::from(self.size)
    }
}

/// A validated uid or gid map: one or more [`IdRange`]s, none overlapping on
/// either side.
///
/// Parsed from and printed as `container:host:size[,container:host:size…]`.
///
/// ```
/// use idoverlay::IdMap;
/// let map: IdMap = "0:100000:65536".parse().unwrap();
/// assert_eq!(map.to_host(0), Some(100000));
/// assert_eq!(map.to_host(1000), Some(101000));
/// assert_eq!(map.to_host(70000), None);
/// assert_eq!(map.to_string(), "0:100000:65536");
/// assert!("0:100000:0".parse::<IdMap>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

/// Why a map was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for IdMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id map {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for IdMapError {}

impl IdMapError {
    /// The error as the library's [`Error`], saying which option it came from.
    pub fn into_error(self, what: &str) -> Error {
        Error::invalid(what, self.input, self.reason)
    }
}

impl IdMap {
    /// A map from ranges, validated as the kernel would (and a little more:
    /// overlaps are refused on both sides, before the kernel sees them).
    pub fn new(ranges: Vec<IdRange>) -> Result<Self, IdMapError> {
        let input = ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.container, r.host, r.size))
            .collect::<Vec<_>>()
            .join(",");
        let err = |reason: String| IdMapError {
            input: input.clone(),
            reason,
        };
        if ranges.is_empty() {
            return Err(err(
                "a map needs at least one range CONTAINER:HOST:SIZE".into()
            ));
        }
        if ranges.len() > MAX_RANGES {
            return Err(err(format!(
                "{} ranges; the kernel accepts at most {MAX_RANGES}",
                ranges.len()
            )));
        }
        for r in &ranges {
            if r.size == 0 {
                return Err(err(format!(
                    "range {}:{}:{} has size 0; a range covers at least one id",
                    r.container, r.host, r.size
                )));
            }
            // The kernel refuses ranges that reach 2^32 - 1 ((uid_t)-1 is "no id").
            if r.container_end() > u64::from(u32::MAX) || r.host_end() > u64::from(u32::MAX) {
                return Err(err(format!(
                    "range {}:{}:{} runs past the largest id, 4294967294",
                    r.container, r.host, r.size
                )));
            }
        }
        for side in ["container", "host"] {
            let mut sorted: Vec<&IdRange> = ranges.iter().collect();
            let start = |r: &IdRange| {
                if side == "container" {
                    r.container
                } else {
                    r.host
                }
            };
            sorted.sort_by_key(|r| start(r));
            for pair in sorted.windows(2) {
                let end = u64::from(start(pair[0])) + u64::from(pair[0].size);
                if end > u64::from(start(pair[1])) {
                    return Err(err(format!(
                        "ranges {}:{}:{} and {}:{}:{} overlap on the {side} side",
                        pair[0].container,
                        pair[0].host,
                        pair[0].size,
                        pair[1].container,
                        pair[1].host,
                        pair[1].size
                    )));
                }
            }
        }
        Ok(IdMap { ranges })
    }

    /// The ranges, in the order given.
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// The host id an on-disk id shows as, or `None` when the map does not
    /// cover it (it then shows as the overflow id, usually 65534).
    pub fn to_host(&self, container: u32) -> Option<u32> {
        self.ranges.iter().find_map(|r| {
            let offset = container.checked_sub(r.container)?;
            (offset < r.size).then(|| r.host + offset)
        })
    }

    /// The text the kernel expects in `/proc/PID/uid_map`: one
    /// `container host size` line per range.
    pub fn to_proc_format(&self) -> String {
        let mut out = String::with_capacity(self.ranges.len() * 24);
        for r in &self.ranges {
            out.push_str(&format!("{} {} {}\n", r.container, r.host, r.size));
        }
        out
    }
}

impl FromStr for IdMap {
    type Err = IdMapError;

    /// Parses `container:host:size` ranges separated by commas.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| IdMapError {
            input: input.to_string(),
            reason,
        };
        let mut ranges = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(
                    "empty range; write CONTAINER:HOST:SIZE[,CONTAINER:HOST:SIZE…], e.g. 0:100000:65536"
                        .into(),
                ));
            }
            let fields: Vec<&str> = part.split(':').collect();
            if fields.len() != 3 {
                return Err(err(format!(
                    "range {part:?} has {} field(s); write CONTAINER:HOST:SIZE, e.g. 0:100000:65536",
                    fields.len()
                )));
            }
            let mut numbers = [0u32; 3];
            for (slot, (field, name)) in
                numbers
                    .iter_mut()
                    .zip(fields.iter().zip(["container id", "host id", "size"]))
            {
                if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(format!(
                        "{name} {field:?} in range {part:?} is not a non-negative whole number"
                    )));
                }
                *slot = field.parse().map_err(|_| {
                    err(format!(
                        "{name} {field} in range {part:?} is larger than 4294967295"
                    ))
                })?;
            }
            ranges.push(IdRange {
                container: numbers[0],
                host: numbers[1],
                size: numbers[2],
            });
        }
        IdMap::new(ranges).map_err(|e| err(e.reason))
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}:{}", r.container, r.host, r.size)?;
        }
        Ok(())
    }
}

/// The uid and gid maps of an OCI runtime config (`config.json`):
/// `linux.uidMappings` and `linux.gidMappings`, each a list of
/// `{"containerID", "hostID", "size"}`.
///
/// ```
/// let config = r#"{"linux": {
///     "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
///     "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}"#;
/// let (uid, gid) = idoverlay::idmap::maps_from_oci_config(config).unwrap();
/// assert_eq!(uid.to_string(), "0:100000:65536");
/// assert_eq!(uid, gid);
/// ```
///
/// The text has no name of its own: an error's `input` is `(OCI config)`,
/// its `reason` says what is wrong where (`linux.uidMappings[0].size …`).
/// [`maps_from_oci_config_file`] names the file it read.
///
/// ```
/// let e = idoverlay::idmap::maps_from_oci_config("{}").unwrap_err();
/// assert_eq!(e.input, "(OCI config)");
/// assert!(e.reason.contains("linux.uidMappings"));
/// ```
pub fn maps_from_oci_config(config: &str) -> Result<(IdMap, IdMap), IdMapError> {
    let err = |reason: String| IdMapError {
        input: "(OCI config)".into(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(config).map_err(|e| err(format!("is not valid JSON: {e}")))?;
    let read = |key: &str| -> Result<IdMap, IdMapError> {
        let list = value
            .get("linux")
            .and_then(|l| l.get(key))
            .and_then(|m| m.as_array())
            .ok_or_else(|| {
                err(format!(
                    "has no linux.{key} list (a user-namespaced container's config has one)"
                ))
            })?;
        let mut ranges = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let field = |name: &str| -> Result<u32, IdMapError> {
                m.get(name)
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        err(format!(
                            "linux.{key}[{i}].{name} is missing or not a 32-bit unsigned number"
                        ))
                    })
            };
            ranges.push(IdRange {
                container: field("containerID")?,
                host: field("hostID")?,
                size: field("size")?,
            });
        }
        IdMap::new(ranges).map_err(|e| err(format!("linux.{key}: {}", e.reason)))
    };
    Ok((read("uidMappings")?, read("gidMappings")?))
}

/// The most an OCI runtime config file may hold: real ones are a few KiB
/// (seccomp profiles make the largest, tens of KiB).
const OCI_CONFIG_MAX: usize = 4 << 20;

/// The uid and gid maps of the OCI runtime config file at `path` (see
/// [`maps_from_oci_config`]). Only a regular file is read, and at most
/// 4 MiB of it: a path may name `/dev/zero` or a FIFO.
pub fn maps_from_oci_config_file(
    path: impl AsRef<std::path::Path>,
) -> crate::Result<(IdMap, IdMap)> {
    let path = path.as_ref();
    let bytes = crate::file::read_small(crate::sys::cwd(), path, OCI_CONFIG_MAX, true)
        .map_err(|e| e.into_error("OCI config", path))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::invalid_path("OCI config", path, "is not UTF-8 text"))?;
    maps_from_oci_config(text).map_err(|e| Error::invalid_path("OCI config", path, e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let map: IdMap = "0:100000:65536".parse().unwrap();
        assert_eq!(
            map.ranges(),
            &[IdRange {
                container: 0,
                host: 100000,
                size: 65536
            }]
        );
        assert_eq!(map.to_proc_format(), "0 100000 65536\n");
        let two: IdMap = "0:100000:1000, 1000:1000:1".parse().unwrap();
        assert_eq!(two.to_string(), "0:100000:1000,1000:1000:1");
        assert_eq!(two.to_host(1000), Some(1000));
        assert_eq!(two.to_host(999), Some(100999));
        assert_eq!(two.to_host(1001), None);
    }

    #[test]
    fn refuses_bad_maps_with_reasons() {
        let cases = [
            ("", "empty range"),
            ("0:100000", "2 field"),
            ("0:100000:65536:1", "4 field"),
            ("0:100000:0", "size 0"),
            ("a:100000:1", "container id \"a\""),
            ("-1:100000:1", "not a non-negative"),
            ("0:+5:1", "not a non-negative"),
            ("0:4294967296:1", "larger than 4294967295"),
            ("0:4294967290:10", "runs past"),
            ("4294967295:0:1", "runs past"),
            ("0:100000:10,5:200000:10", "overlap on the container side"),
            ("0:100000:10,20:100005:10", "overlap on the host side"),
            ("0:100000:65536,", "empty range"),
        ];
        for (input, want) in cases {
            let e = input.parse::<IdMap>().expect_err(input);
            assert!(
                e.reason.contains(want),
                "{input:?}: {} lacks {want:?}",
                e.reason
            );
            assert_eq!(e.input, input);
        }
    }

    #[test]
    fn at_most_340_ranges() {
        let ranges = |n: u32| {
            (0..n)
                .map(|i| format!("{}:{}:1", i, 100000 + i))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(ranges(340).parse::<IdMap>().is_ok());
        let e = ranges(341).parse::<IdMap>().unwrap_err();
        assert!(e.reason.contains("at most 340"), "{}", e.reason);
    }

    #[test]
    fn oci_config_maps() {
        let config = r#"{"ociVersion": "1.0.2", "linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 1000},
                            {"containerID": 1000, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}}"#;
        let (uid, gid) = maps_from_oci_config(config).unwrap();
        assert_eq!(uid.to_string(), "0:100000:1000,1000:1000:1");
        assert_eq!(gid.to_host(5), Some(200005));
        for bad in [
            "{",
            r#"{"linux": {}}"#,
            r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 1}], "gidMappings": []}}"#,
            r#"{"linux": {"uidMappings": [{"containerID": -1, "hostID": 1, "size": 1}], "gidMappings": []}}"#,
            r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}], "gidMappings": []}}"#,
        ] {
            assert!(maps_from_oci_config(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn largest_valid_range() {
        assert!("0:0:4294967295".parse::<IdMap>().is_ok());
        assert!("1:0:4294967295".parse::<IdMap>().is_err());
    }

    proptest! {
        #[test]
        fn valid_maps_round_trip(ranges in proptest::collection::vec((0u32..1000, 1u32..1000), 1..20)) {
            // Build non-overlapping ranges from sorted, disjoint blocks.
            let mut container = 0u32;
            let mut host = 1_000_000u32;
            let mut list = Vec::new();
            for (gap, size) in ranges {
                container += gap;
                host += gap * 3;
                list.push(IdRange { container, host, size });
                container += size;
                host += size;
            }
            let map = IdMap::new(list.clone()).unwrap();
            let text = map.to_string();
            let again: IdMap = text.parse().unwrap();
            prop_assert_eq!(again.ranges(), &list[..]);
            for r in &list {
                prop_assert_eq!(map.to_host(r.container), Some(r.host));
                prop_assert_eq!(map.to_host(r.container + r.size - 1), Some(r.host + r.size - 1));
            }
        }

        #[test]
        fn parser_never_panics(input in ".{0,64}") {
            let _ = input.parse::<IdMap>();
        }

        #[test]
        fn parsed_maps_are_valid(input in "[0-9:,]{1,40}") {
            if let Ok(map) = input.parse::<IdMap>() {
                prop_assert!(!map.ranges().is_empty());
                for r in map.ranges() {
                    prop_assert!(r.size > 0);
                    prop_assert!(u64::from(r.container) + u64::from(r.size) <= u64::from(u32::MAX));
                }
                prop_assert_eq!(map.to_string().parse::<IdMap>().unwrap(), map);
            }
        }
    }
}
