/*
 * pipefile - throughput through a pipe or a regular file (non-socket fds),
 * used to show LD_PRELOAD overhead on fds the shim must pass through.
 *
 *   pipefile pipe SIZE TOTAL                       (sizes accept k/m/g suffix)
 *       fork; the child write()s TOTAL bytes (rounded up to whole SIZE
 *       writes) into a pipe, the parent read()s with a SIZE-byte buffer
 *       until EOF.  secs = parent time from just before fork() to EOF.
 *   pipefile file SIZE TOTAL DIR
 *       create a temp file in DIR (mkstemp), write TOTAL bytes in SIZE
 *       writes, lseek to 0, read it back with a SIZE-byte buffer, unlink.
 *       No fsync.  secs = time for write + read-back; bytes = TOTAL
 *       (so gbps = TOTAL / (write time + read time)).
 *
 * Data: slices of a xorshift64 pattern at rotating offsets; the reader
 * computes the fast stream checksum of everything read and compares it with
 * the expected one (computed outside the timed section).
 *
 * Output:
 *   RESULT kind=pipe|file size=S bytes=B secs=T gbps=X ok=1
 */
#include "common.h"
#include <sched.h>

static void pin_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        die("sched_setaffinity");
}

#include <sys/wait.h>

static char g_tmppath[4096];

static void unlink_tmp(void)
{
    if (g_tmppath[0])
        unlink(g_tmppath);
    g_tmppath[0] = '\0';
}

static uint64_t expected_cks(const unsigned char *pat, uint64_t size,
                             uint64_t nmsgs)
{
    cks_t c;
    cks_init(&c);
    for (uint64_t k = 0; k < nmsgs; k++)
        cks_update(&c, pat + msg_offset(k), (size_t)size);
    return cks_final(&c);
}

/* read fd to EOF into buf (size bytes), checksumming everything */
static void read_to_eof(int fd, unsigned char *buf, size_t size, cks_t *c)
{
    for (;;) {
        ssize_t n = read(fd, buf, size);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (n == 0)
            return;
        cks_update(c, buf, (size_t)n);
    }
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    int is_pipe;
    if (argc == 4 && strcmp(argv[1], "pipe") == 0)
        is_pipe = 1;
    else if (argc == 5 && strcmp(argv[1], "file") == 0)
        is_pipe = 0;
    else
        dief("usage: pipefile pipe SIZE TOTAL | pipefile file SIZE TOTAL DIR");
    uint64_t size = parse_size(argv[2], "SIZE");
    uint64_t total = parse_size(argv[3], "TOTAL");
    if (size == 0 || size > (1ull << 30))
        dief("SIZE must be in 1..1G");
    uint64_t nmsgs = (total + size - 1) / size;
    uint64_t bytes = nmsgs * size;

    size_t plen = (size_t)size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, PATTERN_SEED ^ 0xf11e);
    unsigned char *buf = xmalloc((size_t)size);
    cks_t c;
    cks_init(&c);
    uint64_t t0, t1;

    if (is_pipe) {
        int p[2];
        if (pipe(p) != 0)
            die("pipe");
        fflush(stdout);
        t0 = now_ns();
        /* PIPEFILE_PIN=same: both ends on CPU 0; =split: reader on CPU 0,
         * writer on CPU 1. Unpinned, scheduler placement and cross-CPU
         * wake-ups move pipe throughput by +-20% between identical runs,
         * which hides any small overhead. */
        const char *pin_env = getenv("PIPEFILE_PIN");
        int pin = pin_env != NULL;
        int split = pin && strcmp(pin_env, "split") == 0;
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pin)
            pin_cpu(split && pid == 0 ? 1 : 0);
        if (pid == 0) {
            if (close(p[0]) != 0)
                die("close");
            for (uint64_t k = 0; k < nmsgs; k++)
                write_all(p[1], pat + msg_offset(k), (size_t)size);
            if (close(p[1]) != 0)
                die("close");
            _exit(0);
        }
        xclose(p[1]);
        read_to_eof(p[0], buf, (size_t)size, &c);
        t1 = now_ns();
        xclose(p[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0) {
            if (errno != EINTR)
                die("waitpid");
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            dief("writer child failed (status 0x%x)", st);
    } else {
        int n = snprintf(g_tmppath, sizeof g_tmppath, "%s/pipefile.XXXXXX",
                         argv[4]);
        if (n < 0 || (size_t)n >= sizeof g_tmppath)
            dief("DIR too long");
        int fd = mkstemp(g_tmppath);
        if (fd < 0) {
            g_tmppath[0] = '\0';
            die("mkstemp");
        }
        g_cleanup = unlink_tmp;
        t0 = now_ns();
        for (uint64_t k = 0; k < nmsgs; k++)
            write_all(fd, pat + msg_offset(k), (size_t)size);
        if (lseek(fd, 0, SEEK_SET) != 0)
            die("lseek");
        read_to_eof(fd, buf, (size_t)size, &c);
        t1 = now_ns();
        xclose(fd);
        if (unlink(g_tmppath) != 0)
            die("unlink");
        g_tmppath[0] = '\0';
        g_cleanup = NULL;
    }

    uint64_t got = c.total, sum = cks_final(&c);
    uint64_t want = expected_cks(pat, size, nmsgs);
    if (got != bytes || sum != want) {
        fprintf(stderr,
                "%s: MISMATCH: wrote %" PRIu64 " bytes checksum %016" PRIx64
                ", read %" PRIu64 " bytes checksum %016" PRIx64 "\n",
                g_prog, bytes, want, got, sum);
        return 1;
    }
    double secs = (double)(t1 - t0) / 1e9;
    if (secs <= 0)
        secs = 1e-9;
    printf("RESULT kind=%s size=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f gbps=%.4f ok=1\n",
           is_pipe ? "pipe" : "file", size, bytes, secs,
           (double)bytes / secs / 1e9);
    free(pat);
    free(buf);
    return 0;
}
