//! Running without the privileges mounting needs.

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

    let mount_two = Argv::mount().lowers(two).maps().a(t);
    v.push(
        case("privileges/no-cap-sys-admin", mount_two.clone())
            .wrapped(&["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"])
            .names("CAP_SYS_ADMIN")
            .says("needs"),
    );
    v.push(
        case("privileges/unprivileged-user", mount_two)
            .wrapped(&[
                "setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "--",
            ])
            .names("CAP_SYS_ADMIN")
            .says("needs"),
    );
    v.push(
        case(
            "privileges/umount-without-cap-sys-admin",
            Argv::umount().a(&f.mounted_overlay),
        )
        .wrapped(&["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"])
        .names_path(&f.mounted_overlay)
        .says("CAP_SYS_ADMIN"),
    );
}
