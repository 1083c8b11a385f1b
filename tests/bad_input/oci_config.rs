//! `--oci-config`: missing, not JSON, without mappings.

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

    let oci = |config: &Path| Argv::mount().lowers(two).a("--oci-config").a(config).a(t);
    let no_config = d.join("no-config.json");
    v.push(
        case("oci-config/missing", oci(&no_config))
            .names(no_config.display().to_string())
            .says_any(&["does not exist", "no such file", "cannot be read"]),
    );
    let not_json = d.join("not-json.json");
    write_file(&not_json, "nope\n", 0o644, 0, 0);
    v.push(
        case("oci-config/not-json", oci(&not_json))
            .names(not_json.display().to_string())
            .says("JSON"),
    );
    // Named as given, not as "config.json" (the library's own text
    // parser has no file name to give).
    let spec_dir = d.join("bundle");
    let bad_range = spec_dir.join("runtime-spec.json");
    write_file(
        &bad_range,
        r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 0}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}"#,
        0o644,
        0,
        0,
    );
    v.push(
        case("oci-config/bad-range-names-the-file", oci(&bad_range))
            .names_path(&bad_range)
            .says("linux.uidMappings")
            .says("size 0")
            .never_says("\"config.json\""),
    );
    v.push(
        case(
            "oci-config/relative-missing",
            oci(Path::new("no-such-config.json")),
        )
        .run_in(&spec_dir)
        .names_path(spec_dir.join("no-such-config.json"))
        .says("does not exist"),
    );
    let no_maps = d.join("no-mappings.json");
    write_file(&no_maps, "{}\n", 0o644, 0, 0);
    v.push(
        case("oci-config/no-mappings", oci(&no_maps))
            .names(no_maps.display().to_string())
            .says("uidMappings"),
    );
}
