#!/bin/sh
# The idoverlay scenarios, run inside a guest kernel by vm-tests/run
# (busybox sh, as root). Prints one JSON object on stdout; exits non-zero
# when a scenario failed.
#
# 1. `idoverlay probe --json` with the ext4 test disk and a tmpfs as --path.
# 2. For every strategy (auto, detached, private-ns, host-staged) and both
#    filesystems: when the probe says the kernel can do it, mount the three
#    test layers with an upper and work dir and check ownership through the
#    mount, the merged view (whiteout, opaque dir, shadowing), a write into
#    upper, no temporary (idmapped) mount in the guest's mountinfo during
#    the mount (except host-staged's own staging) or after umount, and the
#    layer tree unchanged (hash of every path, owner, mode, size, type,
#    symlink target and content, before and after). When the probe says it
#    cannot, the mount must be refused with its one clear line.
# 3. 100 layers on ext4 with the best strategy (on kernels without lowerdir+
#    this exercises the one-string lowerdir= through mount(2)).
set -u

B=${IDO_BINARY:-/bin/idoverlay}
MAP=0:100000:65536
PASSED=0
FAILED=0
SCENARIOS=""
log() { echo "guest: $*" >&2; }

# JSON string escaping for busybox sh: backslash, quote, control chars.
js() {
    printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | awk 'BEGIN{ORS=""} NR>1{print "\\n"} {print}'
}

record() { # name strategy fs expect result detail
    [ "$5" = fail ] && FAILED=$((FAILED + 1)) || PASSED=$((PASSED + 1))
    log "$1: $5 ($6)"
    entry="{\"name\":\"$(js "$1")\",\"strategy\":\"$2\",\"fs\":\"$3\",\"expect\":\"$4\",\"result\":\"$5\",\"detail\":\"$(js "$6")\"}"
    if [ -z "$SCENARIOS" ]; then SCENARIOS=$entry; else SCENARIOS="$SCENARIOS,$entry"; fi
}

# Whether the probe observed a feature.
observed() { grep -o "\"$1\":{[^}]*}" /tmp/probe.json | grep -q '"observed":true'; }
unprobed() { grep -o "\"$1\":{[^}]*}" /tmp/probe.json | grep -q '"observed":null'; }
# Whether the probe found that a --path (by index) takes idmapped mounts.
# (serde_json sorts keys: each entry of "paths" is {"errno":…,"idmap":…,…}.)
path_idmap() {
    sed -e 's/.*"paths":\[//' -e 's/\],"reason".*//' /tmp/probe.json |
        awk -v want="$1" '{ split($0, parts, /\},\{/); print parts[want + 1] }' | grep -q '"idmap":true'
}

# A fingerprint of a tree: every path with owner, mode, size, type, device
# number, symlink target and content hash.
tree_hash() {
    (cd "$1" && find . | sort | while read -r p; do
        stat -c '%n %u %g %a %s %F %t:%T' "$p"
        [ -L "$p" ] && readlink "$p"
        [ -f "$p" ] && [ ! -L "$p" ] && md5sum <"$p"
    done) | md5sum | cut -d' ' -f1
}

# Mount entries that are temporary idmapped clones (not the final overlay).
idmapped_mounts() { grep -c ' idmapped' /proc/self/mountinfo || true; }
# idoverlay's state tmpfs and the staging namespace kept in it (per boot)
# are not counted.
mount_count() { grep -v 'idoverlay-state' /proc/self/mountinfo | grep -vc ' /run/idoverlay/staging-ns '; }

# Layers on tmpfs, as simple as possible (tmpfs idmaps only from 6.3).
mkdir -p "$IDO_TMPFS/layers/t1/home/user" "$IDO_TMPFS/layers/t2" "$IDO_TMPFS/layers/t3"
echo t1 >"$IDO_TMPFS/layers/t1/etc-file"
echo user >"$IDO_TMPFS/layers/t1/home/user/notes.txt"
chown -R 1000:1000 "$IDO_TMPFS/layers/t1/home/user"
echo t2 >"$IDO_TMPFS/layers/t2/shared.txt"
echo t3 >"$IDO_TMPFS/layers/t3/shared.txt"
mkdir -p /run && chmod 0755 /run

"$B" probe --json --path "$IDO_LAYERS/l1" --path "$IDO_TMPFS/layers" >/tmp/probe.json 2>/tmp/probe.err
probe_rc=$?
[ -s /tmp/probe.json ] || echo 'null' >/tmp/probe.json
log "probe rc=$probe_rc: $(cat /tmp/probe.json)"
AUTO=$(grep -o '"strategy":"[a-z-]*"' /tmp/probe.json | head -n1 | cut -d'"' -f4)

can() { # strategy fs -> 0 when the probe says this should work
    case $2 in
        ext4) path_idmap 0 || return 1 ;;
        tmpfs) path_idmap 1 || return 1 ;;
    esac
    case $1 in
        auto) [ -n "$AUTO" ] ;;
        detached) observed overlay_detached_layers ;;
        # Where detached layers work the probe unshares nothing (it would copy
        # the whole mount table): private_mount_ns is then not probed.
        private-ns) { observed private_mount_ns || { unprobed private_mount_ns && observed overlay_detached_layers; }; } &&
            observed overlay_idmapped_layers ;;
        host-staged) observed overlay_idmapped_layers ;;
    esac
}

# The one line a refused mount must print, by reason: a kernel with
# mount_setattr whose filesystem refuses idmaps names the filesystem; any
# other refusal names the kernel version needed.
refusal_phrase() { # strategy fs
    if grep -o '"mount_setattr_idmap":{[^}]*}' /tmp/probe.json | grep -q '"errno":"ENOSYS"'; then
        echo "needs kernel"; return
    fi
    case $2 in
        ext4) path_idmap 0 || { echo "does not take idmapped mounts"; return; } ;;
        tmpfs) path_idmap 1 || { echo "does not take idmapped mounts"; return; } ;;
    esac
    echo "needs kernel"
}

scenario() { # strategy fs
    s=$1 fs=$2 name="$1/$2"
    if [ "$fs" = ext4 ]; then
        root=$IDO_LAYERS l3=$IDO_LAYERS/l3 l2=$IDO_LAYERS/l2 l1=$IDO_LAYERS/l1 base=$IDO_DISK
    else
        root=$IDO_TMPFS/layers l3=$root/t3 l2=$root/t2 l1=$root/t1 base=$IDO_TMPFS
    fi
    c=$base/c-$s
    mkdir -p "$c/upper" "$c/work" "/tmp/m-$s-$fs"
    target=/tmp/m-$s-$fs
    hash_before=$(tree_hash "$root")
    mounts_before=$(mount_count)
    # Watch the mount table while idoverlay runs.
    : >/tmp/seen
    touch /tmp/watching
    (while [ -f /tmp/watching ]; do grep ' idmapped' /proc/self/mountinfo >>/tmp/seen; done) &
    watcher=$!
    "$B" mount --strategy "$s" --lower "$l3" --lower "$l2" --lower "$l1" \
        --upper "$c/upper" --work "$c/work" --uidmap "$MAP" --gidmap "$MAP" "$target" 2>/tmp/err
    rc=$?
    rm -f /tmp/watching
    wait "$watcher" 2>/dev/null
    err=$(cat /tmp/err)
    if can "$s" "$fs"; then
        expect=works
        if [ $rc -ne 0 ]; then record "$name" "$s" "$fs" $expect fail "mount failed: $err"; return; fi
        problems=""
        check() { [ "$1" = "$2" ] || problems="$problems $3: got '$1' want '$2';"; }
        if [ "$fs" = ext4 ]; then
            check "$(stat -c %u:%g "$target/etc/os-release")" 100000:100000 os-release-owner
            check "$(stat -c %u:%g "$target/home/user/notes.txt")" 101000:101000 notes-owner
            check "$(stat -c %u:%g "$target/fifo")" 101000:101000 fifo-owner
            check "$(cat "$target/shared.txt")" l2 shadowing
            check "$(test -e "$target/gone.txt" && echo present || echo absent)" absent whiteout
            check "$(test -e "$target/opaque/hidden.txt" && echo present || echo absent)" absent opaque
            check "$(cat "$target/opaque/visible.txt")" l2 opaque-visible
            check "$(readlink "$target/link")" etc/os-release symlink
        else
            check "$(stat -c %u:%g "$target/etc-file")" 100000:100000 file-owner
            check "$(stat -c %u:%g "$target/home/user/notes.txt")" 101000:101000 notes-owner
            check "$(cat "$target/shared.txt")" t3 shadowing
        fi
        echo written >"$target/new.txt" 2>/dev/null
        check "$(cat "$c/upper/new.txt" 2>/dev/null)" written upper-write
        during=$(sort -u /tmp/seen | grep -vc '/run/idoverlay/' || true)
        check "$during" 0 temporary-mounts-during
        check "$(idmapped_mounts)" 0 idmapped-mounts-while-mounted
        # What the mount is made of, from its record (mountinfo's id before 6.8).
        shown=$("$B" show --json "$target" 2>&1)
        check "$(printf '%s' "$shown" | grep -o '"upper":"[^"]*"')" "\"upper\":\"$(realpath "$c/upper")\"" show-upper
        check "$(printf '%s' "$shown" | grep -o '"layers":\["[^"]*"')" "\"layers\":[\"$(realpath "$l3")\"" show-top-layer
        "$B" umount "$target" 2>/tmp/err || problems="$problems umount: $(cat /tmp/err);"
        check "$(ls -A /run/idoverlay/mounts 2>/dev/null | wc -l)" 0 record-after-umount
        check "$(mount_count)" "$mounts_before" mounts-after
        check "$(idmapped_mounts)" 0 idmapped-mounts-after
        # Nothing left but what idoverlay keeps for the boot in its state
        # tmpfs: the marker, the probe report, private-ns' staging namespace.
        check "$(ls -A /run/idoverlay 2>/dev/null | grep -vxEc '\.idoverlay-state|probe|staging-ns|mounts')" 0 staging-left
        check "$(tree_hash "$root")" "$hash_before" layers-unchanged
        if [ -z "$problems" ]; then record "$name" "$s" "$fs" $expect pass "ok"; else record "$name" "$s" "$fs" $expect fail "$problems"; fi
    else
        expect=refused
        phrase=$(refusal_phrase "$s" "$fs")
        if [ $rc -eq 0 ]; then
            "$B" umount "$target" 2>/dev/null
            record "$name" "$s" "$fs" $expect fail "mounted although the probe says it cannot"
        elif [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then
            record "$name" "$s" "$fs" $expect fail "refusal not one line: $err"
        elif ! printf '%s' "$err" | grep -q "$phrase"; then
            record "$name" "$s" "$fs" $expect fail "refusal lacks '$phrase': $err"
        elif [ "$(mount_count)" != "$mounts_before" ] || [ "$(tree_hash "$root")" != "$hash_before" ]; then
            record "$name" "$s" "$fs" $expect fail "refusal changed mounts or layers"
        else
            record "$name" "$s" "$fs" $expect refused "$err"
        fi
    fi
}

for s in auto detached private-ns host-staged; do
    for fs in ext4 tmpfs; do
        scenario "$s" "$fs"
    done
done

# private-ns where the root is not the initramfs (as on an installed
# system; this guest's own root is the initramfs, which pivot_root cannot
# leave, so the scenarios above stage in a copy of the namespace per
# assembly): its staging namespace is made once, kept for the boot in the
# state dir, and entered by the next process instead of copying the table.
if can private-ns ext4; then
    # Runs inside the new root.
    cat >/tmp/staging-inner.sh <<EOF_INNER
export PATH=/bin
L=/disk/layers
mkdir -p /disk/c-staging/upper /disk/c-staging/work /tmp/t
for i in 1 2; do
    idoverlay mount --strategy private-ns --lower \$L/l3 --lower \$L/l2 --lower \$L/l1 \\
        --upper /disk/c-staging/upper --work /disk/c-staging/work \\
        --uidmap $MAP --gidmap $MAP /tmp/t || exit 1
    echo "owner\$i \$(stat -c %u:%g /tmp/t/home/user/notes.txt)"
    echo "ns\$i \$(stat -c %i /run/idoverlay/staging-ns)"
    idoverlay umount /tmp/t
done
EOF_INNER
    out=$(IDO_B=$B IDO_D=$IDO_DISK unshare -m /bin/sh -c '
        set -e
        mount --make-rprivate /
        nr=/tmp/newroot
        mkdir -p $nr
        mount -t tmpfs newroot $nr
        mkdir -p $nr/bin $nr/proc $nr/dev $nr/tmp $nr/run $nr/disk
        cp /bin/busybox $nr/bin/
        cp "$IDO_B" $nr/bin/idoverlay
        cp /tmp/staging-inner.sh $nr/inner.sh
        for a in sh stat cat ls mkdir; do ln -s busybox $nr/bin/$a; done
        mount --rbind "$IDO_D" $nr/disk
        mount -t proc proc $nr/proc
        # As switch_root does (pivot_root cannot leave the initramfs): the
        # new root moved over /, then entered with chroot.
        cd $nr
        mount --move . /
        exec chroot . /bin/sh /inner.sh
    ' 2>&1)
    o1=$(printf '%s\n' "$out" | sed -n 's/^owner1 //p')
    o2=$(printf '%s\n' "$out" | sed -n 's/^owner2 //p')
    n1=$(printf '%s\n' "$out" | sed -n 's/^ns1 //p')
    n2=$(printf '%s\n' "$out" | sed -n 's/^ns2 //p')
    if [ "$o1" = 101000:101000 ] && [ "$o2" = 101000:101000 ] && [ -n "$n1" ] && [ "$n1" = "$n2" ]; then
        record "staging-ns/ext4" private-ns ext4 works pass "staging namespace kept for the boot and entered again"
    else
        record "staging-ns/ext4" private-ns ext4 works fail "$(printf '%s' "$out" | tail -n 3)"
    fi
fi

# Many layers on ext4 with whatever auto chooses.
if can auto ext4; then
    n=0 args=""
    while [ $n -lt 100 ]; do
        mkdir -p "$IDO_DISK/many/$n" && echo "$n" >"$IDO_DISK/many/$n/f$n" && chown 1000:1000 "$IDO_DISK/many/$n/f$n"
        args="$args --lower $IDO_DISK/many/$n"
        n=$((n + 1))
    done
    mkdir -p /tmp/many
    # shellcheck disable=SC2086
    if "$B" -v mount $args --uidmap "$MAP" --gidmap "$MAP" /tmp/many 2>/tmp/err; then
        how=$(sed -n 's/.*\(overlay from .*\)/\1/p' /tmp/err | head -n1)
        got="$(stat -c %u:%g /tmp/many/f99) $(ls /tmp/many | wc -l)"
        "$B" umount /tmp/many
        if [ "$got" = "101000:101000 100" ]; then
            record "many/ext4" "$AUTO" ext4 works pass "100 layers (${how:-layer fds})"
        else
            record "many/ext4" "$AUTO" ext4 works fail "got $got"
        fi
    else
        record "many/ext4" "$AUTO" ext4 works fail "$(tail -n1 /tmp/err)"
    fi
fi

printf '{"kernel":"%s","series":"%s","package":"%s","probe":%s,"scenarios":[%s],"passed":%d,"failed":%d}\n' \
    "$(uname -r)" "$IDO_SERIES" "$IDO_PKG_VERSION" "$(cat /tmp/probe.json)" "$SCENARIOS" "$PASSED" "$FAILED"
[ "$FAILED" -eq 0 ]
