/* The least a mount tool can be: one mount(2) or one umount2(2), nothing
 * else (no parsing, no mount table, no locale). The yardstick for the
 * command line's own overhead in the host-mounts section of the bench.
 *
 *   minimal mount TARGET DATA     mount("overlay", TARGET, "overlay", 0, DATA)
 *   minimal umount TARGET         umount2(TARGET, 0)
 */
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "mount") == 0)
        return mount("overlay", argv[2], "overlay", 0, argv[3]) ? (perror("mount"), 1) : 0;
    if (argc == 3 && strcmp(argv[1], "umount") == 0)
        return umount2(argv[2], 0) ? (perror("umount2"), 1) : 0;
    fprintf(stderr, "usage: minimal mount TARGET DATA | minimal umount TARGET\n");
    return 2;
}
