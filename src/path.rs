//! Paths as callers give them: checked and normalized lexically once,
//! before anything is opened.
//!
//! Why: the kernel treats a trailing `/` (and so `/.` or `//`) as "the last
//! component must be a directory, follow it if it is a symlink", so
//! `O_NOFOLLOW` on `/x/l1/` still follows a symlink at `l1`. Every path
//! input (layers, upper, work, target, state dir, umount target) goes
//! through [`normalize`] first, and only the normalized spelling is ever
//! handed to a syscall: its last component is then a plain name, and a
//! symlink there is refused, whatever the caller wrote.
//!
//! `..` components are kept for the kernel to resolve (removing them
//! lexically would change the meaning when a directory before them is a
//! symlink); a path whose *last* component is `..` is refused, since it
//! names a directory by way of another one.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why a path cannot be used as given; [`Refusal::reason`] says it in a
/// sentence that follows the path in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Empty,
    Relative,
    Nul,
    TooLong,
    EndsInDotDot,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Empty => "is empty; give an absolute path",
            Refusal::Relative => "is a relative path; give an absolute path (e.g. \"$PWD/...\")",
            Refusal::Nul => "contains a NUL byte",
            Refusal::TooLong => "is longer than PATH_MAX (4096 bytes)",
            Refusal::EndsInDotDot => {
                "ends in \"..\"; give the directory itself (its last component must be its own name)"
            }
        }
    }
}

/// `path` in normal form: absolute, no empty or `.` components, no
/// trailing `/` (except `/` itself); borrowed when it already is.
///
/// ```text
/// /a//b/./c/  ->  /a/b/c
/// /a/b/.      ->  /a/b
/// /a/../b     ->  /a/../b   (kept: the kernel resolves `..`)
/// /a/b/..     ->  refused
/// ```
pub(crate) fn normalize(path: &Path) -> Result<Cow<'_, Path>, Refusal> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(Refusal::Empty);
    }
    if bytes[0] != b'/' {
        return Err(Refusal::Relative);
    }
    if bytes.contains(&0) {
        return Err(Refusal::Nul);
    }
    if bytes.len() >= libc::PATH_MAX as usize {
        return Err(Refusal::TooLong);
    }
    let last = bytes[1..]
        .split(|b| *b == b'/')
        .rfind(|c| !c.is_empty() && *c != b".");
    if last == Some(b"..") {
        return Err(Refusal::EndsInDotDot);
    }
    // The common case, checked without building anything: every `/` is
    // followed by a byte other than `/` and `.`-as-a-whole-component, and
    // the path does not end in `/`.
    let already = !bytes.ends_with(b"/") || bytes == b"/";
    let already = already
        && bytes[1..]
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b".");
    if already || bytes == b"/" {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(OsStr::from_bytes(&rebuilt(bytes)).into()))
}

/// An absolute path rebuilt without empty and `.` components.
fn rebuilt(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for c in path[1..]
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Whether a normalized path has a `..` component (then it is not known
/// to be canonical without asking the kernel).
pub(crate) fn has_dotdot(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .any(|c| c == b"..")
}

/// A normalized path split into its parent and its last component (`None`
/// for `/`, which has no parent to open).
pub(crate) fn split_last(normal: &Path) -> Option<(&Path, &OsStr)> {
    let bytes = normal.as_os_str().as_bytes();
    let cut = bytes.iter().rposition(|b| *b == b'/')?;
    let name = &bytes[cut + 1..];
    if name.is_empty() {
        return None;
    }
    let parent = if cut == 0 { &b"/"[..] } else { &bytes[..cut] };
    Some((
        Path::new(OsStr::from_bytes(parent)),
        OsStr::from_bytes(name),
    ))
}

// ---------------------------------------------------------------------------
// Path algebra on bytes (normalized paths), for planning and locating: with
// 500 layers this runs on every mount, and path-component iterators cost
// more than the kernel's own work.

/// `/a//b/./c/` → `/a/b/c` (borrowed when already so); `None` when a `..`
/// component makes the path depend on symlinks above it. Knows that
/// `path[..from]` is in normal form and that `path[from]` is a `/` (or
/// `from` is 0).
pub(crate) fn normalize_from(path: &[u8], from: usize) -> Option<Cow<'_, [u8]>> {
    // The common case, checked without splitting: no empty, `.` or `..`
    // component anywhere (every `/` is followed by a byte other than `/`
    // and `.`, and the path does not end in `/`).
    let odd_after_slash = path[from..]
        .windows(2)
        .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'));
    if !odd_after_slash && (path.len() == 1 || !path.ends_with(b"/")) {
        return Some(Cow::Borrowed(path));
    }
    let mut normal = true;
    for c in path[1..].split(|b| *b == b'/') {
        match c {
            b".." => return None,
            b"" | b"." => normal = false,
            _ => {}
        }
    }
    if normal || path == b"/" {
        return Some(Cow::Borrowed(path));
    }
    Some(Cow::Owned(rebuilt(path)))
}

/// The part of `path` below `dir` (empty when they are equal), when `path`
/// is `dir` or lies inside it. Both normalized, both absolute or both
/// relative; `dir` may be empty (meaning the starting point itself).
pub(crate) fn below<'p>(path: &'p [u8], dir: &[u8]) -> Option<&'p [u8]> {
    if dir.is_empty() || dir == b"/" {
        return Some(path.strip_prefix(b"/").unwrap_or(path));
    }
    let rest = path.strip_prefix(dir)?;
    match rest.first() {
        None => Some(rest),
        Some(b'/') => Some(&rest[1..]),
        Some(_) => None,
    }
}

/// The length of the longest common leading directory of all `paths`
/// (normalized, at least one).
pub(crate) fn common_dir_of(paths: &[&[u8]]) -> usize {
    paths[1..].iter().fold(paths[0].len(), |n, p| {
        // Most layers share the whole prefix found so far: one memcmp.
        let prefix = &paths[0][..n];
        if p.starts_with(prefix) && (p.len() == n || p[n] == b'/' || n == 1) {
            n
        } else {
            common_dir_len(prefix, p)
        }
    })
}

/// The length of the longest common leading directory of two normalized
/// paths (as bytes, cut at a component boundary).
pub(crate) fn common_dir_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let boundary = |p: &[u8]| n == p.len() || p[n] == b'/';
    if boundary(a) && boundary(b) {
        return n;
    }
    a[..n].iter().rposition(|c| *c == b'/').unwrap_or(0)
}

pub(crate) fn join(dir: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len() + rel.len() + 1);
    out.extend_from_slice(dir);
    if !rel.is_empty() {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(rel);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, Refusal> {
        normalize(Path::new(p)).map(|c| c.to_string_lossy().into_owned())
    }

    #[test]
    fn every_spelling_of_a_directory_normalizes_to_its_name() {
        for spelling in [
            "/x/l1",
            "/x/l1/",
            "/x/l1/.",
            "/x/l1//",
            "//x//l1/./",
            "/x/./l1",
        ] {
            assert_eq!(n(spelling), Ok("/x/l1".into()), "{spelling}");
        }
        assert_eq!(n("/"), Ok("/".into()));
        assert_eq!(n("//"), Ok("/".into()));
        assert_eq!(n("/."), Ok("/".into()));
        assert_eq!(n("/a/../b"), Ok("/a/../b".into()));
        assert_eq!(n("/a/../b/"), Ok("/a/../b".into()));
        assert!(matches!(
            normalize(Path::new("/x/l1")),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn unusable_spellings_are_refused() {
        assert_eq!(n(""), Err(Refusal::Empty));
        assert_eq!(n("x/l1"), Err(Refusal::Relative));
        assert_eq!(n("./x"), Err(Refusal::Relative));
        assert_eq!(n("/a/b/.."), Err(Refusal::EndsInDotDot));
        assert_eq!(n("/a/b/../"), Err(Refusal::EndsInDotDot));
        assert_eq!(n("/a/b/.././"), Err(Refusal::EndsInDotDot));
        assert_eq!(n("/a\0b"), Err(Refusal::Nul));
        assert_eq!(n(&format!("/{}", "a".repeat(4096))), Err(Refusal::TooLong));
    }

    #[test]
    fn split_last_gives_parent_and_name() {
        let s = |p: &str| {
            split_last(Path::new(p)).map(|(a, b)| {
                (
                    a.to_string_lossy().into_owned(),
                    b.to_string_lossy().into_owned(),
                )
            })
        };
        assert_eq!(s("/a/b/c"), Some(("/a/b".into(), "c".into())));
        assert_eq!(s("/a"), Some(("/".into(), "a".into())));
        assert_eq!(s("/"), None);
    }

    proptest::proptest! {
        #[test]
        fn normal_forms_are_stable_and_keep_the_last_name(p in "(/[a.]{0,3}){1,5}/?") {
            if let Ok(once) = normalize(Path::new(&p)) {
                let twice = normalize(&once).unwrap().into_owned();
                proptest::prop_assert_eq!(once.as_ref(), twice.as_path());
                let b = once.as_os_str().as_bytes();
                proptest::prop_assert!(b == b"/" || !b.ends_with(b"/"));
                proptest::prop_assert!(
                    b == b"/" || !b.split(|c| *c == b'/').skip(1).any(|c| c.is_empty() || c == b".")
                );
            }
        }
    }

    #[test]
    fn common_dir_of_cuts_at_component_boundaries() {
        let c = |ps: &[&str]| {
            let ps: Vec<&[u8]> = ps.iter().map(|p| p.as_bytes()).collect();
            let n = common_dir_of(&ps);
            String::from_utf8(ps[0][..n].to_vec()).unwrap()
        };
        assert_eq!(c(&["/a/b/c", "/a/b/d", "/a/b/e/f"]), "/a/b");
        assert_eq!(c(&["/a/bc", "/a/b"]), "/a");
        assert_eq!(c(&["/a/b", "/a/bc"]), "/a");
        assert_eq!(c(&["/x", "/y"]), "");
        assert_eq!(c(&["/a", "/a"]), "/a");
        assert_eq!(c(&["/a/b", "/a"]), "/a");
        assert_eq!(c(&["/", "/a"]), "/");
    }

    #[test]
    fn ancestors_and_normal_forms() {
        let common = |v: &[&str]| {
            let n = v[1..].iter().fold(v[0].len(), |n, p| {
                common_dir_len(&v[0].as_bytes()[..n], p.as_bytes())
            });
            String::from_utf8(v[0].as_bytes()[..n].to_vec()).unwrap()
        };
        assert_eq!(common(&["/a/b/c", "/a/b/d"]), "/a/b");
        assert_eq!(common(&["/a/b/c", "/a/b/c/d"]), "/a/b/c");
        assert_eq!(common(&["/x/1/fs", "/y/2/fs"]), "");
        assert_eq!(common(&["/s/1/fs", "/s/2/fs", "/s/10/fs"]), "/s");
        assert_eq!(common(&["/ab/c", "/a/c"]), "");
        assert_eq!(common(&["/a/bc", "/a/b"]), "/a");
        let n = |p: &str| {
            normalize_from(p.as_bytes(), 0).map(|c| String::from_utf8(c.into_owned()).unwrap())
        };
        assert_eq!(n("/a//b/./c/"), Some("/a/b/c".into()));
        assert_eq!(n("/a/b"), Some("/a/b".into()));
        assert_eq!(n("/"), Some("/".into()));
        assert_eq!(n("/./"), Some("/".into()));
        assert_eq!(n("/a/../b"), None);
        assert_eq!(below(b"/a/b/c", b"/a"), Some(&b"b/c"[..]));
        assert_eq!(below(b"/a/b", b"/a/b"), Some(&b""[..]));
        assert_eq!(below(b"/ab", b"/a"), None);
        assert_eq!(below(b"x/y", b""), Some(&b"x/y"[..]));
        assert_eq!(below(b"/x", b"/"), Some(&b"x"[..]));
    }

    proptest::proptest! {
        #[test]
        fn normalizing_from_a_known_normal_directory_changes_nothing(
            dir in "(/[a.]{1,3}){0,3}",
            tail in "/[a./]{1,6}",
        ) {
            let path = format!("{dir}{tail}");
            let dir_is_normal = matches!(normalize_from(dir.as_bytes(), 0), Some(Cow::Borrowed(_)));
            if dir_is_normal && !dir.is_empty() {
                proptest::prop_assert_eq!(
                    normalize_from(path.as_bytes(), dir.len()),
                    normalize_from(path.as_bytes(), 0),
                    "{}", path
                );
            }
        }
    }
}
