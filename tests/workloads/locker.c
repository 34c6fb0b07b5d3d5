/* Holds a POSIX record lock (fcntl F_SETLKW, the kind SQLite takes) on /tmp/db.lock for good,
 * and counts in /tmp/cnt every 20 ms: a stand-in for a database writer caught mid-transaction. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    int fd = open("/tmp/db.lock", O_RDWR | O_CREAT, 0644);
    if (fd < 0) { perror("open /tmp/db.lock"); return 1; }
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
    if (fcntl(fd, F_SETLKW, &fl) < 0) { perror("fcntl F_SETLKW"); return 1; }
    for (unsigned long i = 1;; i++) {
        FILE *f = fopen("/tmp/cnt", "w");
        if (f) { fprintf(f, "%lu\n", i); fclose(f); }
        usleep(20000);
    }
}
