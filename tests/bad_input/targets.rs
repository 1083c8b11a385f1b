//! Targets: missing, relative, not a directory, a symlink.

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

    let no_target = f.e.join("no-target");
    v.push(
        case(
            "target/missing",
            Argv::mount().lowers(two).maps().a(&no_target),
        )
        .names_path(&no_target)
        .says("does not exist"),
    );
    v.push(
        case(
            "target/regular-file",
            Argv::mount().lowers(two).maps().a(&file),
        )
        .names_path(&file)
        .says("not a directory"),
    );
    let target_link = links.join("target");
    symlink(t, &target_link).unwrap();
    v.push(
        case(
            "target/symlink",
            Argv::mount().lowers(two).maps().a(&target_link),
        )
        .names_path(&target_link)
        .says("symlink"),
    );
    // A relative target is taken from the working directory (runc's
    // `root.path` defaults to the relative `rootfs`), and refused as the
    // absolute one is: the message names the absolute path.
    v.push(
        case(
            "target/relative-missing",
            Argv::mount().lowers(two).maps().a("relative/target"),
        )
        .run_in(d)
        .names_path(d.join("relative/target"))
        .says("does not exist"),
    );
    // A symlink as the last component is never followed, however spelled.
    for (name, spelling) in [
        ("target/relative-symlink", "target"),
        ("target/relative-symlink-trailing-slash", "target/"),
        ("target/relative-symlink-slash-dot", "target/."),
        ("target/relative-symlink-double-slash", "target//"),
        ("target/relative-symlink-dot-slash", "./target"),
    ] {
        v.push(
            case(name, Argv::mount().lowers(two).maps().a(spelling))
                .run_in(&links)
                .names_path(&target_link)
                .says("symlink"),
        );
    }
}
