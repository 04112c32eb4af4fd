/*
 * connbench - many open AF_UNIX connections, a few of them active: round
 * trip of the active ones and the server's CPU time per request.
 *
 *   connbench server PATH
 *   connbench client PATH N ACTIVE DURATION
 *
 * DURATION: seconds with an "s" suffix ("2s", "0.5s"), or a number of
 * measured requests ("100000").
 *
 * Protocol: 64-byte requests, echoed whole.  Byte 0 is the request type:
 *   'W'  set-up or warm-up, not counted;
 *   'S'  start of the measurement: the server takes getrusage(RUSAGE_SELF);
 *   'M'  a measured request (counted by both sides);
 *   'E'  end of the measurement: the server takes getrusage again.
 * Bytes 1..8 are the request's index (LE), the rest a slice of the common
 * pattern at a rotating offset; the client compares every echoed byte.
 *
 * Server: one thread, one level-triggered epoll loop (EPOLLIN only);
 * accept4(SOCK_NONBLOCK) of one connection per wake-up; one read() of at
 * most 64 KiB per ready connection per wake-up, everything read written
 * straight back.  The client has at most one request outstanding per
 * connection, so an echo never meets a full socket buffer: a short write
 * is a protocol failure (exit 1).  The server exits once every connection
 * is closed (or on SIGTERM/SIGINT); ok=0 and status 1 if it has not seen
 * 'E' by then (the client died, or the measurement was cut short).  Output:
 *   RESULT role=server conns=C reqs=R user_us=U sys_us=S cpu_us_per_req=X ok=1
 * (R: 'M' requests; U, S: CPU time between 'S' and 'E').
 *
 * Client: raises RLIMIT_NOFILE as far as it can (2N + 256 wanted), opens N
 * connections one after the other, each with one 'W' round trip (so that
 * every connection has carried data, as an idle connection of a real
 * server has), then drives the first ACTIVE connections round-robin (write
 * one request, read its echo, next connection): 100 warm-up round trips per
 * active connection, one 'S', measured 'M' round trips (each timed) until
 * DURATION, one 'E'; then closes every connection.  Output:
 *   RESULT role=client conns=N active=A reqs=R rtt_med_us=X rtt_p99_us=Y
 *          rtt_min_us=Z setup_s=T active_fds=F1,F2,... ok=1
 * (setup_s: time to open the N connections with their first round trip;
 * active_fds: the descriptors of the active connections).
 *
 * Env CONNBENCH_TIMEOUT (default 300 s): exit 1 after that long.
 * Env CORRUPT_AT=I (client): corrupt measured request I on the way out ->
 * must fail with MISMATCH.
 * Env THINK_US=T (client): pause T us before each measured request, so
 * that the server sleeps in epoll_wait between requests.
 */
#include "common.h"

#include <sys/epoll.h>
#include <sys/resource.h>

#define REQ 64
#define RD_CHUNK (64u << 10)
#define MAX_EVENTS 256
#define MAX_CONNS 1000000
/* descriptors the server asks for: 10,000 connections and room to spare */
#define SERVER_NOFILE 65536

/* Raise RLIMIT_NOFILE to `want` if allowed (raising the hard limit needs
 * CAP_SYS_RESOURCE), else as far as the hard limit.  Returns the soft limit. */
static uint64_t raise_nofile(uint64_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit(RLIMIT_NOFILE)");
    if (rl.rlim_cur >= want)
        return rl.rlim_cur;
    struct rlimit nl = {want, rl.rlim_max > want ? rl.rlim_max : want};
    if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
        return want;
    nl.rlim_cur = nl.rlim_max = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nl) != 0)
        die("setrlimit(RLIMIT_NOFILE)");
    return rl.rlim_max;
}

/* ---- server ----------------------------------------------------------- */

struct sconn {
    int fd;
    uint64_t pos; /* bytes received on this connection */
};

static volatile sig_atomic_t g_stop;
static unsigned char g_buf[RD_CHUNK];

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static uint64_t tv_us(struct timeval tv)
{
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static int do_server(int argc, char **argv)
{
    if (argc != 3)
        dief("usage: connbench server PATH");
    const char *path = argv[2];
    raise_nofile(SERVER_NOFILE);

    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    if (sigprocmask(SIG_BLOCK, &block, &waitmask) != 0)
        die("sigprocmask");
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        die("sigaction");

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    int lfd = listen_unix(path, SOCK_NONBLOCK);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &le) != 0)
        die("epoll_ctl(ADD listen)");

    uint64_t accepted = 0, open = 0, reqs = 0, errors = 0;
    int started = 0, done = 0;
    struct rusage r0, r1;
    memset(&r0, 0, sizeof r0);
    memset(&r1, 0, sizeof r1);
    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop && !(accepted > 0 && open == 0)) {
        int n = epoll_pwait(epfd, evs, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;
            if (c == NULL) { /* lt: one accept per wake-up */
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
                        errno == ECONNABORTED)
                        continue;
                    die("accept4");
                }
                c = calloc(1, sizeof *c);
                if (!c)
                    die("calloc");
                c->fd = fd;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) != 0)
                    die("epoll_ctl(ADD conn)");
                accepted++;
                open++;
                continue;
            }
            ssize_t r = read(c->fd, g_buf, sizeof g_buf);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    continue;
                if (errno != ECONNRESET)
                    die("read");
                fprintf(stderr, "%s: read: %s (closing connection)\n", g_prog,
                        strerror(errno));
                errors++;
                r = 0;
            }
            if (r == 0) {
                if (epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL) != 0)
                    die("epoll_ctl(DEL)");
                if (c->pos % REQ != 0) {
                    fprintf(stderr, "%s: MISMATCH: EOF inside a request (%" PRIu64
                            " bytes received)\n", g_prog, c->pos);
                    errors++;
                }
                xclose(c->fd);
                free(c);
                open--;
                continue;
            }
            /* the request types, at each request's first byte */
            for (uint64_t off = (REQ - c->pos % REQ) % REQ; off < (uint64_t)r; off += REQ) {
                switch (g_buf[off]) {
                case 'W':
                    break;
                case 'S':
                    if (getrusage(RUSAGE_SELF, &r0) != 0)
                        die("getrusage");
                    started = 1;
                    reqs = 0;
                    break;
                case 'M':
                    reqs++;
                    break;
                case 'E':
                    if (getrusage(RUSAGE_SELF, &r1) != 0)
                        die("getrusage");
                    done = started;
                    break;
                default:
                    dief("MISMATCH: unknown request type 0x%02x", g_buf[off]);
                }
            }
            c->pos += (uint64_t)r;
            ssize_t w = write(c->fd, g_buf, (size_t)r);
            if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
                fprintf(stderr, "%s: write: %s\n", g_prog, strerror(errno));
                errors++;
                continue;
            }
            if (w < 0)
                die("write");
            if (w != r)
                dief("short echo (%zd of %zd bytes): more than one request "
                     "outstanding?", w, r);
        }
    }
    xclose(lfd);
    if (unlink(path) != 0 && errno != ENOENT)
        die("unlink");
    uint64_t user = tv_us(r1.ru_utime) - tv_us(r0.ru_utime);
    uint64_t sys = tv_us(r1.ru_stime) - tv_us(r0.ru_stime);
    int ok = done && errors == 0 && reqs > 0;
    if (!done)
        fprintf(stderr, "%s: stopped before the end of the measurement\n", g_prog);
    printf("RESULT role=server conns=%" PRIu64 " reqs=%" PRIu64 " user_us=%" PRIu64
           " sys_us=%" PRIu64 " cpu_us_per_req=%.4f ok=%d\n",
           accepted, reqs, user, sys,
           reqs ? (double)(user + sys) / (double)reqs : 0.0, ok);
    return ok ? 0 : 1;
}

/* ---- client ----------------------------------------------------------- */

static unsigned char *g_pat;

static void make_req(unsigned char *m, char type, uint64_t idx)
{
    memcpy(m, g_pat + msg_offset(idx), REQ);
    m[0] = (unsigned char)type;
    put_le64(m + 1, idx);
}

/* one round trip of request (type, idx) on fd; returns its time in ns */
static uint64_t round_trip(int fd, char type, uint64_t idx, int corrupt)
{
    unsigned char m[REQ], out[REQ], back[REQ];
    make_req(m, type, idx);
    memcpy(out, m, REQ);
    if (corrupt)
        out[REQ / 2] ^= 0x5a;
    uint64_t t0 = now_ns();
    write_all(fd, out, REQ);
    size_t n = read_full(fd, back, REQ);
    uint64_t t1 = now_ns();
    if (n != REQ)
        dief("unexpected EOF from the server (request %c %" PRIu64 ", %zu of %d bytes)",
             type, idx, n, REQ);
    if (memcmp(back, m, REQ) != 0) {
        size_t j = 0;
        while (back[j] == m[j])
            j++;
        fprintf(stderr, "%s: MISMATCH in the echo of request %c %" PRIu64
                " byte %zu: expected 0x%02x got 0x%02x\n",
                g_prog, type, idx, j, m[j], back[j]);
        exit(1);
    }
    return t1 - t0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int do_client(int argc, char **argv)
{
    if (argc != 6)
        dief("usage: connbench client PATH N ACTIVE DURATION");
    const char *path = argv[2];
    uint64_t n = parse_size(argv[3], "N");
    uint64_t active = parse_size(argv[4], "ACTIVE");
    if (n == 0 || n > MAX_CONNS || active == 0 || active > n)
        dief("need 1 <= ACTIVE <= N <= %d", MAX_CONNS);
    const char *d = argv[5];
    size_t dl = strlen(d);
    uint64_t max_reqs = UINT64_MAX, dur_ns = UINT64_MAX;
    if (dl > 1 && d[dl - 1] == 's') {
        char *end;
        double s = strtod(d, &end);
        if (end != d + dl - 1 || !(s > 0 && s < 86400))
            dief("invalid DURATION '%s'", d);
        dur_ns = (uint64_t)(s * 1e9);
    } else {
        max_reqs = parse_size(d, "DURATION");
        if (max_reqs == 0)
            dief("DURATION must be > 0");
    }
    int64_t corrupt_at = env_i64("CORRUPT_AT");
    int64_t think_us = env_i64("THINK_US");

    uint64_t lim = raise_nofile(2 * n + 256);
    if (lim < n + 32)
        dief("RLIMIT_NOFILE is %" PRIu64 ", %" PRIu64 " connections need more "
             "(raise the hard limit: ulimit -Hn, or run as root)", lim, n);

    g_pat = xmalloc(REQ + PATTERN_SLACK);
    fill_pattern(g_pat, REQ + PATTERN_SLACK, PATTERN_SEED ^ 0xc0);
    int *fds = xmalloc(n * sizeof *fds);
    uint64_t idx = 0; /* request index, across all types */

    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        fds[i] = connect_unix(path);
        round_trip(fds[i], 'W', idx++, 0);
    }
    double setup_s = (double)(now_ns() - t0) / 1e9;

    for (uint64_t i = 0; i < 100 * active; i++)
        round_trip(fds[i % active], 'W', idx++, 0);
    round_trip(fds[0], 'S', idx++, 0);

    size_t cap = 1 << 16, cnt = 0;
    uint64_t *rtt = xmalloc(cap * sizeof *rtt);
    uint64_t start = now_ns(), deadline = dur_ns == UINT64_MAX ? UINT64_MAX : start + dur_ns;
    for (uint64_t i = 0; i < max_reqs; i++) {
        if (cnt == cap) {
            cap *= 2;
            uint64_t *nr = realloc(rtt, cap * sizeof *rtt);
            if (!nr)
                die("realloc");
            rtt = nr;
        }
        if (think_us > 0)
            usleep((useconds_t)think_us);
        rtt[cnt++] = round_trip(fds[i % active], 'M', idx++,
                                corrupt_at >= 0 && (uint64_t)corrupt_at == i);
        if ((i & 63) == 63 && now_ns() >= deadline)
            break;
    }
    round_trip(fds[0], 'E', idx++, 0);

    char afds[256];
    size_t ao = 0;
    afds[0] = '\0';
    for (uint64_t i = 0; i < active && ao + 16 < sizeof afds; i++)
        ao += (size_t)snprintf(afds + ao, sizeof afds - ao, "%s%d", i ? "," : "", fds[i]);
    for (uint64_t i = 0; i < n; i++)
        xclose(fds[i]);

    qsort(rtt, cnt, sizeof *rtt, cmp_u64);
    double med = cnt % 2 ? (double)rtt[cnt / 2]
                         : ((double)rtt[cnt / 2 - 1] + (double)rtt[cnt / 2]) / 2;
    size_t p99i = (cnt * 99 + 99) / 100; /* ceil(0.99 n), 1-based */
    if (p99i < 1)
        p99i = 1;
    printf("RESULT role=client conns=%" PRIu64 " active=%" PRIu64 " reqs=%zu"
           " rtt_med_us=%.3f rtt_p99_us=%.3f rtt_min_us=%.3f setup_s=%.3f"
           " active_fds=%s ok=1\n",
           n, active, cnt, med / 1e3, (double)rtt[p99i - 1] / 1e3,
           (double)rtt[0] / 1e3, setup_s, afds);
    free(rtt);
    free(fds);
    free(g_pat);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    arm_timeout_env("CONNBENCH_TIMEOUT", 300);
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return do_server(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return do_client(argc, argv);
    fprintf(stderr, "usage: %s server PATH\n"
                    "       %s client PATH N ACTIVE DURATION\n",
            g_prog, g_prog);
    return 1;
}
