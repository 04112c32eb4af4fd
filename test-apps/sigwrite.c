/*
 * sigwrite - a signal handler writes to sockets while the interrupted code
 * is writing to one of them.
 *
 *   sigwrite server PATH            accept 2 connections, read and verify
 *                                   records from both until EOF
 *   sigwrite client PATH SECONDS MODE
 *       MODE: restart  handler set with sigaction(SA_RESTART)
 *             intr     sigaction without SA_RESTART: blocked writes may
 *                      fail with EINTR, and are then retried
 *             signal   handler set with signal() (BSD semantics)
 *             oneshot  one-shot handler (SA_RESETHAND and sysv_signal in
 *                      turn) on a one-shot timer, set again once it ran:
 *                      it must run exactly once, and leave SIG_DFL
 *
 * The client connects A and B, then a 100 us interval timer fires SIGALRM;
 * its handler writes one 16-byte 'S' record, alternately to A and B, while
 * the main loop writes batches of 1..2048 'M' records (at most 32 KiB, a
 * size the kernel appends whole) to A. Every record carries a sequence
 * number and a checksum. A write must return its full length or fail with
 * EINTR: never a partial count, never an interleaved record.
 *
 * The server checks every record is intact, 'M' sequence numbers are
 * consecutive, and 'S' numbers increase by 2 on each connection.
 * Output: RESULT role=... m=N s=N eintr=N ok=1; MISMATCH on any error.
 */
#include "common.h"

#include <poll.h>
#include <sys/time.h>

struct rec {
    uint8_t tag;  /* 'M' or 'S' */
    uint8_t conn; /* 0 = A, 1 = B */
    uint16_t pad;
    uint32_t seq;
    uint64_t check;
};

static uint64_t check_of(const struct rec *r)
{
    uint64_t x = ((uint64_t)r->tag << 40) ^ ((uint64_t)r->conn << 32) ^ r->seq;
    x *= 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

static int g_fd[2];
static volatile uint32_t g_sseq;
static volatile int g_handler_errors;

static void on_alarm(int sig)
{
    (void)sig;
    int saved = errno;
    struct rec r = {.tag = 'S', .conn = (uint8_t)(g_sseq & 1), .seq = g_sseq};
    r.check = check_of(&r);
    for (;;) {
        ssize_t n = write(g_fd[r.conn], &r, sizeof r);
        if (n == (ssize_t)sizeof r)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        g_handler_errors++;
        break;
    }
    g_sseq++;
    errno = saved;
}

/* oneshot mode: a one-shot handler, alternately sigaction(SA_RESETHAND)
 * and sysv_signal, and a one-shot 100 us timer. */
static void arm_oneshot(unsigned k)
{
    if (k & 1) {
        if (sysv_signal(SIGALRM, on_alarm) == SIG_ERR)
            die("sysv_signal");
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sa.sa_flags = SA_RESETHAND;
        if (sigaction(SIGALRM, &sa, NULL) != 0)
            die("sigaction");
    }
    struct itimerval it = {{0, 0}, {0, 100}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        die("setitimer");
}

/* oneshot mode, after a write: if the handler ran, it ran once and the
 * default action is back (a handler deferred inside tsss once recursed
 * into itself here); then arm again. */
static void rearm_oneshot(uint32_t *armed)
{
    uint32_t seen = g_sseq;
    if (seen == *armed)
        return;
    if (seen != *armed + 1)
        dief("MISMATCH: one-shot handler ran %u times", seen - *armed);
    struct sigaction cur;
    if (sigaction(SIGALRM, NULL, &cur) != 0)
        die("sigaction");
    if (cur.sa_handler != SIG_DFL)
        dief("MISMATCH: one-shot handler still installed after it ran");
    *armed = seen;
    arm_oneshot(seen);
}

static int client(const char *path, double seconds, const char *mode)
{
    int oneshot = strcmp(mode, "oneshot") == 0;
    g_fd[0] = connect_unix(path);
    g_fd[1] = connect_unix(path);
    if (strcmp(mode, "signal") == 0) {
        if (signal(SIGALRM, on_alarm) == SIG_ERR)
            die("signal");
    } else if (oneshot) {
        arm_oneshot(0);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        if (strcmp(mode, "restart") == 0)
            sa.sa_flags = SA_RESTART;
        else if (strcmp(mode, "intr") != 0)
            dief("unknown mode %s", mode);
        if (sigaction(SIGALRM, &sa, NULL) != 0)
            die("sigaction");
        struct sigaction back;
        if (sigaction(SIGALRM, NULL, &back) != 0 || back.sa_handler != on_alarm ||
            (back.sa_flags & (SA_RESTART | SA_SIGINFO)) != sa.sa_flags)
            dief("MISMATCH: sigaction reports another handler or flags (%#x)",
                 back.sa_flags);
    }
    static struct rec batch[2048];
    struct itimerval it = {{0, 100}, {0, 100}};
    if (!oneshot && setitimer(ITIMER_REAL, &it, NULL) != 0)
        die("setitimer");
    uint32_t armed = 0;
    uint64_t end = now_ns() + (uint64_t)(seconds * 1e9);
    uint32_t mseq = 0;
    long eintr = 0;
    unsigned rnd = 12345;
    while (now_ns() < end) {
        rnd = rnd * 1103515245u + 12345u;
        size_t k = 1 + (rnd >> 8) % 2048;
        for (size_t i = 0; i < k; i++) {
            batch[i] = (struct rec){.tag = 'M', .conn = 0, .seq = mseq + (uint32_t)i};
            batch[i].check = check_of(&batch[i]);
        }
        for (;;) {
            ssize_t n = write(g_fd[0], batch, k * sizeof(struct rec));
            if (n == (ssize_t)(k * sizeof(struct rec)))
                break;
            if (n < 0 && errno == EINTR) {
                eintr++;
                continue;
            }
            if (n < 0)
                die("write");
            dief("MISMATCH: write of %zu bytes returned %zd", k * sizeof(struct rec), n);
        }
        mseq += (uint32_t)k;
        if (oneshot)
            rearm_oneshot(&armed);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    if (setitimer(ITIMER_REAL, &off, NULL) != 0)
        die("setitimer");
    if (g_handler_errors)
        dief("MISMATCH: %d handler writes failed", g_handler_errors);
    if (strcmp(mode, "restart") == 0 && eintr)
        dief("MISMATCH: %ld EINTR with SA_RESTART", eintr);
    close(g_fd[0]);
    close(g_fd[1]);
    printf("RESULT role=client m=%u s=%u eintr=%ld ok=1\n", mseq, g_sseq, eintr);
    return 0;
}

static int server(const char *path)
{
    int lfd = listen_unix(path, 0);
    int fd[2];
    for (int i = 0; i < 2; i++) {
        fd[i] = accept(lfd, NULL, NULL);
        if (fd[i] < 0)
            die("accept");
    }
    static unsigned char buf[2][65536];
    size_t have[2] = {0, 0};
    uint32_t mnext = 0, snext[2] = {0, 1};
    long m = 0, s = 0;
    int open_ = 2, done[2] = {0, 0};
    while (open_ > 0) {
        struct pollfd p[2] = {{fd[0], done[0] ? 0 : POLLIN, 0}, {fd[1], done[1] ? 0 : POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        for (int c = 0; c < 2; c++) {
            if (done[c] || !p[c].revents)
                continue;
            ssize_t n = read(fd[c], buf[c] + have[c], sizeof buf[c] - have[c]);
            if (n < 0)
                die("read");
            if (n == 0) {
                if (have[c])
                    dief("MISMATCH: %zu stray bytes at EOF on %c", have[c], 'A' + c);
                done[c] = 1;
                open_--;
                continue;
            }
            have[c] += (size_t)n;
            size_t off = 0;
            for (; have[c] - off >= sizeof(struct rec); off += sizeof(struct rec)) {
                struct rec r;
                memcpy(&r, buf[c] + off, sizeof r);
                if (r.check != check_of(&r) || r.conn != c)
                    dief("MISMATCH: corrupt record on %c (tag %d seq %u)", 'A' + c, r.tag, r.seq);
                if (r.tag == 'M') {
                    if (c != 0 || r.seq != mnext)
                        dief("MISMATCH: M seq %u on %c, expected %u", r.seq, 'A' + c, mnext);
                    mnext++;
                    m++;
                } else if (r.tag == 'S') {
                    if (r.seq != snext[c])
                        dief("MISMATCH: S seq %u on %c, expected %u", r.seq, 'A' + c, snext[c]);
                    snext[c] += 2;
                    s++;
                } else {
                    dief("MISMATCH: tag %d", r.tag);
                }
            }
            memmove(buf[c], buf[c] + off, have[c] - off);
            have[c] -= off;
        }
    }
    printf("RESULT role=server m=%ld s=%ld ok=1\n", m, s);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return server(argv[2]);
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(argv[2], atof(argv[3]), argv[4]);
    fprintf(stderr,
            "usage: sigwrite server PATH | client PATH SECONDS restart|intr|signal|oneshot\n");
    return 2;
}
