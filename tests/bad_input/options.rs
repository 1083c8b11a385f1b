//! `-o` options: layer and map keys where they do not belong, empty keys, what the kernel refuses.

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

    let opt = |o: &str| Argv::mount().lowers(two).maps().a("-o").a(o).a(t);
    v.push(
        case("option/unknown", opt("frobnicate=1"))
            .names("frobnicate=1")
            .says("Unknown parameter")
            .refused_before_any_clone(),
    );
    v.push(
        case(
            "option/unknown-private-ns",
            opt("frobnicate=1").a("--strategy").a("private-ns"),
        )
        .names("frobnicate=1")
        .says("Unknown parameter")
        .refused_before_any_clone(),
    );
    let state_opt = state_dir(d, "state-opt");
    v.push(
        case(
            "option/unknown-host-staged",
            opt("frobnicate=1").host_staged(&state_opt),
        )
        .state_dir(&state_opt)
        .names("frobnicate=1")
        .says("Unknown parameter")
        .refused_before_any_clone(),
    );
    let lowerdir = format!("lowerdir={}", good[2].display());
    v.push(
        case("option/layer-key-lowerdir", opt(&lowerdir))
            .names_any(&[&lowerdir, "-o"])
            .says_any(&["names a layer", "twice", "given both"]),
    );
    v.push(
        case("option/layer-key-upperdir", opt("upperdir=/x"))
            .names_any(&["upperdir=/x", "\"/x\""])
            .says_any(&["names a layer", "work dir"]),
    );
    v.push(
        case("option/map-key", opt("uidmap=0:1:1"))
            .names_any(&["uidmap=0:1:1", "-o uidmap"])
            .says_any(&["id map", "gid map", "more than one place"]),
    );
    let long_value = format!("index={}", "x".repeat(300));
    v.push(
        case("option/value-too-long", opt(&long_value))
            .names(long_value.clone())
            .says("255"),
    );
    let long_key = format!("{}=1", "k".repeat(300));
    v.push(
        case("option/key-too-long", opt(&long_key))
            .names(long_key.clone())
            .says("255"),
    );
    v.push(
        case("option/bad-index-value", opt("index=maybe"))
            .names("index=maybe")
            .says("Bad value for 'index'"),
    );
    v.push(
        case(
            "option/bad-redirect-dir-value",
            opt("redirect_dir=sideways"),
        )
        .names("redirect_dir=sideways")
        .says("Bad value for 'redirect_dir'"),
    );
    v.push(
        case("option/empty-key", opt("nosuid,=x"))
            .names("\"=x\"")
            .says("empty key"),
    );
}
