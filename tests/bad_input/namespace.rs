//! `-N`: a mount namespace file that is not one.

use super::*;

#[allow(unused_variables)]
pub(crate) fn cases(f: &Fixtures, s: &Scratch, v: &mut Vec<Case>) {
    let d = &f.d;
    let good = &f.layers;
    let t = &f.target;
    let two = &good[..2];
    // Made by the layer cases, which come first.
    let links = d.join("links");
    let file = good[2].join("etc/hostname");

    let ns = |ns: &OsStr, target: &Path| Argv::mount().lowers(two).maps().a("-N").a(ns).a(target);
    v.push(
        case(
            "namespace/user-namespace-file",
            ns(OsStr::new("/proc/self/ns/user"), t),
        )
        .names("\"/proc/self/ns/user\"")
        .says("not a mount namespace"),
    );
    let no_mnt_ns = d.join("no-mount-namespace");
    v.push(
        case("namespace/missing", ns(no_mnt_ns.as_os_str(), t))
            .names_path(&no_mnt_ns)
            .says_any(&["does not exist", "cannot be opened"]),
    );
    v.push(
        case("namespace/regular-file", ns(file.as_os_str(), t))
            .names_path(&file)
            .says("not a mount namespace"),
    );
    let no_target_in_ns = f.e.join("no-target-in-ns");
    v.push(
        case(
            "namespace/target-missing",
            ns(OsStr::new("/proc/self/ns/mnt"), &no_target_in_ns),
        )
        .names_path(&no_target_in_ns)
        .says("does not exist"),
    );
    // Not taken from our working directory: the path is that namespace's.
    v.push(
        case(
            "namespace/relative-target",
            ns(OsStr::new("/proc/self/ns/mnt"), Path::new("rootfs")),
        )
        .names("\"rootfs\"")
        .says("relative")
        .says("-N")
        .never_says("$PWD"),
    );
}
