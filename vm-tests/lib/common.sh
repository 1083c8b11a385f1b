# shellcheck shell=bash
# Shared helpers for the vm-tests scripts. Sourced, never executed.
#
# Every path the scripts write to is derived from here, so that "what does
# this create?" has one answer: $CACHE_DIR (downloads, private apt state,
# build products) and $RESULTS_DIR (console logs, JSON results). Both are
# git-ignored (see vm-tests/.gitignore).

VM_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${IDO_VM_CACHE:-$VM_TESTS_DIR/.cache}
RESULTS_DIR=${IDO_VM_RESULTS:-$VM_TESTS_DIR/results}

# Debian's cloud flavour: the smallest amd64 kernel that still has virtio,
# ext4 and overlayfs, which is all a test guest needs.
KERNEL_FLAVOUR=${IDO_VM_FLAVOUR:-cloud-amd64}

log()  { printf '[vm-tests %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { log "warning: $*"; }
die()  { log "error: $*"; exit 1; }

# Wall-clock helpers for the timing report: t0=$(now); ...; elapsed "$t0".
now()     { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, builds device nodes, mounts nothing on the host)"
}

need_cmds() {
    local c missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [[ ${#missing[@]} -eq 0 ]] || die "missing commands: ${missing[*]} (run vm-tests/run once without --no-install to install them)"
}

# Append "step<TAB>target<TAB>seconds" to the run's timing table, when the
# caller (vm-tests/run) asked for one by exporting IDO_VM_TIMINGS.
record_timing() {
    [[ -n ${IDO_VM_TIMINGS:-} ]] || return 0
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$IDO_VM_TIMINGS"
}
