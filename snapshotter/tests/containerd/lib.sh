# Shared by run (the tests) and bench (the comparison): start and stop a
# private containerd and idoverlay-snapshotter, by pid, inside the private
# mount namespace the caller already entered; everything they write lives on
# a tmpfs mounted (in that namespace only) over a fresh directory.
# shellcheck shell=bash

# Set by the caller: CD_ROOT (unpacked containerd .deb), SNAP_BIN.
W=""            # scratch directory (a tmpfs in this namespace)
SNAP_PID=""
CTD_PID=""
SNAP_SOCK=""
CTD_SOCK=""
MAP="0:100000:65536"

die() { echo "containerd-tests: $*" >&2; exit 1; }

# Mount a tmpfs over a new scratch dir and over /run (shim sockets and runc
# state go to /run/containerd whatever the config says); both vanish with
# the namespace.
setup_scratch() {
    [[ $(readlink /proc/self/ns/mnt) != "$(readlink /proc/1/ns/mnt)" ]] \
        || die "not in a private mount namespace"
    W=$1
    mount -t tmpfs -o mode=0755,size=6g idoverlay-ctd "$W"
    mount -t tmpfs -o mode=0755 idoverlay-run /run
    mkdir -p "$W"/{ctd,snap,logs,precious}
    SNAP_SOCK=$W/snap.sock
    CTD_SOCK=$W/ctd/containerd.sock
    export PATH="$CD_ROOT/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

write_config() {
    local caps=${1:-'"remap-ids"'}
    cat >"$W/config.toml" <<EOF
version = 2
root = "$W/ctd/root"
state = "$W/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$CTD_SOCK"

[ttrpc]
  address = "$CTD_SOCK.ttrpc"

# containerd 2.x imports and pulls through its transfer service, which
# unpacks only for the snapshotters listed here.
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "idoverlay"

[proxy_plugins.idoverlay]
  type = "snapshot"
  address = "$SNAP_SOCK"
  capabilities = [$caps]
EOF
}

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 300); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$what did not come up"
}

serving_count() { grep -c '^idoverlay-snapshotter: serving on' "$W/logs/snapshotter.log" 2>/dev/null || true; }

serving_more_than() { [[ $(serving_count) -gt $1 ]]; }

# Started when it says it serves (a killed one leaves its socket file).
start_snapshotter() {
    local before
    before=$(serving_count)
    "$SNAP_BIN" --root "$W/snap" --address "$SNAP_SOCK" -v >>"$W/logs/snapshotter.log" 2>&1 &
    SNAP_PID=$!
    wait_for "idoverlay-snapshotter" serving_more_than "${before:-0}"
}

start_containerd() {
    containerd --config "$W/config.toml" >>"$W/logs/containerd.log" 2>&1 &
    CTD_PID=$!
    wait_for containerd ctr version
}

# Stop a process we started, by its pid, and wait for it.
stop_pid() { # pid [signal]
    local pid=$1 sig=${2:-TERM}
    [[ -n $pid ]] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

ctr() { command ctr --address "$CTD_SOCK" "$@"; }

# Run a user-namespaced container on the idoverlay snapshotter.
urun() { # ctr-run-args... (image, id, command)
    ctr run --snapshotter idoverlay --uidmap "$MAP" --gidmap "$MAP" --remap-labels "$@"
}

# Path, files, owners, modes, sizes and content hashes of a tree: what
# "byte-identical" is checked against.
tree_sum() { # dir
    (cd "$1" && find . -printf '%p %y %U:%G %m %s %l\n' | LC_ALL=C sort
     find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) | sha256sum | cut -d' ' -f1
}

# The image's layers: every snapshot directory, taken right after import
# (before any container), with a sum of each.
layer_sums() {
    local d
    for d in "$W"/snap/snapshots/*; do
        echo "${d##*/} $(tree_sum "$d")"
    done
}

# Mount points under the snapshotter's root, as this namespace sees them.
mounts_under() { # dir
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

# Temporary mounts containerd makes to idmap: its idmapped layer clones
# (2.1.5+: /tmp/ovl-idmapped*, attached for the time of one overlay mount;
# 2.4: ROOT/tmpmounts) and any idmapped mount at all (per-mount option
# "idmapped"). Not counted: ctr's read-only temp mount of the finished
# rootfs (/tmp/containerd-mount*) to read /etc/group, which it makes for
# every container whatever the snapshotter, and which idmaps nothing.
temp_or_idmapped_mounts() {
    awk -v d="$W/ctd/root/tmpmounts" '
        $6 ~ /idmapped/ || index($5, d) == 1 || $5 ~ "^/tmp/ovl-idmapped" { print $5, $6 }
    ' /proc/self/mountinfo
}

# The idoverlay snapshot id of a container's snapshot (from its bind mount).
snapshot_id() { # key
    ctr snapshots --snapshotter idoverlay mounts /x "$1" | grep -o "$W/snap/mounts/[0-9]*" | head -1 | sed 's#.*/##'
}

# The snapshotter's consistency report (the snapshotter must be stopped).
check_store() {
    "$SNAP_BIN" --root "$W/snap" check
}

# Waits (up to 20 s) until a shell condition holds; containerd removes a
# snapshot from its backend in its garbage collection, a moment after the
# container is gone. Not a timing assertion: what is checked comes after.
wait_until() { # condition
    local _
    for _ in $(seq 1 400); do
        eval "$1" && return 0
        sleep 0.05
    done
    return 1
}

# Only the image's two layers left in the snapshotter's directories.
only_layers_left() { [[ $(ls "$W/snap/snapshots" | tr '\n' ' ')$(ls "$W/snap/mounts") == "1 2 " ]]; }
