/* A stand-in for SQLite's file-identity check (os_unix.c, unixFileHasMoved): keep a file open,
 * remember its inode number, and before every write compare it with stat(path) and fstat(fd).
 * While they match, append the next number to the file and publish "ok N INO" in the status
 * file; once they differ, publish "moved N CACHED PATH FD" and write nothing more (SQLite
 * answers SQLITE_READONLY_DBMOVED: "attempt to write a readonly database").
 *
 * usage: inodecheck DB STATUS [INTERVAL_MS]     (static: it runs in a busybox rootfs)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void publish(const char *status, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", status);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    if (write(fd, text, strlen(text)) < 0) {
        /* nothing better to do: the next round tries again */
    }
    close(fd);
    rename(tmp, status);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: inodecheck DB STATUS [INTERVAL_MS]\n");
        return 2;
    }
    const char *db = argv[1], *status = argv[2];
    long interval_ms = argc > 3 ? atol(argv[3]) : 20;
    int fd = open(db, O_RDWR | O_CREAT | O_APPEND, 0644);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    struct stat first;
    if (fstat(fd, &first) != 0) {
        perror("fstat");
        return 1;
    }
    struct timespec interval = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    unsigned long n = 0;
    char line[256];
    for (;;) {
        struct stat by_path, by_fd;
        int ok = stat(db, &by_path) == 0 && fstat(fd, &by_fd) == 0 &&
                 by_path.st_ino == first.st_ino && by_fd.st_ino == first.st_ino;
        if (!ok) {
            snprintf(line, sizeof(line), "moved %lu %lu %lu %lu\n", n, (unsigned long)first.st_ino,
                     (unsigned long)by_path.st_ino, (unsigned long)by_fd.st_ino);
            publish(status, line);
            for (;;)
                pause();
        }
        n++;
        int len = snprintf(line, sizeof(line), "%lu\n", n);
        if (write(fd, line, len) != len) {
            perror("write");
            return 1;
        }
        snprintf(line, sizeof(line), "ok %lu %lu\n", n, (unsigned long)first.st_ino);
        publish(status, line);
        nanosleep(&interval, NULL);
    }
}
