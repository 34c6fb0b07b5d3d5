/* scprobe: which syscalls the calling process may make; one line of name=verdict words.
 *
 * seccomp=N filters=M     from /proc/self/status (the filter mode and how many filters)
 * userfaultfd=ok|ERRNO    userfaultfd(UFFD_USER_MODE_ONLY): allowed to anyone by the kernel,
 *                         denied (EPERM) by the default container profile
 * mkdir=ok|ERRNO          mkdir + rmdir of /tmp/scprobe.d (a custom profile may deny it)
 *
 * Static, so it runs in a busybox image. Used by tests/integration/test_container_seccomp.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define UFFD_USER_MODE_ONLY 1

static const char *verdict(long rc) {
    static char buf[32];
    if (rc >= 0)
        return "ok";
    switch (errno) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EACCES: return "EACCES";
    case EINVAL: return "EINVAL";
    default: snprintf(buf, sizeof buf, "E%d", errno); return buf;
    }
}

static void status_line(void) {
    char line[256];
    int mode = -1, filters = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        sscanf(line, "Seccomp: %d", &mode);
        sscanf(line, "Seccomp_filters: %d", &filters);
    }
    if (f)
        fclose(f);
    printf("seccomp=%d filters=%d", mode, filters);
}

int main(void) {
    status_line();
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    printf(" userfaultfd=%s", verdict(fd));
    if (fd >= 0)
        close((int)fd);
    long rc = syscall(SYS_mkdir, "/tmp/scprobe.d", 0700);
    printf(" mkdir=%s\n", verdict(rc));
    if (rc == 0)
        rmdir("/tmp/scprobe.d");
    return 0;
}
