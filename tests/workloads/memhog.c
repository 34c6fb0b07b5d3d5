/*
 * memhog: a checkpoint/restore workload with memory that cannot be regenerated.
 *
 * usage: memhog SIZE_MIB OUT_FILE [TEXT_PERCENT]
 * Fills SIZE_MIB of anonymous memory with bytes from /dev/urandom (so a restored process cannot
 * fake its data by recomputing it), then loops forever. With TEXT_PERCENT (0-100) that share of
 * the buffer is text instead: words picked by random bytes, so it still cannot be recomputed but
 * compresses like prose (benchmarks of compressed transfers: 50 gives 1.7x with zstd -1). On SIGUSR1 it writes
 * "<fnv1a-64 of the whole buffer in hex> <counter>\n" to OUT_FILE (truncating it), where counter
 * increments every 10 ms. Tests compare the checksum before checkpoint and after restore.
 * Built statically by the tests so it runs inside a busybox rootfs.
 * With MEMHOG_RESERVE_GIB=N in its environment it also reserves N GiB of address space first
 * (PROT_NONE, private anonymous, no page touched), as mariadb and JVMs do: CRIU 4.1.1's lazy
 * restore maps such a reservation writable (accounted) and fails where RAM is smaller than it.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t want_report;
static void on_usr1(int sig) { (void)sig; want_report = 1; }

static const char *const WORDS[16] = {
    "the ", "container ", "moves ", "between ", "hosts ", "without ", "losing ", "state ",
    "memory ", "pages ", "arrive ", "while ", "clients ", "keep ", "their ", "connections\n",
};

/* Fill buf[0, len) with words chosen by the random bytes already there (one byte per word). */
static void fill_text(unsigned char *buf, size_t len) {
    unsigned char *pick = malloc(len / 2 + 1);
    if (!pick) { perror("malloc"); exit(1); }
    memcpy(pick, buf, len / 2 + 1);
    size_t off = 0, i = 0;
    while (off < len) {
        const char *w = WORDS[pick[i++ % (len / 2 + 1)] & 15];
        size_t n = strlen(w);
        if (n > len - off) n = len - off;
        memcpy(buf + off, w, n);
        off += n;
    }
    free(pick);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) { fprintf(stderr, "usage: memhog SIZE_MIB OUT_FILE [TEXT_PERCENT]\n"); return 2; }
    size_t size = (size_t)strtoull(argv[1], NULL, 10) << 20;
    unsigned text_percent = argc == 4 ? (unsigned)strtoul(argv[3], NULL, 10) : 0;
    if (text_percent > 100) { fprintf(stderr, "memhog: TEXT_PERCENT is 0-100\n"); return 2; }
    const char *reserve = getenv("MEMHOG_RESERVE_GIB");
    if (reserve && mmap(NULL, (size_t)strtoull(reserve, NULL, 10) << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED) {
        perror("mmap reserve"); return 1;
    }
    unsigned char *buf = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    int rnd = open("/dev/urandom", O_RDONLY);
    if (rnd < 0) { perror("/dev/urandom"); return 1; }
    for (size_t off = 0; off < size;) {
        ssize_t n = read(rnd, buf + off, size - off > (1 << 20) ? (1 << 20) : size - off);
        if (n <= 0) { perror("read"); return 1; }
        off += (size_t)n;
    }
    close(rnd);
    size_t text = size / 100 * text_percent & ~(size_t)4095;
    if (text) fill_text(buf + (size - text), text);
    signal(SIGUSR1, on_usr1);
    unsigned long long counter = 0;
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (;;) {
        if (want_report) {
            want_report = 0;
            uint64_t h = 1469598103934665603ULL;
            for (size_t i = 0; i < size; i += 8) {
                uint64_t w;
                memcpy(&w, buf + i, 8);
                h = (h ^ w) * 1099511628211ULL;
            }
            char line[64];
            int len = snprintf(line, sizeof line, "%016llx %llu\n", (unsigned long long)h, counter);
            int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) { if (write(fd, line, (size_t)len) < 0) {} close(fd); }
        }
        nanosleep(&ts, NULL);
        counter++;
    }
}
