/*
 * common.h - shared helpers for the tsss test applications.
 *
 * The test apps are plain POSIX/Linux C programs that know nothing about
 * tsss; they are meant to be run with and without LD_PRELOAD.
 *
 * Conventions:
 *   - any unexpected error prints "<prog>: <what>: <strerror>" to stderr
 *     and exits with status 1;
 *   - corrupted / lost / duplicated data prints a line containing
 *     "MISMATCH" to stderr and exits with status 1;
 *   - on success exactly one line starting with "RESULT " followed by
 *     key=value pairs is printed on stdout.
 */
#ifndef TSSS_TESTAPP_COMMON_H
#define TSSS_TESTAPP_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *g_prog = "testapp";
/* optional cleanup hook run by die()/dief() before exiting (e.g. unlink). */
static void (*g_cleanup)(void);

static inline void set_prog(const char *argv0)
{
    const char *s = strrchr(argv0, '/');
    g_prog = s ? s + 1 : argv0;
}

static inline void run_cleanup(void)
{
    if (g_cleanup) {
        void (*f)(void) = g_cleanup;
        g_cleanup = NULL;
        f();
    }
}

/* perror-style fatal error: "<prog>: <what>: <strerror(errno)>" */
__attribute__((noreturn)) static inline void die(const char *what)
{
    int e = errno;
    fprintf(stderr, "%s: %s: %s\n", g_prog, what, strerror(e));
    run_cleanup();
    exit(1);
}

/* fatal error with a formatted message (no errno). */
__attribute__((noreturn, format(printf, 1, 2))) static inline void
dief(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", g_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    run_cleanup();
    exit(1);
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("malloc");
    return p;
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        die("clock_gettime");
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Parse a non-negative integer with an optional binary suffix
 * k/K (2^10), m/M (2^20), g/G (2^30).  Exits on malformed input.
 */
static inline uint64_t parse_size(const char *s, const char *name)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        dief("invalid %s '%s'", name, s ? s : "");
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        dief("invalid %s '%s'", name, s);
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0')
        dief("invalid %s '%s'", name, s);
    if (shift && v > (UINT64_MAX >> shift))
        dief("%s '%s' too large", name, s);
    return (uint64_t)v << shift;
}

/* Optional env var holding a non-negative integer; returns -1 if unset. */
static inline int64_t env_i64(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return -1;
    return (int64_t)parse_size(s, name);
}

static inline void ignore_sigpipe(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) != 0)
        die("sigaction(SIGPIPE)");
}

/* Write exactly len bytes (handles short writes and EINTR). */
static inline void write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        if (n == 0)
            dief("write: returned 0");
        p += n;
        len -= (size_t)n;
    }
}

/*
 * Read until len bytes are read or EOF.  Returns the number of bytes read
 * (less than len only on EOF).
 */
static inline size_t read_full(int fd, void *buf, size_t len)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static inline void fill_sockaddr(struct sockaddr_un *sa, const char *path)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        dief("socket path too long: %s", path);
    strcpy(sa->sun_path, path);
}

/* unlink PATH, create a listening AF_UNIX SOCK_STREAM socket bound to it. */
static inline int listen_unix(const char *path, int sock_flags)
{
    struct sockaddr_un sa;
    fill_sockaddr(&sa, path);
    if (unlink(path) != 0 && errno != ENOENT)
        die("unlink");
    int fd = socket(AF_UNIX, SOCK_STREAM | sock_flags, 0);
    if (fd < 0)
        die("socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("bind");
    if (listen(fd, SOMAXCONN) != 0)
        die("listen");
    return fd;
}

/*
 * Connect to PATH (blocking socket).  Retries for up to 10 s while the
 * path does not exist yet or the server has bound but not yet listened
 * (ENOENT / ECONNREFUSED), so callers may race with server start-up.
 */
static inline int connect_unix(const char *path)
{
    struct sockaddr_un sa;
    fill_sockaddr(&sa, path);
    uint64_t deadline = now_ns() + 10ull * 1000000000ull;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        int e = errno;
        if (close(fd) != 0)
            die("close");
        errno = e;
        if ((e == ENOENT || e == ECONNREFUSED || e == EINTR) &&
            now_ns() < deadline) {
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        die("connect");
    }
}

static inline void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        die("fcntl(F_GETFL)");
    if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        die("fcntl(F_SETFL, O_NONBLOCK)");
}

static inline void clear_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
        die("fcntl");
}

static inline void xclose(int fd)
{
    if (close(fd) != 0)
        die("close");
}

/* ---- deterministic data -------------------------------------------- */

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Fill buf with xorshift64 bytes derived from seed. */
static inline void fill_pattern(unsigned char *buf, size_t len, uint64_t seed)
{
    uint64_t s = splitmix64(seed) | 1;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = xorshift64(&s);
        memcpy(buf + i, &v, 8);
    }
    if (i < len) {
        uint64_t v = xorshift64(&s);
        memcpy(buf + i, &v, len - i);
    }
}

#define PATTERN_SEED 0x7453535354455354ull /* "tSSSTEST" */
#define PATTERN_SLACK 4096u

/*
 * Rotating offset into the pattern buffer for message k; the pattern buffer
 * must be MSGSIZE + PATTERN_SLACK bytes long.  97 is odd, so consecutive
 * messages differ even when MSGSIZE is a multiple of 4096.
 */
static inline size_t msg_offset(uint64_t k)
{
    return (size_t)((k * 97u) & (PATTERN_SLACK - 1));
}

/* ---- fast position-dependent stream checksum ----------------------------
 *
 * Four-lane Fletcher-style sum over little-endian 64-bit words: for word i
 * of the stream (lane = i % 4) a += w; b += a.  The "b" sums weight every
 * word by its position, so reordering is detected; any single corrupted
 * word changes an "a" sum; the final hash also mixes in the byte count, so
 * lost / duplicated data is detected.  Cost is ~2 adds per 8 bytes, far
 * below 1 ns/byte (tens of GB/s).  The checksum depends only on the byte
 * stream, not on how it was chunked into update calls.
 */
typedef struct {
    uint64_t a[4], b[4];
    uint64_t total;
    size_t plen;
    unsigned char part[32];
} cks_t;

static inline void cks_init(cks_t *c)
{
    memset(c, 0, sizeof *c);
}

static inline uint64_t ld64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void cks_blocks(cks_t *c, const unsigned char *p, size_t n)
{
    uint64_t a0 = c->a[0], a1 = c->a[1], a2 = c->a[2], a3 = c->a[3];
    uint64_t b0 = c->b[0], b1 = c->b[1], b2 = c->b[2], b3 = c->b[3];
    for (size_t i = 0; i < n; i++, p += 32) {
        a0 += ld64(p);
        b0 += a0;
        a1 += ld64(p + 8);
        b1 += a1;
        a2 += ld64(p + 16);
        b2 += a2;
        a3 += ld64(p + 24);
        b3 += a3;
    }
    c->a[0] = a0; c->a[1] = a1; c->a[2] = a2; c->a[3] = a3;
    c->b[0] = b0; c->b[1] = b1; c->b[2] = b2; c->b[3] = b3;
}

static inline void cks_update(cks_t *c, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    c->total += len;
    if (c->plen) {
        size_t take = 32 - c->plen;
        if (take > len)
            take = len;
        memcpy(c->part + c->plen, p, take);
        c->plen += take;
        p += take;
        len -= take;
        if (c->plen < 32)
            return;
        cks_blocks(c, c->part, 1);
        c->plen = 0;
    }
    size_t nb = len / 32;
    cks_blocks(c, p, nb);
    p += nb * 32;
    len -= nb * 32;
    if (len) {
        memcpy(c->part, p, len);
        c->plen = len;
    }
}

static inline uint64_t cks_final(const cks_t *c0)
{
    cks_t c = *c0;
    if (c.plen) {
        memset(c.part + c.plen, 0, 32 - c.plen);
        cks_blocks(&c, c.part, 1);
    }
    uint64_t h = splitmix64(c.total);
    for (int i = 0; i < 4; i++) {
        h = splitmix64(h ^ c.a[i]);
        h = splitmix64(h ^ c.b[i]);
    }
    return h;
}

static inline void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- watchdog ---------------------------------------------------------- */

static const char *g_timeout_env = "";

static void on_timeout_alarm(int sig)
{
    (void)sig;
    ssize_t r = write(2, g_prog, strlen(g_prog));
    r = write(2, ": timed out (", 13);
    r = write(2, g_timeout_env, strlen(g_timeout_env));
    r = write(2, ")\n", 2);
    (void)r;
    _exit(1);
}

/* Exit 1 with a message after $ENV seconds (default `def`; 0: never). */
static inline void arm_timeout_env(const char *env, int64_t def)
{
    int64_t t = env_i64(env);
    if (t < 0)
        t = def;
    if (t == 0)
        return;
    g_timeout_env = env;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_timeout_alarm;
    if (sigaction(SIGALRM, &sa, NULL) != 0)
        die("sigaction(SIGALRM)");
    alarm((unsigned)t);
}

/* ---- transcripts (sockcheck, seqfuzz) ---------------------------------- */

/*
 * The name of errno value e: "EPIPE" etc., "0" for 0, "E#<n>" for the
 * others (in rotating static buffers: four may be in use at once).
 */
static inline const char *errname(int e)
{
    switch (e) {
#define E(x) case x: return #x
    E(EAGAIN); E(EPIPE); E(ECONNRESET); E(EINVAL); E(EBADF); E(ENOTCONN);
    E(EINTR); E(EFAULT); E(EMSGSIZE); E(EOPNOTSUPP); E(ENOTSOCK); E(EISCONN);
    E(ECONNREFUSED); E(ENOENT); E(EADDRINUSE); E(ENOTTY); E(ENOBUFS);
    E(ENOMEM); E(EPROTOTYPE); E(ESHUTDOWN); E(ETIMEDOUT); E(EALREADY);
    E(EINPROGRESS); E(EDESTADDRREQ); E(EACCES); E(EPERM); E(ENOSYS);
    E(EEXIST);
#undef E
    case 0: return "0";
    default: {
        static char b[4][16];
        static int i;
        i = (i + 1) & 3;
        snprintf(b[i], sizeof b[i], "E#%d", e);
        return b[i];
    }
    }
}

/* A call's result r with errno e: "N", or "-1 ENAME" (rotating static
 * buffers: eight may be in use at once). */
static inline const char *rv(long r, int e)
{
    static char b[8][48];
    static int i;
    i = (i + 1) & 7;
    if (r < 0)
        snprintf(b[i], sizeof b[i], "%ld %s", r, errname(e));
    else
        snprintf(b[i], sizeof b[i], "%ld", r);
    return b[i];
}

/* Writes p[0..n) to stdout (fd 1) with write(2): async-signal-safe, no
 * stdio (fflush(stdout) first if printf output must come before it).
 * Gives up silently on an error. */
static inline void out_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(1, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return;
        p += k;
        n -= (size_t)k;
    }
}

/* ---- one-byte pipe barriers between two processes --------------------- */

/* Tell the peer we reached a point. 0, or -1 with errno set. */
static inline int barrier_signal(int fd)
{
    char c = 'b';
    for (;;) {
        ssize_t n = write(fd, &c, 1);
        if (n == 1)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

/* Wait until the peer reached its point. 0, or -1 with errno set (errno 0:
 * the peer is gone). */
static inline int barrier_wait(int fd)
{
    char c;
    for (;;) {
        ssize_t n = read(fd, &c, 1);
        if (n == 1)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            errno = 0;
        return -1;
    }
}

#endif /* TSSS_TESTAPP_COMMON_H */
