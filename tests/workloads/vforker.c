/* A parent that spends about half its time in vfork(): the child sleeps 3 ms before _exit, and
 * the parent waits for it in uninterruptible sleep (state D), as a shell does for every command
 * it runs. Counts its rounds in /tmp/cnt. */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec ts = { .tv_sec = 0, .tv_nsec = ms * 1000000L };
    nanosleep(&ts, NULL);
}

int main(void) {
    for (unsigned long i = 1;; i++) {
        pid_t pid = vfork();
        if (pid == 0) {
            sleep_ms(3);
            _exit(0);
        }
        if (pid > 0)
            waitpid(pid, NULL, 0);
        FILE *f = fopen("/tmp/cnt", "w");
        if (f) { fprintf(f, "%lu\n", i); fclose(f); }
        sleep_ms(3);
    }
}
