//! Mount option strings (`-o`): mount flags become mount attributes, the
//! rest are overlay parameters passed to the kernel as they are.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::idmap::{IdMap, IdRange};
use crate::sys::MountAttrs;

/// One overlay parameter for `fsconfig`: `key=value` or a bare `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayParam {
    /// The key, e.g. `index`.
    pub key: String,
    /// The value, e.g. `off`; `None` for a flag such as `userxattr`.
    pub value: Option<String>,
}

/// Keys that name layers or maps: they come from dedicated arguments (or
/// from the mount(8)-style parser), never as pass-through parameters,
/// because passing them through would bypass the idmapping.
pub(crate) const LAYER_KEYS: [&str; 6] = [
    "lowerdir",
    "lowerdir+",
    "upperdir",
    "workdir",
    "datadir+",
    "datadir",
];

/// Refuses an overlay parameter that must not reach the kernel as given
/// (`shown` is how it is named in the message): layers and maps come from
/// their own arguments, never as parameters, which would add a layer that
/// is neither idmapped nor checked, or a work dir overlay empties unseen;
/// `source` is idoverlay's; and what fsconfig cannot carry.
pub(crate) fn check_param(key: &str, value: Option<&str>, shown: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(
            "option",
            shown,
            "has an empty key; write KEY or KEY=VALUE, separated by commas",
        ));
    }
    // A key is one word. With a `=` or a comma in it, mount(2)'s string
    // (the detached fast path) would carry it as an option of its own,
    // `lowerdir=…` too; overlay unescapes a backslash; a space or a
    // control character is no key of any filesystem.
    if let Some(c) = key
        .chars()
        .find(|&c| matches!(c, '=' | ',' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            "option",
            shown,
            format!(
                "has {c:?} in its key; a key is one word, its value goes after one `=` \
                 (as a parameter: key and value apart)"
            ),
        ));
    }
    if LAYER_KEYS.contains(&key) {
        return Err(Error::invalid("option", shown, "names a layer")
            .with_advice(crate::Advice::LayersNotAsOptions));
    }
    if matches!(key, "uidmap" | "gidmap") || key.eq_ignore_ascii_case("X-mount.idmap") {
        return Err(Error::invalid("option", shown, "names an id map")
            .with_advice(crate::Advice::MapsNotAsOptions));
    }
    if key == "source" {
        return Err(Error::invalid(
            "option",
            shown,
            "sets the mount's source, which idoverlay sets itself (\"overlay\"); leave it out",
        ));
    }
    if changes_what_is_mounted(key) {
        return Err(Error::invalid(
            "option",
            shown,
            "is util-linux's, applied to the mounts mount(8) makes itself, and idoverlay does \
             not do it (ignored, the overlay would be mounted as if it were not given); leave \
             it out and do it after the mount (a bind mount of the subdirectory, chown or \
             chmod of the mount point)",
        ));
    }
    if key.len() > 255 || value.is_some_and(|v| v.len() > 255) {
        return Err(Error::invalid(
            "option",
            shown,
            "is longer than 255 bytes, the most fsconfig takes for a key or value",
        ));
    }
    if key.contains('\0') || value.is_some_and(|v| v.contains('\0')) {
        return Err(Error::invalid("option", shown, "contains a NUL byte"));
    }
    Ok(())
}

/// Options understood by mount(8) itself, or by fstab and systemd, that
/// never reach a filesystem; accepted and ignored, as mount(8) does.
fn is_userspace_only(key: &str) -> bool {
    matches!(
        key,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "comment"
            | "loud"
            | "async"
    ) || (key.starts_with("x-") || key.starts_with("X-"))
        && !key.eq_ignore_ascii_case("X-mount.idmap")
        && !changes_what_is_mounted(key)
}

/// util-linux's options that change what a mount shows (a subdirectory of
/// it, the owner or mode of its root), which mount(8) applies to its own
/// mounts only: ignored, they would leave the overlay not as asked.
fn changes_what_is_mounted(key: &str) -> bool {
    [
        "X-mount.subdir",
        "X-mount.owner",
        "X-mount.group",
        "X-mount.mode",
    ]
    .iter()
    .any(|k| key.eq_ignore_ascii_case(k))
}

/// Splits a mount option string at commas not escaped by a backslash; the
/// escapes are kept (overlay's own `lowerdir=` parser interprets them).
pub(crate) fn split_options(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, b) in options.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b',' => {
                parts.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&options[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Applies one mount flag to `attrs`; false when `key` is not a mount flag.
pub(crate) fn apply_mount_flag(attrs: &mut MountAttrs, key: &str) -> bool {
    let (flag, on) = match key {
        "ro" => (MountAttrs::READ_ONLY, true),
        "rw" => (MountAttrs::READ_ONLY, false),
        "nosuid" => (MountAttrs::NOSUID, true),
        "suid" => (MountAttrs::NOSUID, false),
        "nodev" => (MountAttrs::NODEV, true),
        "dev" => (MountAttrs::NODEV, false),
        "noexec" => (MountAttrs::NOEXEC, true),
        "exec" => (MountAttrs::NOEXEC, false),
        "noatime" => (MountAttrs::NOATIME, true),
        "atime" | "relatime" => (MountAttrs::NOATIME, false),
        "nodiratime" => (MountAttrs::NODIRATIME, true),
        "diratime" => (MountAttrs::NODIRATIME, false),
        "nosymfollow" => (MountAttrs::NOSYMFOLLOW, true),
        "symfollow" => (MountAttrs::NOSYMFOLLOW, false),
        _ => return false,
    };
    attrs.set(flag, on);
    true
}

/// Overlay parameters and mount attributes parsed from a `-o` string that
/// does not name layers (the flag form of the CLI, the library's
/// [`Overlay::options`](crate::Overlay::options)).
///
pub(crate) fn parse_overlay_options(options: &str) -> Result<(Vec<OverlayParam>, MountAttrs)> {
    let mut params = Vec::new();
    let mut attrs = MountAttrs::default();
    for part in split_options(options) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        check_param(key, value, part)?;
        if value.is_none() && apply_mount_flag(&mut attrs, key) {
            continue;
        }
        if is_userspace_only(key) {
            continue;
        }
        params.push(OverlayParam {
            key: key.to_string(),
            value: value.map(str::to_string),
        });
    }
    Ok((params, attrs))
}

/// Everything a mount(8)-style option string can say about an idmapped
/// overlay: layers, upper and work, maps, overlay parameters, mount flags.
///
/// The syntax is overlay's own (`lowerdir=A:B:C`, top-most first, `\:`,
/// `\,` and `\\` escapes, `::` before data-only layers), containerd's maps
/// (`uidmap=0:100000:65536,65536:300000:1000`: `container:host:size` ranges
/// separated by commas, as its overlay snapshotter prints them) and
/// util-linux's `X-mount.idmap=` (entries `u:`/`g:`/`b:` or untyped
/// `ondisk:host:count`, separated by spaces, or the path of a user
/// namespace file). mount(8) strips `X-*` options before it runs a helper,
/// so `idmap=` is accepted as the same thing under a name that gets through.
///
/// ```
/// use idoverlay::MountOptions;
/// let spec = MountOptions::parse(
///     "lowerdir=/l/3:/l/2:/l/1,upperdir=/c/u,workdir=/c/w,\
///      uidmap=0:100000:65536,65536:300000:1000,gidmap=0:100000:65536,index=off,nosuid",
/// ).unwrap();
/// assert_eq!(spec.lowers.len(), 3);
/// assert_eq!(spec.uid_map.unwrap().to_string(), "0:100000:65536,65536:300000:1000");
/// assert_eq!(spec.params.len(), 1);
/// assert!(spec.attrs.contains(idoverlay::MountAttrs::NOSUID));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers (after `::`, or `datadir+=`).
    pub data_lowers: Vec<PathBuf>,
    /// `upperdir=`.
    pub upper: Option<PathBuf>,
    /// `workdir=`.
    pub work: Option<PathBuf>,
    /// `uidmap=`, or the `u:`/`b:` entries of `X-mount.idmap=`.
    pub uid_map: Option<IdMap>,
    /// `gidmap=`, or the `g:`/`b:` entries of `X-mount.idmap=`.
    pub gid_map: Option<IdMap>,
    /// `X-mount.idmap=/proc/PID/ns/user`: a user namespace file.
    pub userns: Option<PathBuf>,
    /// Overlay parameters passed through.
    pub params: Vec<OverlayParam>,
    /// Mount flags.
    pub attrs: MountAttrs,
}

/// overlay's unescaping: a backslash takes the next character literally.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Splits overlay's `lowerdir=` value: `:` between layers, `::` before the
/// data-only layers, backslash escapes.
pub(crate) fn parse_lowerdir(value: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let err = |why: &str| Error::invalid("lowerdir", value, why);
    let mut layers: Vec<Vec<String>> = vec![Vec::new()];
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ':' => {
                if current.is_empty() {
                    return Err(err(
                        "has an empty layer (\"::\" may appear once, before data-only layers)",
                    ));
                }
                layers
                    .last_mut()
                    .expect("one group")
                    .push(std::mem::take(&mut current));
                if chars.peek() == Some(&':') {
                    chars.next();
                    if layers.len() == 2 {
                        return Err(err(
                            "has \"::\" twice; data-only layers come after one \"::\"",
                        ));
                    }
                    layers.push(Vec::new());
                }
            }
            c => current.push(c),
        }
    }
    if current.is_empty() {
        return Err(err("ends with an empty layer"));
    }
    layers.last_mut().expect("one group").push(current);
    let mut groups = layers
        .into_iter()
        .map(|g| g.into_iter().map(PathBuf::from).collect());
    let lowers = groups.next().unwrap_or_default();
    let data = groups.next().unwrap_or_default();
    Ok((lowers, data))
}

/// util-linux's `X-mount.idmap=` value: a user namespace file, or entries
/// `[u:|g:|b:]ondisk:host:count` separated by spaces (`\040` in fstab).
fn parse_util_linux_idmap(value: &str) -> Result<(Option<IdMap>, Option<IdMap>, Option<PathBuf>)> {
    let value = value.replace("\\040", " ").replace("\\011", "\t");
    if value.starts_with('/') {
        return Ok((None, None, Some(PathBuf::from(value))));
    }
    let err = |why: String| Error::invalid("X-mount.idmap", &value, why);
    let (mut uid, mut gid) = (Vec::new(), Vec::new());
    for entry in value.split_whitespace() {
        let (kind, range) = match entry.split_once(':') {
            Some((k @ ("u" | "g" | "b"), rest)) => (k, rest),
            _ => ("b", entry),
        };
        let map: IdMap = range.parse().map_err(|e: crate::idmap::IdMapError| {
            err(format!(
                "entry {entry:?}: {} (write [u:|g:|b:]ONDISK:HOST:COUNT)",
                e.reason
            ))
        })?;
        let r: IdRange = map.ranges()[0];
        if map.ranges().len() != 1 {
            return Err(err(format!(
                "entry {entry:?} holds several ranges; separate entries with spaces"
            )));
        }
        if kind != "g" {
            uid.push(r);
        }
        if kind != "u" {
            gid.push(r);
        }
    }
    let build = |ranges: Vec<IdRange>, what: &str| -> Result<Option<IdMap>> {
        if ranges.is_empty() {
            return Ok(None);
        }
        IdMap::new(ranges)
            .map(Some)
            .map_err(|e| err(format!("{what} map: {}", e.reason)))
    };
    Ok((build(uid, "uid")?, build(gid, "gid")?, None))
}

/// Which option gave each setting that may be given once.
#[derive(Default)]
struct Given {
    upper: Option<String>,
    work: Option<String>,
    uid: Option<String>,
    gid: Option<String>,
    userns: Option<String>,
}

/// Sets `slot` from the option `shown`, refusing a second option that
/// says something else (one that says the same is harmless).
fn set_once<T: PartialEq>(
    slot: &mut Option<T>,
    by: &mut Option<String>,
    value: T,
    shown: &str,
    what: &str,
) -> Result<()> {
    match (slot.as_ref(), by.as_ref()) {
        (Some(old), Some(first)) if *old != value => Err(Error::invalid(
            "option",
            format!("{first} and {shown}"),
            format!("both give {what}, differently; give it once"),
        )),
        (Some(_), _) => Ok(()),
        (None, _) => {
            *slot = Some(value);
            *by = Some(shown.to_string());
            Ok(())
        }
    }
}

impl MountOptions {
    /// Parses a mount(8)-style option string (see [`MountOptions`]).
    pub fn parse(options: &str) -> Result<MountOptions> {
        parse_mount_options(options)
    }
}

/// Parses a mount(8)-style option string into a [`MountOptions`].
pub(crate) fn parse_mount_options(options: &str) -> Result<MountOptions> {
    let mut spec = MountOptions::default();
    // containerd's maps hold commas between ranges: a part that is only
    // `N:N:N` continues the uidmap/gidmap before it (overlay options never
    // look like that).
    let mut parts: Vec<(String, Option<String>)> = Vec::new();
    for part in split_options(options) {
        let is_range = {
            let f: Vec<&str> = part.split(':').collect();
            f.len() == 3
                && f.iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        };
        if let Some((key, Some(value))) = parts.last_mut() {
            if is_range && (key == "uidmap" || key == "gidmap") {
                value.push(',');
                value.push_str(part);
                continue;
            }
        }
        match part.split_once('=') {
            Some((k, v)) => parts.push((k.to_string(), Some(v.to_string()))),
            None => parts.push((part.to_string(), None)),
        }
    }
    // Which option set each of these, so that a second, different one is
    // refused naming both (an identical repeat is harmless).
    let mut given: Given = Given::default();
    for (key, value) in parts {
        let shown = match &value {
            Some(v) => format!("{key}={v}"),
            None => key.clone(),
        };
        let need_value = || {
            value
                .clone()
                .ok_or_else(|| Error::invalid("option", &shown, "needs a value (KEY=VALUE)"))
        };
        match key.as_str() {
            "lowerdir" => {
                if !spec.lowers.is_empty() {
                    return Err(Error::invalid("option", &shown, "lowerdir= is given twice"));
                }
                let (lowers, data) = parse_lowerdir(&need_value()?)?;
                spec.lowers = lowers;
                spec.data_lowers.extend(data);
            }
            "lowerdir+" => spec.lowers.push(PathBuf::from(unescape(&need_value()?))),
            "datadir+" => spec
                .data_lowers
                .push(PathBuf::from(unescape(&need_value()?))),
            "upperdir" => {
                let dir = PathBuf::from(unescape(&need_value()?));
                set_once(
                    &mut spec.upper,
                    &mut given.upper,
                    dir,
                    &shown,
                    "the upper dir",
                )?;
            }
            "workdir" => {
                let dir = PathBuf::from(unescape(&need_value()?));
                set_once(&mut spec.work, &mut given.work, dir, &shown, "the work dir")?;
            }
            "uidmap" | "gidmap" => {
                let map: IdMap = need_value()?
                    .parse()
                    .map_err(|e: crate::idmap::IdMapError| {
                        Error::invalid(key.as_str(), e.input, e.reason)
                    })?;
                if key == "uidmap" {
                    set_once(
                        &mut spec.uid_map,
                        &mut given.uid,
                        map,
                        &shown,
                        "the uid map",
                    )?;
                } else {
                    set_once(
                        &mut spec.gid_map,
                        &mut given.gid,
                        map,
                        &shown,
                        "the gid map",
                    )?;
                }
            }
            k if k.eq_ignore_ascii_case("X-mount.idmap") || k == "idmap" => {
                let (uid, gid, userns) = parse_util_linux_idmap(&need_value()?)?;
                if let Some(uid) = uid {
                    set_once(
                        &mut spec.uid_map,
                        &mut given.uid,
                        uid,
                        &shown,
                        "the uid map",
                    )?;
                }
                if let Some(gid) = gid {
                    set_once(
                        &mut spec.gid_map,
                        &mut given.gid,
                        gid,
                        &shown,
                        "the gid map",
                    )?;
                }
                if let Some(ns) = userns {
                    set_once(
                        &mut spec.userns,
                        &mut given.userns,
                        ns,
                        &shown,
                        "the user namespace",
                    )?;
                }
            }
            "datadir" => {
                return Err(Error::invalid(
                    "option",
                    &shown,
                    "is not an overlay option; use datadir+= or lowerdir=A::DATA",
                ))
            }
            _ => {
                if value.is_none() && apply_mount_flag(&mut spec.attrs, &key) {
                    continue;
                }
                if is_userspace_only(&key) {
                    continue;
                }
                let (mut params, _) = parse_overlay_options(&shown)?;
                spec.params.append(&mut params);
            }
        }
    }
    if let (Some(ns), Some(maps)) = (&given.userns, given.uid.as_ref().or(given.gid.as_ref())) {
        return Err(Error::invalid(
            "option",
            format!("{maps} and {ns}"),
            "give the id maps in one way: maps, or a user namespace file, not both",
        ));
    }
    if spec.userns.is_none() && spec.uid_map.is_some() != spec.gid_map.is_some() {
        return Err(Error::invalid(
            "option",
            options,
            "gives a uid map without a gid map or the other way round; give both \
             (uidmap= and gidmap=, or X-mount.idmap=b:… entries)",
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_unescaped_commas() {
        assert_eq!(split_options("a,b=c,,d"), vec!["a", "b=c", "d"]);
        assert_eq!(
            split_options(r"lowerdir=/a\,b:/c,upperdir=/u"),
            vec![r"lowerdir=/a\,b:/c", "upperdir=/u"]
        );
        assert_eq!(split_options(r"x=a\\,y"), vec![r"x=a\\", "y"]);
        assert!(split_options("").is_empty());
    }

    #[test]
    fn flags_params_and_ignored() {
        let (params, attrs) =
            parse_overlay_options("ro,nosuid,nodev,noexec,index=off,redirect_dir=on,metacopy=off,userxattr,xino=auto,volatile,defaults,x-systemd.automount,_netdev")
                .unwrap();
        assert!(attrs.contains(
            MountAttrs::READ_ONLY | MountAttrs::NOSUID | MountAttrs::NODEV | MountAttrs::NOEXEC
        ));
        let keys: Vec<&str> = params.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "index",
                "redirect_dir",
                "metacopy",
                "userxattr",
                "xino",
                "volatile"
            ]
        );
        assert_eq!(params[0].value.as_deref(), Some("off"));
        assert_eq!(params[3].value, None);
        let (_, attrs) = parse_overlay_options("ro,rw").unwrap();
        assert!(!attrs.contains(MountAttrs::READ_ONLY));
    }

    #[test]
    fn refuses_layers_maps_and_junk() {
        for bad in [
            "lowerdir=/a",
            "upperdir=/u",
            "workdir=/w",
            "datadir+=/d",
            "lowerdir+=/a",
            "uidmap=0:1:1",
            "X-mount.idmap=0:1:1",
            "=x",
        ] {
            let e = parse_overlay_options(bad).unwrap_err();
            assert_eq!(e.kind(), "invalid_input", "{bad}");
        }
        let long = format!("index={}", "x".repeat(300));
        assert!(parse_overlay_options(&long).is_err());
    }

    #[test]
    fn conflicting_maps_and_dirs_are_refused_naming_both() {
        for (options, names) in [
            (
                "lowerdir=/a:/b,uidmap=0:1:1,uidmap=0:2:1,gidmap=0:1:1",
                ["uidmap=0:1:1", "uidmap=0:2:1"],
            ),
            (
                "lowerdir=/a:/b,uidmap=0:1:1,gidmap=0:1:1,X-mount.idmap=b:0:5:1",
                ["uidmap=0:1:1", "X-mount.idmap=b:0:5:1"],
            ),
            (
                "lowerdir=/a:/b,idmap=b:0:1:1,X-mount.idmap=b:0:5:1",
                ["idmap=b:0:1:1", "X-mount.idmap=b:0:5:1"],
            ),
            (
                "lowerdir=/a:/b,uidmap=0:1:1,gidmap=0:1:1,X-mount.idmap=/proc/1/ns/user",
                ["uidmap=0:1:1", "X-mount.idmap=/proc/1/ns/user"],
            ),
            (
                "lowerdir=/a,upperdir=/u,upperdir=/v,workdir=/w",
                ["upperdir=/u", "upperdir=/v"],
            ),
            (
                "lowerdir=/a,upperdir=/u,workdir=/w,workdir=/x",
                ["workdir=/w", "workdir=/x"],
            ),
        ] {
            let e = parse_mount_options(options).unwrap_err().to_string();
            for n in names {
                assert!(e.contains(n), "{options}: {e}");
            }
            assert!(!e.contains('\n'));
        }
        // Saying the same thing twice is harmless.
        let spec = parse_mount_options(
            "lowerdir=/a:/b,uidmap=0:1:1,uidmap=0:1:1,gidmap=0:1:1,X-mount.idmap=b:0:1:1",
        )
        .unwrap();
        assert_eq!(spec.uid_map.unwrap().to_string(), "0:1:1");
    }

    #[test]
    fn unknown_options_pass_through_for_the_kernel_to_judge() {
        let (params, _) = parse_overlay_options("frobnicate=yes,sync").unwrap();
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn lowerdir_escapes_and_data_layers() {
        let (l, d) = parse_lowerdir(r"/a\:b:/c\,d:/e\\f::/data1:/data2").unwrap();
        assert_eq!(
            l,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c,d"),
                PathBuf::from(r"/e\f")
            ]
        );
        assert_eq!(d, vec![PathBuf::from("/data1"), PathBuf::from("/data2")]);
        for bad in ["", "/a:", ":/a", "/a:::/b", "/a::/b::/c"] {
            assert!(parse_lowerdir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containerd_snapshot_mount_line() {
        // As `ctr snapshots mounts` prints it, with two-range maps.
        let spec = parse_mount_options(
            "index=off,workdir=/var/lib/containerd/snapshots/12/work,\
             upperdir=/var/lib/containerd/snapshots/12/fs,\
             lowerdir=/var/lib/containerd/snapshots/11/fs:/var/lib/containerd/snapshots/10/fs,\
             uidmap=0:100000:65536,65536:300000:1000,gidmap=0:100000:65536,65536:300000:1000",
        )
        .unwrap();
        assert_eq!(spec.lowers.len(), 2);
        assert_eq!(
            spec.upper.unwrap(),
            PathBuf::from("/var/lib/containerd/snapshots/12/fs")
        );
        assert_eq!(
            spec.uid_map.unwrap().to_string(),
            "0:100000:65536,65536:300000:1000"
        );
        assert_eq!(spec.gid_map.unwrap().ranges().len(), 2);
        assert_eq!(
            spec.params,
            vec![OverlayParam {
                key: "index".into(),
                value: Some("off".into())
            }]
        );
    }

    #[test]
    fn util_linux_idmap() {
        let spec =
            parse_mount_options("lowerdir=/a,X-mount.idmap=u:0:100000:65536 g:0:200000:65536")
                .unwrap();
        assert_eq!(spec.uid_map.unwrap().to_host(0), Some(100000));
        assert_eq!(spec.gid_map.unwrap().to_host(0), Some(200000));
        let spec =
            parse_mount_options(r"lowerdir=/a,idmap=0:100000:1000\040b:1000:1000:1").unwrap();
        assert_eq!(
            spec.uid_map.clone().unwrap().to_string(),
            "0:100000:1000,1000:1000:1"
        );
        assert_eq!(spec.uid_map, spec.gid_map);
        let spec = parse_mount_options("lowerdir=/a,X-mount.idmap=/proc/42/ns/user").unwrap();
        assert_eq!(spec.userns.unwrap(), PathBuf::from("/proc/42/ns/user"));
        assert!(
            parse_mount_options("lowerdir=/a,X-mount.idmap=u:0:1:1").is_err(),
            "gid map missing"
        );
        assert!(parse_mount_options("lowerdir=/a,X-mount.idmap=x:0:1:1").is_err());
        assert!(
            parse_mount_options("lowerdir=/a,uidmap=0:1:1").is_err(),
            "gid map missing"
        );
    }

    proptest! {
        #[test]
        fn lowerdir_round_trips_escaped_names(names in proptest::collection::vec("[a-z:,\\\\ =]{1,8}", 1..6)) {
            let escaped: Vec<String> = names.iter().map(|n| {
                n.chars().flat_map(|c| if matches!(c, ':' | ',' | '\\') { vec!['\\', c] } else { vec![c] }).collect()
            }).collect();
            let value = escaped.iter().map(|e| format!("/{e}")).collect::<Vec<_>>().join(":");
            let spec = parse_mount_options(&format!("lowerdir={value},uidmap=0:1:1,gidmap=0:1:1")).unwrap();
            let want: Vec<PathBuf> = names.iter().map(|n| PathBuf::from(format!("/{n}"))).collect();
            prop_assert_eq!(spec.lowers, want);
        }

        #[test]
        fn mount_options_never_panic(s in ".{0,120}") {
            let _ = parse_mount_options(&s);
        }

        #[test]
        fn split_never_panics_and_keeps_text(s in ".{0,80}") {
            let parts = split_options(&s);
            let joined: usize = parts.iter().map(|p| p.len()).sum();
            prop_assert!(joined <= s.len());
            let _ = parse_overlay_options(&s);
        }
    }
}
