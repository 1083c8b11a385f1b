//! Forced strategies and features this kernel lacks.

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

    let strat = |extra: &[&str]| {
        extra
            .iter()
            .fold(Argv::mount().lowers(two).maps(), |a, x| a.a(x))
            .a(t)
    };
    v.push(
        case("strategy/unknown", strat(&["--strategy", "bogus"]))
            .names("bogus")
            .says("not one of"),
    );
    v.push(
        case(
            "strategy/detached-without-detached-layers",
            strat(&[
                "--pretend-missing",
                "overlay_detached_layers",
                "--strategy",
                "detached",
            ]),
        )
        .names("detached strategy")
        .says("needs kernel 6.15 (overlay_detached_layers)"),
    );
    v.push(
        case(
            "strategy/private-ns-without-idmapped-layers",
            strat(&[
                "--pretend-missing",
                "overlay_idmapped_layers",
                "--strategy",
                "private-ns",
            ]),
        )
        .names("private-ns strategy")
        .says("needs kernel 5.19 (overlay_idmapped_layers)"),
    );
    let state_strat = state_dir(d, "state-strategy");
    v.push(
        case(
            "strategy/host-staged-without-idmapped-layers",
            Argv::mount()
                .lowers(two)
                .maps()
                .a("--pretend-missing")
                .a("overlay_idmapped_layers")
                .host_staged(&state_strat)
                .a(t),
        )
        .state_dir(&state_strat)
        .names("host-staged strategy")
        .says("needs kernel 5.19 (overlay_idmapped_layers)"),
    );
    v.push(
        case(
            "strategy/pretend-missing-unknown-feature",
            strat(&["--pretend-missing", "bogus_feature"]),
        )
        .usage()
        .names("--pretend-missing")
        .names("bogus_feature"),
    );
}
