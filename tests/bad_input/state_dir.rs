//! host-staged's state dir: relative, symlinked, not root's, world-writable, not a directory.

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

    let staged = |state: &Path| Argv::mount().lowers(two).maps().host_staged(state).a(t);
    let world = d.join("world-writable");
    mkdir(&world, 0o1777, 0, 0);
    let under_world = world.join("state");
    v.push(
        case("state-dir/under-world-writable", staged(&under_world))
            .state_dir(&under_world)
            .names_path(&under_world)
            .says("world-writable"),
    );
    let users = d.join("users-dir");
    mkdir(&users, 0o755, 1000, 1000);
    let under_user = users.join("state");
    v.push(
        case("state-dir/under-non-root-owned", staged(&under_user))
            .state_dir(&under_user)
            .names_path(&under_user)
            .says("not owned by root"),
    );
    v.push(
        case("state-dir/relative", staged(Path::new("relative/state")))
            .names("\"relative/state\"")
            .says("relative"),
    );
    let real_state = state_dir(d, "real-state");
    let state_link = links.join("state");
    symlink(&real_state, &state_link).unwrap();
    v.push(
        case("state-dir/symlink", staged(&state_link))
            .state_dir(&state_link)
            .names_path(&state_link)
            .says("symlink"),
    );
    let state_file = d.join("state-file");
    write_file(&state_file, "", 0o600, 0, 0);
    v.push(
        case("state-dir/regular-file", staged(&state_file))
            .state_dir(&state_file)
            .names_path(&state_file)
            .says("not a directory"),
    );
    let open_state = d.join("state-0755");
    mkdir(&open_state, 0o755, 0, 0);
    v.push(
        case("state-dir/mode-0755", staged(&open_state))
            .state_dir(&open_state)
            .names_path(&open_state)
            .says("0700"),
    );
    v.push(
        case("state-dir/root", staged(Path::new("/")))
            .names("\"/\"")
            .says("not / itself"),
    );
    // Given to a mount that needs it only for its record and the boot's
    // probe report (auto): refused all the same, before anything is made.
    let recorded = |state: &Path| Argv::mount().lowers(two).maps().state(state).a(t);
    v.push(
        case(
            "state-dir/auto/under-world-writable",
            recorded(&under_world),
        )
        .state_dir(&under_world)
        .names_path(&under_world)
        .says("world-writable"),
    );
    v.push(
        case("state-dir/auto/symlink", recorded(&state_link))
            .state_dir(&state_link)
            .names_path(&state_link)
            .says("symlink"),
    );
    v.push(
        case("state-dir/auto/mode-0755", recorded(&open_state))
            .state_dir(&open_state)
            .names_path(&open_state)
            .says("0700"),
    );
    let not_ours = state_dir(d, "not-ours");
    write_file(&not_ours.join("data"), "", 0o600, 0, 0);
    v.push(
        case("state-dir/auto/not-empty", recorded(&not_ours))
            .state_dir(&not_ours)
            .names_path(&not_ours)
            .says("holds \"data\""),
    );
}
