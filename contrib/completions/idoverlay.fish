# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_idoverlay_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_idoverlay_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_idoverlay_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_idoverlay_using_subcommand
    set -l cmd (__fish_idoverlay_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c idoverlay -n "__fish_idoverlay_needs_command" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -s V -l version -d 'Print version'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "mount" -d 'Assemble an idmapped overlay and attach it at TARGET'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "umount" -d 'Unmount an overlay mounted at TARGET'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "show" -d 'What the idoverlay mount at TARGET is made of: layers, upper, work, maps'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "list" -d 'Every idoverlay mount of this mount namespace'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "gc" -d 'Finish the cleanup of interrupted host-staged runs'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "probe" -d 'Tell what this kernel can do for idmapped overlays, by asking it'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "demo" -d 'Build sample layers in a fresh private directory, mount them idmapped, show the owners on disk and through the mount, clean up'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "install-helper" -d 'Link this installed binary as the mount helper /sbin/mount.idoverlay, so that `mount -t idoverlay`, fstab lines and systemd .mount units work'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "manpages" -d 'Write the man pages (idoverlay.1, idoverlay-mount.1, …) into DIR'
complete -c idoverlay -n "__fish_idoverlay_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l lower -d 'A lower layer; repeat it, top-most first (like overlay\'s lowerdir=)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l data-lower -d 'A data-only lower layer (datadir+, kernel 6.7+); repeat as needed' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l upper -d 'The upper layer, where writes land (needs --work)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l work -d 'The work directory: empty, on the same mount as --upper' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l uidmap -d 'uid map: CONTAINER:HOST:SIZE ranges separated by commas (on-disk id CONTAINER shows as HOST), e.g. 0:100000:65536' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l gidmap -d 'gid map, same syntax as --uidmap' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l userns -d 'Take the maps from a user namespace: a file such as /proc/PID/ns/user, or a PID' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l oci-config -d 'Take the maps from an OCI runtime config (linux.uidMappings/gidMappings)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -s o -l options -d 'Mount options, comma separated: overlay parameters (index=off, redirect_dir=on, metacopy=on, userxattr, xino=auto, volatile, …), mount flags (ro, nosuid, nodev, noexec, noatime, …), and in the mount(8) form lowerdir=, upperdir=, workdir=, uidmap=, gidmap=, X-mount.idmap=' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -s t -l type -d 'Filesystem type, for the mount(8) form: overlay (or idoverlay)' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l strategy -d 'How to assemble: auto, detached, private-ns or host-staged' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l state-dir -d 'idoverlay\'s own directory: host-staged\'s staging and the probe report of this boot (root-owned 0700; default /run/idoverlay)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l probe-report -d 'Use a report saved by `idoverlay probe --json` (same kernel) instead of the one kept in the state dir for this boot' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -s N -l namespace -d 'Attach the overlay inside this mount namespace (/proc/PID/ns/mnt)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l pretend-missing -d 'Treat a kernel feature as missing, to force an older kernel\'s code path (for testing fallbacks); see `idoverlay probe` for the names' -r
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l idmap-upper -d 'Idmap the upper and work dirs too, so writes land in container ids on disk'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l chown-upper -d 'Give an empty upper\'s root to container root first (its host ids, or 0:0 with --idmap-upper), as containerd does; else a root-owned upper shows as nobody in the container'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l read-only -d 'Mount read-only'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -l json -d 'Print the result (or the error) as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand mount" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand umount" -l state-dir -d 'idoverlay\'s own directory: the records of its mounts, host-staged\'s staging and the probe report of this boot' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand umount" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand umount" -s l -l lazy -d 'Detach now even if busy; the kernel frees it when the last user goes'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand umount" -l json -d 'Print the result (or the error) as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand umount" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand show" -l state-dir -d 'idoverlay\'s own directory: the records of its mounts, host-staged\'s staging and the probe report of this boot' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand show" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand show" -l json -d 'Print the mount as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand show" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand list" -l state-dir -d 'idoverlay\'s own directory: the records of its mounts, host-staged\'s staging and the probe report of this boot' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand list" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand list" -l json -d 'Print `{"mounts": [...]}` on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand list" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand gc" -l state-dir -d 'idoverlay\'s own directory: the records of its mounts, host-staged\'s staging and the probe report of this boot' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand gc" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand gc" -l json -d 'Print the report as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand gc" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand probe" -l path -d 'Also check whether this directory\'s filesystem takes idmapped mounts (it is only cloned, never written); repeat as needed' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand probe" -l state-dir -d 'Where the report is kept for this boot, for the filesystems of the --path directories (default /run/idoverlay)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand probe" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand probe" -l json -d 'Print one JSON object (schema in docs/cli.md)'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand probe" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand demo" -l base -d 'Where to create the demo\'s private directory (default: $TMPDIR or /tmp)' -r -F
complete -c idoverlay -n "__fish_idoverlay_using_subcommand demo" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand demo" -l json -d 'Print the result as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand demo" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand install-helper" -l dir -d 'Where to put mount.idoverlay: one of the directories util-linux\'s mount(8) searches, /sbin, /sbin/fs.d or /sbin/fs (it must exist; /usr/sbin where /sbin links to it). Anything else is refused: mount(8) would report an unknown filesystem type' -r -f -a "/sbin\t''
/sbin/fs.d\t''
/sbin/fs\t''"
complete -c idoverlay -n "__fish_idoverlay_using_subcommand install-helper" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand install-helper" -l json -d 'Print the result as JSON on stdout'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand install-helper" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand completions" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand completions" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand manpages" -s v -l verbose -d 'Log each step (strategy, layer groups, syscalls) to stderr'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand manpages" -s h -l help -d 'Print help'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "mount" -d 'Assemble an idmapped overlay and attach it at TARGET'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "umount" -d 'Unmount an overlay mounted at TARGET'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "show" -d 'What the idoverlay mount at TARGET is made of: layers, upper, work, maps'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "list" -d 'Every idoverlay mount of this mount namespace'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "gc" -d 'Finish the cleanup of interrupted host-staged runs'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "probe" -d 'Tell what this kernel can do for idmapped overlays, by asking it'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "demo" -d 'Build sample layers in a fresh private directory, mount them idmapped, show the owners on disk and through the mount, clean up'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "install-helper" -d 'Link this installed binary as the mount helper /sbin/mount.idoverlay, so that `mount -t idoverlay`, fstab lines and systemd .mount units work'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "manpages" -d 'Write the man pages (idoverlay.1, idoverlay-mount.1, …) into DIR'
complete -c idoverlay -n "__fish_idoverlay_using_subcommand help; and not __fish_seen_subcommand_from mount umount show list gc probe demo install-helper completions manpages help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
