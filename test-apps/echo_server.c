/*
 * echo_server - epoll based AF_UNIX SOCK_STREAM echo server.
 *
 *   echo_server PATH MODE [--one-byte] [--max-conns N]
 *
 * MODE:
 *   lt  level-triggered: listening socket and connections registered with
 *       EPOLLIN; connections come from accept4(SOCK_NONBLOCK), one accept
 *       per wakeup; one read() per wakeup of at most 64 KiB, or of exactly
 *       1 byte with --one-byte.
 *   et  edge-triggered: EPOLLIN|EPOLLET; accept() + fcntl(O_NONBLOCK),
 *       accept and read until EAGAIN.
 * Everything read is echoed back.  A write that would block buffers the
 * data and registers EPOLLOUT (|EPOLLET in et mode); once flushed EPOLLOUT
 * interest is dropped.  While more than 1 MiB is buffered for a connection
 * reading from it pauses (EPOLLIN interest dropped).  Peer EOF closes the
 * connection (after flushing pending output).
 *
 * Exits after SIGTERM/SIGINT, or once N connections have closed when
 * --max-conns N is given, printing
 *   RESULT role=echo_server conns=N bytes=B ok=1
 * (conns = connections accepted, bytes = bytes echoed).  A connection reset
 * by the peer is reported on stderr, the run ends with ok=0 and exit 1.
 */
#include "common.h"

#include <sys/epoll.h>

#define RD_CHUNK (64u << 10)
#define OUT_HIGH (1u << 20)
#define MAX_EVENTS 256

struct conn {
    int fd;
    unsigned char *out;
    size_t off, len, cap; /* pending output is out[off .. len) */
    int eof;              /* peer sent EOF */
    int rd_paused;        /* reading paused because too much is pending */
    uint32_t events;      /* currently registered epoll events */
};

static int g_et;
static int g_one_byte;
static int g_epfd;
static uint64_t g_max_conns;
static uint64_t g_accepted, g_closed, g_bytes, g_errors;
static unsigned char g_buf[RD_CHUNK];
static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static size_t pending(const struct conn *c)
{
    return c->len - c->off;
}

static void conn_close(struct conn *c)
{
    if (epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL) != 0)
        die("epoll_ctl(DEL)");
    xclose(c->fd);
    free(c->out);
    free(c);
    g_closed++;
}

/* peer went away with an error: report, close, remember the failure */
static void conn_fail(struct conn *c, const char *what)
{
    fprintf(stderr, "%s: %s: %s (closing connection)\n", g_prog, what,
            strerror(errno));
    g_errors++;
    conn_close(c);
}

static void append_out(struct conn *c, const unsigned char *p, size_t n)
{
    if (c->off > 0 && c->off == c->len)
        c->off = c->len = 0;
    if (c->len + n > c->cap) {
        if (c->off > 0) { /* compact */
            memmove(c->out, c->out + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->len + n > c->cap) {
            size_t ncap = c->cap ? c->cap : 4096;
            while (ncap < c->len + n)
                ncap *= 2;
            unsigned char *no = realloc(c->out, ncap);
            if (!no)
                die("realloc");
            c->out = no;
            c->cap = ncap;
        }
    }
    memcpy(c->out + c->len, p, n);
    c->len += n;
}

/* Try to write pending output.  Returns -1 if the connection was closed. */
static int flush_out(struct conn *c)
{
    while (pending(c) > 0) {
        ssize_t n = write(c->fd, c->out + c->off, pending(c));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EPIPE || errno == ECONNRESET) {
                conn_fail(c, "write");
                return -1;
            }
            die("write");
        }
        c->off += (size_t)n;
    }
    if (pending(c) == 0)
        c->off = c->len = 0;
    return 0;
}

/* Echo n bytes: write directly if nothing is pending, buffer the rest. */
static int echo(struct conn *c, const unsigned char *p, size_t n)
{
    if (pending(c) == 0) {
        while (n > 0) {
            ssize_t w = write(c->fd, p, n);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                if (errno == EPIPE || errno == ECONNRESET) {
                    conn_fail(c, "write");
                    return -1;
                }
                die("write");
            }
            p += w;
            n -= (size_t)w;
        }
    }
    if (n > 0)
        append_out(c, p, n);
    return 0;
}

/* Read (once in lt mode, until EAGAIN in et mode).  -1 if closed. */
static int do_read(struct conn *c)
{
    size_t want = g_one_byte ? 1 : RD_CHUNK;
    for (;;) {
        if (pending(c) >= OUT_HIGH) {
            c->rd_paused = 1;
            return 0;
        }
        ssize_t n = read(c->fd, g_buf, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == ECONNRESET) {
                conn_fail(c, "read");
                return -1;
            }
            die("read");
        }
        if (n == 0) {
            c->eof = 1;
            return 0;
        }
        g_bytes += (uint64_t)n;
        if (echo(c, g_buf, (size_t)n) < 0)
            return -1;
        if (!g_et)
            return 0;
    }
}

/* Re-register interest if it changed; close on EOF with nothing pending. */
static void update(struct conn *c)
{
    if (c->eof && pending(c) == 0) {
        conn_close(c);
        return;
    }
    uint32_t ev = 0;
    if (!c->eof && !c->rd_paused)
        ev |= EPOLLIN;
    if (pending(c) > 0)
        ev |= EPOLLOUT;
    if (g_et)
        ev |= EPOLLET;
    if (ev != c->events) {
        struct epoll_event e = {.events = ev, .data.ptr = c};
        if (epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &e) != 0)
            die("epoll_ctl(MOD)");
        c->events = ev;
    }
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && pending(c) > 0) {
        if (flush_out(c) < 0)
            return;
        if (c->rd_paused && pending(c) < OUT_HIGH / 2) {
            c->rd_paused = 0;
            /* in et mode the EPOLLIN edge may already have been consumed */
            if (g_et && !c->eof && do_read(c) < 0)
                return;
        }
    }
    if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !c->eof && !c->rd_paused) {
        if (do_read(c) < 0)
            return;
    }
    update(c);
}

static void add_conn(int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc");
    c->fd = fd;
    c->events = EPOLLIN | (g_et ? EPOLLET : 0);
    struct epoll_event e = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &e) != 0)
        die("epoll_ctl(ADD conn)");
    g_accepted++;
}

static void do_accept(int lfd)
{
    for (;;) {
        int fd;
        if (g_et) {
            fd = accept(lfd, NULL, NULL);
            if (fd >= 0)
                set_nonblock(fd);
        } else {
            fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        }
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die(g_et ? "accept" : "accept4");
        }
        add_conn(fd);
        if (!g_et)
            return; /* lt: one accept per wakeup, epoll reports the rest */
    }
}

static void usage(void)
{
    dief("usage: echo_server PATH lt|et [--one-byte] [--max-conns N]");
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    if (argc < 3)
        usage();
    const char *path = argv[1];
    if (strcmp(argv[2], "lt") == 0)
        g_et = 0;
    else if (strcmp(argv[2], "et") == 0)
        g_et = 1;
    else
        usage();
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--one-byte") == 0)
            g_one_byte = 1;
        else if (strcmp(argv[i], "--max-conns") == 0 && i + 1 < argc)
            g_max_conns = parse_size(argv[++i], "--max-conns");
        else
            usage();
    }

    /* SIGTERM/SIGINT are blocked except while inside epoll_pwait, so the
     * stop flag cannot be missed between the check and the wait. */
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

    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g_epfd < 0)
        die("epoll_create1");
    int lfd = listen_unix(path, SOCK_NONBLOCK);
    struct epoll_event le = {.events = EPOLLIN | (g_et ? EPOLLET : 0),
                             .data.ptr = NULL};
    if (epoll_ctl(g_epfd, EPOLL_CTL_ADD, lfd, &le) != 0)
        die("epoll_ctl(ADD listen)");

    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop && !(g_max_conns && g_closed >= g_max_conns)) {
        int n = epoll_pwait(g_epfd, evs, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                do_accept(lfd);
            else
                conn_event(evs[i].data.ptr, evs[i].events);
        }
    }
    xclose(lfd);
    if (unlink(path) != 0 && errno != ENOENT)
        die("unlink");
    printf("RESULT role=echo_server conns=%" PRIu64 " bytes=%" PRIu64
           " ok=%d\n", g_accepted, g_bytes, g_errors == 0);
    return g_errors == 0 ? 0 : 1;
}
