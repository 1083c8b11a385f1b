//! Mount option strings (`-o`): mount flags become mount attributes, the
//! rest are overlay parameters passed to the kernel as they are.

use crate::error::{Error, Result};
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
pub const LAYER_KEYS: [&str; 6] = [
    "lowerdir",
    "lowerdir+",
    "upperdir",
    "workdir",
    "datadir+",
    "datadir",
];

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
}

/// Splits a mount option string at commas not escaped by a backslash; the
/// escapes are kept (overlay's own `lowerdir=` parser interprets them).
pub fn split_options(options: &str) -> Vec<&str> {
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
pub fn apply_mount_flag(attrs: &mut MountAttrs, key: &str) -> bool {
    match key {
        "ro" => attrs.read_only = true,
        "rw" => attrs.read_only = false,
        "nosuid" => attrs.nosuid = true,
        "suid" => attrs.nosuid = false,
        "nodev" => attrs.nodev = true,
        "dev" => attrs.nodev = false,
        "noexec" => attrs.noexec = true,
        "exec" => attrs.noexec = false,
        "noatime" => attrs.noatime = true,
        "atime" | "relatime" => attrs.noatime = false,
        "nodiratime" => attrs.nodiratime = true,
        "diratime" => attrs.nodiratime = false,
        "nosymfollow" => attrs.nosymfollow = true,
        "symfollow" => attrs.nosymfollow = false,
        _ => return false,
    }
    true
}

/// Overlay parameters and mount attributes parsed from a `-o` string that
/// does not name layers (the flag form of the CLI, the library's
/// [`Overlay::options`](crate::Overlay::options)).
///
/// ```
/// use idoverlay::options::parse_overlay_options;
/// let (params, attrs) = parse_overlay_options("index=off,userxattr,nosuid,ro").unwrap();
/// assert_eq!(params.len(), 2);
/// assert!(attrs.nosuid && attrs.read_only);
/// ```
pub fn parse_overlay_options(options: &str) -> Result<(Vec<OverlayParam>, MountAttrs)> {
    let mut params = Vec::new();
    let mut attrs = MountAttrs::default();
    for part in split_options(options) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        if key.is_empty() {
            return Err(Error::invalid(
                "option",
                part,
                "has an empty key; write KEY or KEY=VALUE, separated by commas",
            ));
        }
        if LAYER_KEYS.contains(&key) {
            return Err(Error::invalid(
                "option",
                part,
                "names a layer; give layers with --lower/--data-lower/--upper/--work, \
                 or use the mount(8) form `-t overlay overlay -o lowerdir=…`",
            ));
        }
        if matches!(key, "uidmap" | "gidmap") || key.eq_ignore_ascii_case("X-mount.idmap") {
            return Err(Error::invalid(
                "option",
                part,
                "names an id map; give maps with --uidmap/--gidmap or --userns",
            ));
        }
        if value.is_none() && apply_mount_flag(&mut attrs, key) {
            continue;
        }
        if is_userspace_only(key) {
            continue;
        }
        if key.len() > 255 || value.is_some_and(|v| v.len() > 255) {
            return Err(Error::invalid(
                "option",
                part,
                "is longer than 255 bytes, the most fsconfig takes for a key or value",
            ));
        }
        if key.contains('\0') || value.is_some_and(|v| v.contains('\0')) {
            return Err(Error::invalid("option", part, "contains a NUL byte"));
        }
        params.push(OverlayParam {
            key: key.to_string(),
            value: value.map(str::to_string),
        });
    }
    Ok((params, attrs))
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
        assert!(attrs.read_only && attrs.nosuid && attrs.nodev && attrs.noexec);
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
        assert!(!attrs.read_only);
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
    fn unknown_options_pass_through_for_the_kernel_to_judge() {
        let (params, _) = parse_overlay_options("frobnicate=yes,sync").unwrap();
        assert_eq!(params.len(), 2);
    }

    proptest! {
        #[test]
        fn split_never_panics_and_keeps_text(s in ".{0,80}") {
            let parts = split_options(&s);
            let joined: usize = parts.iter().map(|p| p.len()).sum();
            prop_assert!(joined <= s.len());
            let _ = parse_overlay_options(&s);
        }
    }
}
