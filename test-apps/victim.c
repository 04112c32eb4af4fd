/*
 * victim - one end of a connection that is meant to be killed (or to
 * survive its peer being killed).  Used by tests/crash.rs.
 *
 *   victim server PATH ROLE [KEY=VALUE...]
 *   victim client PATH ROLE [KEY=VALUE...]
 *
 * ROLE:
 *   write  writes the pattern stream forever, in writes of 1..chunk bytes
 *   read   reads (reads of 1..rbuf bytes) and checks every byte
 *   ping   writes a message of 1..chunk bytes, reads it back, checks it
 *   echo   reads up to rbuf bytes, checks them, writes them back
 *
 * Every stream is the same deterministic pattern: byte i of a stream is
 * byte (i % 8) of splitmix64(seed + i / 8) (little-endian), so a receiver
 * checks each byte against its position and any corruption, loss,
 * duplication or reordering is caught at the first wrong byte.
 *
 * KEYS (all numbers accept k/m/g):
 *   seed=N     pattern seed (both ends must agree; default 1)
 *   chunk=N    largest write / ping message (default 64k)
 *   rbuf=N     largest read (default 64k)
 *   phase=N    bytes (write/read) or round trips (ping) or bytes echoed
 *              (echo) after which "PHASE running" is printed (default 1m)
 *   stall=1    read: on SIGUSR2, print "PHASE stalled" and stop reading
 *              until SIGUSR1 arrives (default 0: SIGUSR2 is ignored)
 *   sigpipe=1  keep SIGPIPE's default action (default: ignored, so that a
 *              write to a dead peer is reported as EPIPE)
 *
 * Signals:
 *   SIGUSR2    a server still waiting for its connection gives up if no connection
 *              is queued (the test sends it when the client was killed
 *              before it connected): "RESULT ... outcome=NOCONN";
 *              a reader with stall=1 stops reading (the test sends it once
 *              the connection is accelerated, so the writer then blocks on
 *              a full ring)
 *   SIGUSR1    a stalled reader resumes reading
 *
 * Output (stdout, one write(2) per line, so lines are never torn or
 * buffered):
 *   PHASE listening t=NS
 *   PHASE accepted t=NS | PHASE connected t=NS
 *   PHASE running t=NS sent=N got=N
 *   PHASE stalled t=NS got=N                 (read, stall=1, SIGUSR2)
 *   PHASE blocked since=NS now=NS sent=N     (write: inside one write()
 *                                             for >= 50 ms; repeated every
 *                                             50 ms while that lasts)
 *   RESULT role=R side=S outcome=O got=N sent=N t=NS ok=1
 * t is CLOCK_MONOTONIC in ns at the moment the outcome was seen, which the
 * test compares with the moment it killed the peer.  outcome is EOF,
 * EPIPE, ECONNRESET, ECONNREFUSED (client: the server died before it
 * connected) or NOCONN (server, after SIGUSR2); any other error is
 * "outcome=E<errno name> ok=0" with exit status 2.  A wrong byte prints
 * "MISMATCH at stream offset N: expected 0x.. got 0x.." (stdout and
 * stderr) and "RESULT ... outcome=MISMATCH ok=0" and exits with status 1.
 * The exit status is 0 on any expected outcome.
 */
#include "common.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the pattern code assumes a little-endian machine"
#endif

static uint64_t g_seed = 1;
static const char *g_role = "?";
static const char *g_side = "?";
static uint64_t g_got, g_sent;

static volatile sig_atomic_t g_resume, g_usr2;

/* The writer's watchdog: when the current write() began (0: not in one). */
static _Atomic uint64_t g_write_since;
static _Atomic uint64_t g_sent_done;

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(1, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            /* The test would miss the line: say why on stderr. */
            char e[128];
            int m = snprintf(e, sizeof e, "%s: write to stdout failed: %s\n",
                             g_prog, strerror(errno));
            if (m > 0 && write(2, e, (size_t)m) < 0)
                return;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

/* The name of errno e, or NULL (reported as "errno<e>" then). */
static const char *known_errname(int e)
{
    switch (e) {
    case EPIPE: return "EPIPE";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTCONN: return "ENOTCONN";
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EIO: return "EIO";
    default: return NULL;
    }
}

/* Reports how the connection ended and exits. */
__attribute__((noreturn)) static void finish(const char *outcome, int err)
{
    uint64_t t = now_ns();
    if (outcome) {
        int bad = !strcmp(outcome, "MISMATCH");
        say("RESULT role=%s side=%s outcome=%s got=%" PRIu64 " sent=%" PRIu64
            " t=%" PRIu64 " ok=%d",
            g_role, g_side, outcome, g_got, g_sent, t, !bad);
        exit(bad);
    }
    const char *n = known_errname(err);
    char buf[32];
    if (!n) {
        snprintf(buf, sizeof buf, "errno%d", err);
        n = buf;
    } else if (err == EPIPE || err == ECONNRESET || err == ECONNREFUSED) {
        say("RESULT role=%s side=%s outcome=%s got=%" PRIu64 " sent=%" PRIu64
            " t=%" PRIu64 " ok=1",
            g_role, g_side, n, g_got, g_sent, t);
        exit(0);
    }
    fprintf(stderr, "%s: unexpected error %s (%s)\n", g_prog, n, strerror(err));
    say("RESULT role=%s side=%s outcome=E%s got=%" PRIu64 " sent=%" PRIu64
        " t=%" PRIu64 " ok=0",
        g_role, g_side, n, g_got, g_sent, t);
    exit(2);
}

/* ---- the pattern ---------------------------------------------------- */

static inline uint64_t pat_word(uint64_t w)
{
    return splitmix64(g_seed + w);
}

static void pat_fill(unsigned char *p, uint64_t off, size_t n)
{
    while (n > 0) {
        uint64_t v = pat_word(off >> 3);
        unsigned k = (unsigned)(off & 7);
        if (k == 0 && n >= 8) {
            memcpy(p, &v, 8);
            p += 8;
            off += 8;
            n -= 8;
            continue;
        }
        *p++ = (unsigned char)(v >> (8 * k));
        off++;
        n--;
    }
}

/* Checks n received bytes at stream offset off; exits on the first wrong
 * byte. */
static void pat_check(const unsigned char *p, uint64_t off, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t o = off + i;
        uint64_t v = pat_word(o >> 3);
        unsigned k = (unsigned)(o & 7);
        if (k == 0 && n - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w == v) {
                i += 8;
                continue;
            }
        }
        unsigned char e = (unsigned char)(v >> (8 * k));
        if (p[i] != e) {
            fprintf(stderr,
                    "%s: MISMATCH at stream offset %" PRIu64
                    ": expected 0x%02x got 0x%02x (read of %zu bytes at %" PRIu64 ")\n",
                    g_prog, o, e, p[i], n, off);
            say("MISMATCH at stream offset %" PRIu64
                ": expected 0x%02x got 0x%02x (read of %zu bytes at %" PRIu64 ")",
                o, e, p[i], n, off);
            finish("MISMATCH", 0);
        }
        i++;
    }
}

/* ---- I/O with outcome reporting -------------------------------------- */

static uint64_t g_rng;

static size_t rnd_size(size_t max)
{
    return 1 + (size_t)(xorshift64(&g_rng) % max);
}

/* One read of up to len bytes, checked.  Returns the count (> 0); EOF and
 * errors end the process with their outcome. */
static size_t rd(int fd, unsigned char *buf, size_t len)
{
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            finish(NULL, errno);
        }
        if (n == 0)
            finish("EOF", 0);
        pat_check(buf, g_got, (size_t)n);
        g_got += (uint64_t)n;
        return (size_t)n;
    }
}

/* Writes len bytes (errors end the process with their outcome). */
static void wr(int fd, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        atomic_store(&g_write_since, now_ns());
        ssize_t n = write(fd, buf, len);
        atomic_store(&g_write_since, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            finish(NULL, errno);
        }
        if (n == 0)
            dief("write returned 0");
        buf += n;
        len -= (size_t)n;
        g_sent += (uint64_t)n;
        atomic_store(&g_sent_done, g_sent);
    }
}

static void *watchdog(void *arg)
{
    (void)arg;
    const uint64_t ms50 = 50ull * 1000 * 1000;
    uint64_t last = 0;
    for (;;) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        uint64_t since = atomic_load(&g_write_since);
        uint64_t now = now_ns();
        if (since && now - since >= ms50 && now - last >= ms50) {
            say("PHASE blocked since=%" PRIu64 " now=%" PRIu64 " sent=%" PRIu64,
                since, now, atomic_load(&g_sent_done));
            last = now;
        }
    }
    return NULL;
}

static void on_usr1(int s)
{
    (void)s;
    g_resume = 1;
}

static void on_usr2(int s)
{
    (void)s;
    g_usr2 = 1;
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the wait for a connection returns EINTR */
    if (sigaction(sig, &sa, NULL) != 0)
        die("sigaction");
}

static void running(void)
{
    say("PHASE running t=%" PRIu64 " sent=%" PRIu64 " got=%" PRIu64, now_ns(),
        g_sent, g_got);
}

/* ---- roles ----------------------------------------------------------- */

static void role_write(int fd, size_t chunk, uint64_t phase)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t th;
    if (pthread_create(&th, NULL, watchdog, NULL) != 0)
        dief("pthread_create failed");
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    unsigned char *buf = xmalloc(chunk);
    int ran = 0;
    for (;;) {
        size_t n = rnd_size(chunk);
        pat_fill(buf, g_sent, n);
        wr(fd, buf, n);
        if (!ran && g_sent >= phase) {
            running();
            ran = 1;
        }
    }
}

static void role_read(int fd, size_t rbuf, uint64_t phase, int stall)
{
    unsigned char *buf = xmalloc(rbuf);
    int ran = 0, stalled = 0;
    for (;;) {
        rd(fd, buf, rnd_size(rbuf));
        if (!ran && g_got >= phase) {
            running();
            ran = 1;
        }
        if (stall && !stalled && g_usr2) {
            stalled = 1;
            sigset_t usr1, old;
            sigemptyset(&usr1);
            sigaddset(&usr1, SIGUSR1);
            sigprocmask(SIG_BLOCK, &usr1, &old);
            say("PHASE stalled t=%" PRIu64 " got=%" PRIu64, now_ns(), g_got);
            sigset_t wait = old;
            sigdelset(&wait, SIGUSR1);
            while (!g_resume)
                sigsuspend(&wait);
            sigprocmask(SIG_SETMASK, &old, NULL);
        }
    }
}

static void role_ping(int fd, size_t chunk, size_t rbuf, uint64_t phase)
{
    unsigned char *out = xmalloc(chunk);
    unsigned char *in = xmalloc(rbuf);
    for (uint64_t it = 1;; it++) {
        size_t n = rnd_size(chunk);
        pat_fill(out, g_sent, n);
        wr(fd, out, n);
        while (g_got < g_sent) {
            uint64_t left = g_sent - g_got;
            rd(fd, in, left < rbuf ? (size_t)left : rbuf);
        }
        if (it == phase)
            running();
    }
}

static void role_echo(int fd, size_t rbuf, uint64_t phase)
{
    unsigned char *buf = xmalloc(rbuf);
    int ran = 0;
    for (;;) {
        size_t n = rd(fd, buf, rbuf);
        wr(fd, buf, n);
        if (!ran && g_sent >= phase) {
            running();
            ran = 1;
        }
    }
}

/* ---- connection set-up ----------------------------------------------- */

static int serve(const char *path)
{
    int lfd = listen_unix(path, 0);
    /* The test's SIGUSR2 ("the client died") may come before we wait: it
     * stays blocked except inside ppoll, which takes it atomically, so a
     * nudge is never lost between the check of g_usr2 and the wait. */
    sigset_t usr2, old;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &usr2, &old) != 0)
        die("sigprocmask");
    say("PHASE listening t=%" PRIu64, now_ns());
    for (;;) {
        if (g_usr2) {
            /* The test saw the client die; anything it connected is queued
             * by now. */
            set_nonblock(lfd);
            int fd = accept(lfd, NULL, NULL);
            if (fd >= 0) {
                int fl = fcntl(fd, F_GETFL);
                if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
                    die("fcntl");
                xclose(lfd);
                sigprocmask(SIG_SETMASK, &old, NULL);
                return fd;
            }
            if (errno == EAGAIN)
                finish("NOCONN", 0);
            die("accept");
        }
        struct pollfd p = {lfd, POLLIN, 0};
        int r = ppoll(&p, 1, NULL, &old);
        if (r < 0 && errno != EINTR)
            die("ppoll");
        if (r <= 0)
            continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd >= 0) {
            xclose(lfd);
            sigprocmask(SIG_SETMASK, &old, NULL);
            return fd;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        die("accept");
    }
}

static int dial(const char *path)
{
    struct sockaddr_un sa;
    fill_sockaddr(&sa, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        if (errno == EINTR)
            continue;
        finish(NULL, errno);
    }
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc < 4)
        dief("usage: victim server|client PATH write|read|ping|echo [KEY=VALUE...]");
    g_side = argv[1];
    const char *path = argv[2];
    g_role = argv[3];
    size_t chunk = 64 << 10, rbuf = 64 << 10;
    uint64_t phase = 1 << 20;
    int sigpipe = 0, stall = 0;
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i];
        const char *eq = strchr(a, '=');
        if (!eq)
            dief("bad argument %s", a);
        size_t kl = (size_t)(eq - a);
        uint64_t v = parse_size(eq + 1, a);
        if (kl == 4 && !strncmp(a, "seed", kl))
            g_seed = v;
        else if (kl == 5 && !strncmp(a, "chunk", kl))
            chunk = (size_t)v;
        else if (kl == 4 && !strncmp(a, "rbuf", kl))
            rbuf = (size_t)v;
        else if (kl == 5 && !strncmp(a, "phase", kl))
            phase = v;
        else if (kl == 5 && !strncmp(a, "stall", kl))
            stall = v != 0;
        else if (kl == 7 && !strncmp(a, "sigpipe", kl))
            sigpipe = v != 0;
        else
            dief("unknown key in %s", a);
    }
    if (chunk == 0 || chunk > (64u << 20) || rbuf == 0 || rbuf > (64u << 20))
        dief("chunk and rbuf must be in 1..64m");
    g_rng = splitmix64(g_seed ^ (uint64_t)(unsigned char)g_side[0]) | 1;
    if (!sigpipe)
        ignore_sigpipe();
    handle(SIGUSR1, on_usr1);
    handle(SIGUSR2, on_usr2);

    int fd;
    if (!strcmp(g_side, "server")) {
        fd = serve(path);
        say("PHASE accepted t=%" PRIu64, now_ns());
    } else if (!strcmp(g_side, "client")) {
        fd = dial(path);
        say("PHASE connected t=%" PRIu64, now_ns());
    } else {
        dief("side must be server or client");
    }

    if (!strcmp(g_role, "write"))
        role_write(fd, chunk, phase);
    else if (!strcmp(g_role, "read"))
        role_read(fd, rbuf, phase, stall);
    else if (!strcmp(g_role, "ping"))
        role_ping(fd, chunk, rbuf, phase);
    else if (!strcmp(g_role, "echo"))
        role_echo(fd, rbuf, phase);
    else
        dief("unknown role %s", g_role);
    return 0;
}
