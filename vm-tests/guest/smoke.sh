#!/bin/sh
# shellcheck disable=SC2034,SC2154 # R_<name>/O_<name> are set through eval in check()
# Smoke test run inside the guest as /guest-test.sh (busybox sh).
#
# Proves the VM plumbing works on a kernel before the real idoverlay tests
# depend on it: right kernel booted, modules loaded, the ext4 test disk and a
# tmpfs mounted, a classic overlay over ext4 layers mounts and behaves
# (shadowing, whiteout, opaque dir, copy-up), the on-disk owners match the
# host's manifest. Prints one JSON object on stdout; diagnostics go to
# stderr. Exits non-zero if any check failed.
#
# Environment (set by /init): IDO_KREL IDO_SERIES IDO_PKG_VERSION IDO_DISK
# IDO_TMPFS IDO_LAYERS IDO_BINARY MODULES_LOADED MODULES_FAILED

# JSON string from $1 (quotes, backslashes, tabs, newlines escaped).
json_str() {
    printf '%s' "$1" | awk 'BEGIN { ORS = ""; printf "\"" }
        { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "")
          if (NR > 1) printf "\\n"; printf "%s", $0 }
        END { printf "\"" }'
}
json_bool() { if [ "$1" = 0 ]; then echo true; else echo false; fi; }
# JSON array of strings from whitespace-separated words
json_words() {
    first=1; printf '['
    for w in $1; do
        [ $first = 1 ] || printf ', '
        first=0; json_str "$w"
    done
    printf ']'
}

FAILED=""
# check NAME COMMAND...: run, remember pass/fail, keep its output
check() {
    name=$1; shift
    if out=$("$@" 2>&1); then
        rc=0
    else
        rc=$?; FAILED="$FAILED $name"; echo "smoke: $name failed: $out" >&2
    fi
    eval "R_$name=\$rc; O_$name=\$out"   # R_<name>: exit code, O_<name>: output
}

mounted() { grep -q " $1 $2 " /proc/mounts; }

check_kernel() { [ "$(uname -r)" = "$IDO_KREL" ]; }

check_overlay_module() {
    grep -qw overlay /proc/filesystems || { echo "overlay not in /proc/filesystems"; return 1; }
}

check_disk() { mounted "$IDO_DISK" ext4 && [ -d "$IDO_LAYERS/l1" ]; }

check_tmpfs() {
    mounted "$IDO_TMPFS" tmpfs || { echo "no tmpfs at $IDO_TMPFS"; return 1; }
    echo ok >"$IDO_TMPFS/probe" && [ "$(cat "$IDO_TMPFS/probe")" = ok ] && rm "$IDO_TMPFS/probe"
}

# The disk's owners/modes as the guest sees them == as the host wrote them.
check_manifest() {
    (cd "$IDO_DISK" && find layers -mindepth 1 -exec stat -c '%u %g %f %n' {} + | LC_ALL=C sort) >/tmp/manifest.guest
    diff "$IDO_DISK/layers.manifest" /tmp/manifest.guest
}

# overlay_check UPPER_BASE: mount l3:l2:l1 with upper/work under UPPER_BASE,
# verify the merged view and a copy-up, unmount.
overlay_check() {
    base=$1
    mkdir -p "$base/upper" "$base/work" "$base/merged" || return 1
    L=$IDO_LAYERS
    mount -t overlay overlay \
        -o "lowerdir=$L/l3:$L/l2:$L/l1,upperdir=$base/upper,workdir=$base/work" "$base/merged" ||
        return 1
    m=$base/merged
    r=0
    [ "$(cat "$m/shared.txt")" = l2 ] || { echo "shared.txt: want l2, got $(cat "$m/shared.txt")"; r=1; }
    [ ! -e "$m/gone.txt" ] || { echo "gone.txt visible through whiteout"; r=1; }
    [ ! -e "$m/opaque/hidden.txt" ] || { echo "opaque dir not opaque"; r=1; }
    [ "$(cat "$m/opaque/visible.txt")" = l2 ] || { echo "opaque/visible.txt missing"; r=1; }
    if [ "$(cat "$m/l3.txt")" != l3 ] || [ "$(cat "$m/etc/os-release")" != l1 ]; then echo "layer files missing"; r=1; fi
    [ "$(stat -c '%u:%g' "$m/home/user/notes.txt")" = 1000:1000 ] || { echo "notes.txt owner $(stat -c '%u:%g' "$m/home/user/notes.txt")"; r=1; }
    if [ ! -p "$m/fifo" ] || [ ! -L "$m/link" ]; then echo "fifo/symlink lost"; r=1; fi
    echo changed >>"$m/shared.txt" || r=1
    [ "$(stat -c '%u:%g' "$base/upper/shared.txt" 2>/dev/null)" = 1000:1000 ] || { echo "copy-up did not keep owner 1000"; r=1; }
    [ "$(cat "$L/l2/shared.txt")" = l2 ] || { echo "copy-up wrote to the lower layer!"; r=1; }
    umount "$m" || r=1
    return $r
}

check_overlay_ext4_upper() { overlay_check "$IDO_DISK/ovl"; }
check_overlay_tmpfs_upper() { overlay_check "$IDO_TMPFS/ovl"; }

check kernel check_kernel
check overlay_module check_overlay_module
check disk check_disk
check tmpfs check_tmpfs
check manifest check_manifest
check overlay_ext4_upper check_overlay_ext4_upper
check overlay_tmpfs_upper check_overlay_tmpfs_upper

binary_version=""
if [ -n "$IDO_BINARY" ]; then
    binary_version=$("$IDO_BINARY" --version 2>&1 | head -1)
fi

cat <<EOF
{
  "test": "smoke",
  "kernel": $(json_str "$(uname -r)"),
  "expected_kernel": $(json_str "$IDO_KREL"),
  "series": $(json_str "$IDO_SERIES"),
  "package_version": $(json_str "$IDO_PKG_VERSION"),
  "uname": $(json_str "$(uname -a)"),
  "modules_loaded": $(json_words "$MODULES_LOADED"),
  "modules_failed": $(json_words "$MODULES_FAILED"),
  "overlay_in_proc_filesystems": $(json_bool "$R_overlay_module"),
  "overlay_module_loaded": $(if [ -d /sys/module/overlay ]; then echo true; else echo false; fi),
  "overlay_builtin": $(if [ -d /sys/module/overlay ] && ! grep -q '^overlay ' /proc/modules; then echo true; else echo false; fi),
  "disk_mounted": $(json_bool "$R_disk"),
  "tmpfs_mounted": $(json_bool "$R_tmpfs"),
  "manifest_matches": $(json_bool "$R_manifest"),
  "manifest_diff": $(json_str "$O_manifest"),
  "overlay_ext4_upper": $(json_bool "$R_overlay_ext4_upper"),
  "overlay_ext4_upper_error": $(json_str "$O_overlay_ext4_upper"),
  "overlay_tmpfs_upper": $(json_bool "$R_overlay_tmpfs_upper"),
  "overlay_tmpfs_upper_error": $(json_str "$O_overlay_tmpfs_upper"),
  "ls_ln_layer_l1": $(json_str "$(ls -lnR "$IDO_LAYERS/l1" 2>&1)"),
  "binary": $(json_str "$IDO_BINARY"),
  "binary_version": $(json_str "$binary_version"),
  "failed": $(json_words "$FAILED")
}
EOF

[ -z "$FAILED" ]
