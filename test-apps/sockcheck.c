/*
 * sockcheck - differential semantics checker for AF_UNIX SOCK_STREAM.
 *
 *   sockcheck all          run every scenario
 *   sockcheck N [N...]     run the given scenarios (1..20)
 *
 * Every scenario runs twice: "cold", on a brand-new connection, and "warm",
 * after a few unlogged one-byte round trips (so that an accelerator has
 * switched the connection over before the script starts).
 *   sockcheck list         print the scenario names
 *
 * Each scenario forks: the child accepts (role "S", server) and the parent
 * connects (role "C", client) on a fresh connection; both run a fixed script
 * of socket operations and log one line per operation (return values, errno
 * names, bytes escaped, poll revents).  The two sides are sequenced with a
 * pair of pipes (a "barrier": write one byte / read one byte), so that every
 * logged result is deterministic; no step depends on timing (short sleeps
 * only make it likely that a blocking call really blocks, they never change
 * its result).
 *
 * Output (stdout) is the TRANSCRIPT: for each scenario a header line, then
 * the client's lines, then the server's lines.  It must be byte-identical
 * with and without an LD_PRELOAD shim that claims to be transparent; the
 * comparison is done by the caller.
 *
 * Every scenario runs under alarm(10): a hang prints "TIMEOUT" and exits 1.
 * Exit status 0 if the script ran to the end (whatever the results were),
 * 1 on an unexpected failure (setup error, hang, peer died).
 *
 * The program works in a private temporary directory (mkdtemp under
 * $TMPDIR or /tmp) and binds relative paths there, so that the addresses it
 * prints do not depend on the directory.
 */
#include "common.h"
#include <linux/sockios.h>
#include <sys/syscall.h>

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#define NSCEN 20
#define LOGCAP (1u << 18)
#define SOCK "sock"

/* ---- logging ---------------------------------------------------------- */

static char g_role = '?';     /* 'C' (parent, client) or 'S' (child, server) */
static char g_clog[LOGCAP];   /* client's log (private memory) */
static char *g_slog;          /* server's log (MAP_SHARED, read by parent) */
static size_t *g_sloglen;     /* in the shared mapping too */
static size_t g_cloglen;
static pid_t g_child = -1;
static int g_to_peer = -1, g_from_peer = -1;

static void log_raw(const char *s, size_t n)
{
    char *buf = g_role == 'S' ? g_slog : g_clog;
    size_t *len = g_role == 'S' ? g_sloglen : &g_cloglen;
    if (*len + n > LOGCAP - 64)
        n = *len < LOGCAP - 64 ? LOGCAP - 64 - *len : 0;
    memcpy(buf + *len, s, n);
    *len += n;
}

__attribute__((format(printf, 1, 2))) static void L(const char *fmt, ...)
{
    char line[1024];
    line[0] = g_role;
    line[1] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line + 2, sizeof line - 3, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    size_t len = 2 + ((size_t)n < sizeof line - 3 ? (size_t)n : sizeof line - 4);
    line[len++] = '\n';
    log_raw(line, len);
}

static void print_logs(void)
{
    out_all(g_clog, g_cloglen);
    g_cloglen = 0;
    if (g_slog) {
        out_all(g_slog, *g_sloglen);
        *g_sloglen = 0;
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char t[] = "TIMEOUT\n";
    char pre[2] = {g_role, ' '};
    log_raw(pre, 2);
    log_raw(t, sizeof t - 1);
    if (g_role == 'S')
        _exit(1); /* the parent prints our log */
    if (g_child > 0)
        kill(g_child, SIGKILL);
    print_logs();
    out_all(t, sizeof t - 1);
    _exit(1);
}

/* An unexpected failure of the test itself (not a logged result). */
__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    char msg[512];
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    L("FAIL %s (errno %d %s)", msg, e, strerror(e));
    fprintf(stderr, "sockcheck: %c: %s: %s\n", g_role, msg, strerror(e));
    if (g_role == 'S')
        _exit(1);
    if (g_child > 0)
        kill(g_child, SIGKILL);
    print_logs();
    exit(1);
}

/* ---- formatting --------------------------------------------------------- */

/* Quoted, escaped bytes (at most 96 shown). */
static const char *esc(const void *p, long n)
{
    static char b[4][512];
    static int i;
    i = (i + 1) & 3;
    char *o = b[i];
    if (n < 0)
        return "-";
    const unsigned char *s = p;
    size_t k = 0;
    o[k++] = '"';
    for (long j = 0; j < n && j < 96; j++) {
        unsigned char c = s[j];
        if (c == '"' || c == '\\') {
            o[k++] = '\\';
            o[k++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            o[k++] = (char)c;
        } else {
            k += (size_t)snprintf(o + k, 5, "\\x%02x", c);
        }
    }
    o[k++] = '"';
    if (n > 96)
        k += (size_t)snprintf(o + k, 8, "...");
    o[k] = 0;
    return o;
}

static const char *evname(unsigned ev)
{
    static const struct { unsigned bit; const char *name; } t[] = {
        {POLLIN, "IN"},         {POLLPRI, "PRI"},       {POLLOUT, "OUT"},
        {POLLERR, "ERR"},       {POLLHUP, "HUP"},       {POLLNVAL, "NVAL"},
        {POLLRDNORM, "RDNORM"}, {POLLRDBAND, "RDBAND"}, {POLLWRNORM, "WRNORM"},
        {POLLWRBAND, "WRBAND"}, {POLLRDHUP, "RDHUP"},
    };
    static char b[4][160];
    static int i;
    i = (i + 1) & 3;
    char *o = b[i];
    size_t k = 0;
    o[0] = 0;
    if (ev == 0)
        return "0";
    for (size_t j = 0; j < sizeof t / sizeof t[0]; j++) {
        if (ev & t[j].bit) {
            k += (size_t)snprintf(o + k, sizeof b[i] - k, "%s%s", k ? "|" : "", t[j].name);
            ev &= ~t[j].bit;
        }
    }
    if (ev)
        snprintf(o + k, sizeof b[i] - k, "%s0x%x", k ? "|" : "", ev);
    return o;
}

/* Address as the application sees it: length, family, path (escaped). */
static const char *addrstr(const struct sockaddr_un *a, socklen_t len)
{
    static char b[4][400];
    static int i;
    i = (i + 1) & 3;
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len < sizeof(sa_family_t)) {
        snprintf(b[i], sizeof b[i], "len=%u", (unsigned)len);
        return b[i];
    }
    long plen = len > off ? (long)(len - off) : 0;
    if (plen > (long)sizeof a->sun_path)
        plen = sizeof a->sun_path;
    snprintf(b[i], sizeof b[i], "len=%u family=%s path=%s", (unsigned)len,
             a->sun_family == AF_UNIX ? "AF_UNIX" : "OTHER", esc(a->sun_path, plen));
    return b[i];
}

/* ---- synchronisation ------------------------------------------------------ */

/* Tell the peer we reached a point. */
static void sig_peer(void)
{
    if (barrier_signal(g_to_peer) != 0)
        fail("barrier write");
}

/* Wait until the peer reached its matching point. */
static void wait_peer(void)
{
    if (barrier_wait(g_from_peer) != 0)
        fail(errno ? "barrier read" : "barrier: peer died");
}

static void send_u64(uint64_t v)
{
    unsigned char b[8];
    put_le64(b, v);
    for (size_t k = 0; k < 8;) {
        ssize_t n = write(g_to_peer, b + k, 8 - k);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("pipe write");
        k += (size_t)n;
    }
}

static uint64_t recv_u64(void)
{
    unsigned char b[8];
    for (size_t k = 0; k < 8;) {
        ssize_t n = read(g_from_peer, b + k, 8 - k);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("pipe read");
        k += (size_t)n;
    }
    return get_le64(b);
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

#define IS_C (g_role == 'C')
#define IS_S (g_role == 'S')

/* Run a call, keep its result and errno. */
#define DO(expr) ((void)(r_ = (long)(expr), e_ = errno))
static long r_;
static int e_;
#define RV rv(r_, e_)

static void xsigaction(int sig, void (*h)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0)
        fail("sigaction");
}

static void do_poll(int fd, short events, int timeout, const char *what)
{
    struct pollfd p = {fd, events, 0};
    DO(poll(&p, 1, timeout));
    L("poll(%s,%s,%d) = %s revents=%s", what, evname((unsigned)(unsigned short)events),
      timeout, RV, evname((unsigned)(unsigned short)p.revents));
}

static void do_read(int fd, size_t len)
{
    char buf[4096];
    if (len > sizeof buf)
        len = sizeof buf;
    DO(read(fd, buf, len));
    L("read(%zu) = %s %s", len, RV, esc(buf, r_));
}

static void do_write(int fd, const char *s)
{
    DO(write(fd, s, strlen(s)));
    L("write(%s) = %s", esc(s, (long)strlen(s)), RV);
}

/* ---- scenario 1: basic I/O calls -------------------------------------------- */

/* The writer hands over to the reader and waits until it has read. */
static void handover(void)
{
    sig_peer();
    wait_peer();
}

static void sc1(int fd)
{
    char buf[256];
    /* write / read */
    if (IS_C) {
        do_write(fd, "hello");
        handover();
    } else {
        wait_peer();
        do_read(fd, 64);
        sig_peer();
    }
    /* writev / readv */
    if (IS_C) {
        struct iovec iov[4] = {{"ab", 2}, {"", 0}, {"cdefg", 5}, {"h\0i", 3}};
        DO(writev(fd, iov, 4));
        L("writev(2,0,5,3) = %s", RV);
        handover();
    } else {
        wait_peer();
        char a[2], b[3], c[10];
        memset(c, 0, sizeof c);
        struct iovec iov[3] = {{a, 2}, {b, 3}, {c, 10}};
        DO(readv(fd, iov, 3));
        L("readv(2,3,10) = %s %s %s %s", RV, esc(a, 2), esc(b, 3), esc(c, r_ > 5 ? r_ - 5 : 0));
        sig_peer();
    }
    /* send / recv, other direction */
    if (IS_S) {
        DO(send(fd, "world", 5, 0));
        L("send(\"world\",0) = %s", RV);
        handover();
    } else {
        wait_peer();
        DO(recv(fd, buf, 64, 0));
        L("recv(64,0) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* sendto(NULL) / recvfrom, both directions */
    for (int dir = 0; dir < 2; dir++) {
        int writer = dir == 0 ? 'C' : 'S';
        if (g_role == writer) {
            DO(sendto(fd, "xyz", 3, 0, NULL, 0));
            L("sendto(\"xyz\",NULL) = %s", RV);
            handover();
            DO(sendto(fd, "q", 1, 0, NULL, 0));
            L("sendto(\"q\",NULL) = %s", RV);
            handover();
        } else {
            wait_peer();
            struct sockaddr_un a;
            memset(&a, 0xee, sizeof a);
            socklen_t al = sizeof a;
            DO(recvfrom(fd, buf, 64, 0, (struct sockaddr *)&a, &al));
            L("recvfrom(64) = %s %s addr: %s", RV, esc(buf, r_), addrstr(&a, al));
            sig_peer();
            wait_peer();
            DO(recvfrom(fd, buf, 64, 0, NULL, NULL));
            L("recvfrom(64,NULL) = %s %s", RV, esc(buf, r_));
            sig_peer();
        }
    }
    /* sendto with an address on a connected stream socket */
    if (IS_C) {
        struct sockaddr_un a;
        fill_sockaddr(&a, SOCK);
        DO(sendto(fd, "zz", 2, 0, (struct sockaddr *)&a, sizeof a));
        L("sendto(\"zz\",addr) = %s", RV);
        handover();
    } else {
        wait_peer();
        DO(recv(fd, buf, 64, MSG_DONTWAIT));
        L("recv(64,DONTWAIT) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* sendmsg / recvmsg, both directions */
    for (int dir = 0; dir < 2; dir++) {
        int writer = dir == 0 ? 'C' : 'S';
        if (g_role == writer) {
            struct iovec iov[2] = {{"msg", 3}, {"-one", 4}};
            struct msghdr m;
            memset(&m, 0, sizeof m);
            m.msg_iov = iov;
            m.msg_iovlen = 2;
            DO(sendmsg(fd, &m, 0));
            L("sendmsg(3+4) = %s", RV);
            handover();
        } else {
            wait_peer();
            char x[4], y[32];
            memset(y, 0, sizeof y);
            struct iovec iov[2] = {{x, 4}, {y, 32}};
            struct sockaddr_un a;
            memset(&a, 0xee, sizeof a);
            struct msghdr m;
            memset(&m, 0, sizeof m);
            m.msg_name = &a;
            m.msg_namelen = sizeof a;
            m.msg_iov = iov;
            m.msg_iovlen = 2;
            m.msg_flags = 0x7fff;
            DO(recvmsg(fd, &m, 0));
            L("recvmsg(4+32) = %s %s %s flags=0x%x namelen=%u addr: %s", RV, esc(x, r_ < 4 ? r_ : 4),
              esc(y, r_ > 4 ? r_ - 4 : 0), (unsigned)m.msg_flags, (unsigned)m.msg_namelen,
              addrstr(&a, m.msg_namelen));
            sig_peer();
        }
    }
}

/* ---- scenario 2: recv flags ------------------------------------------------ */

static void sc2(int fd)
{
    char buf[256];
    /* MSG_PEEK */
    if (IS_C) {
        do_write(fd, "0123456789");
        handover();
    } else {
        wait_peer();
        DO(recv(fd, buf, 4, MSG_PEEK));
        L("recv(4,PEEK) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 64, MSG_PEEK));
        L("recv(64,PEEK) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 3, 0));
        L("recv(3,0) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 64, MSG_PEEK | MSG_DONTWAIT));
        L("recv(64,PEEK|DONTWAIT) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 64, 0));
        L("recv(64,0) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 64, MSG_PEEK | MSG_DONTWAIT));
        L("recv(64,PEEK|DONTWAIT) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* MSG_WAITALL: the reader blocks while the writer sends in 3 calls */
    if (IS_C) {
        wait_peer();
        do_write(fd, "aaa");
        msleep(30);
        do_write(fd, "bbbb");
        msleep(30);
        do_write(fd, "ccccc");
        wait_peer();
    } else {
        sig_peer();
        DO(recv(fd, buf, 12, MSG_WAITALL));
        L("recv(12,WAITALL) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* WAITALL with more available than asked, PEEK|WAITALL */
    if (IS_C) {
        do_write(fd, "ABCDEFGHIJ");
        handover();
    } else {
        wait_peer();
        DO(recv(fd, buf, 4, MSG_WAITALL | MSG_PEEK));
        L("recv(4,WAITALL|PEEK) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 5, MSG_WAITALL));
        L("recv(5,WAITALL) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 64, 0));
        L("recv(64,0) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* MSG_DONTWAIT on empty, zero-length reads and writes */
    if (IS_S) {
        DO(recv(fd, buf, 64, MSG_DONTWAIT));
        L("recv(64,DONTWAIT) empty = %s", RV);
        DO(read(fd, buf, 0));
        L("read(0) empty = %s", RV);
        DO(recv(fd, buf, 0, MSG_DONTWAIT));
        L("recv(0,DONTWAIT) empty = %s", RV);
        sig_peer();
    } else {
        wait_peer();
        DO(recv(fd, buf, 64, MSG_DONTWAIT));
        L("recv(64,DONTWAIT) empty = %s", RV);
        DO(write(fd, buf, 0));
        L("write(0) = %s", RV);
        DO(send(fd, buf, 0, 0));
        L("send(0) = %s", RV);
        do_write(fd, "zero");
        sig_peer();
    }
    if (IS_S) {
        wait_peer();
        DO(recv(fd, buf, 0, 0));
        L("recv(0,0) with data = %s", RV);
        DO(read(fd, buf, 0));
        L("read(0) with data = %s", RV);
        DO(recv(fd, buf, 64, 0));
        L("recv(64,0) = %s %s", RV, esc(buf, r_));
        sig_peer();
    }
    /* WAITALL ended early by EOF (shutdown) */
    if (IS_C) {
        wait_peer();
        do_write(fd, "eof");
        DO(shutdown(fd, SHUT_WR));
        L("shutdown(WR) = %s", RV);
        sig_peer();
    } else {
        wait_peer();
        DO(recv(fd, buf, 10, MSG_WAITALL));
        L("recv(10,WAITALL) = %s %s", RV, esc(buf, r_));
        DO(recv(fd, buf, 10, MSG_WAITALL));
        L("recv(10,WAITALL) = %s", RV);
        DO(recv(fd, buf, 10, MSG_DONTWAIT));
        L("recv(10,DONTWAIT) = %s", RV);
    }
}

/* ---- scenario 3: non-blocking mode, FIONREAD, full buffer ------------------- */

static void sc3(int fd)
{
    char buf[4096];
    if (IS_C) {
        int fl = fcntl(fd, F_GETFL);
        DO(fcntl(fd, F_SETFL, fl | O_NONBLOCK));
        L("fcntl(SETFL,NONBLOCK) = %s", RV);
        L("F_GETFL&O_NONBLOCK = %d", (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
        DO(read(fd, buf, 64));
        L("read(64) empty = %s", RV);
        DO(recv(fd, buf, 64, MSG_PEEK));
        L("recv(64,PEEK) empty = %s", RV);
    } else {
        int one = 1;
        DO(ioctl(fd, FIONBIO, &one));
        L("ioctl(FIONBIO,1) = %s", RV);
        L("F_GETFL&O_NONBLOCK = %d", (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
        DO(read(fd, buf, 64));
        L("read(64) empty = %s", RV);
        int n = -7;
        DO(ioctl(fd, FIONREAD, &n));
        L("ioctl(FIONREAD) empty = %s n=%d", RV, n);
        sig_peer();
    }
    /* FIONREAD counts what the peer wrote */
    if (IS_C) {
        wait_peer();
        memset(buf, 'r', sizeof buf);
        DO(write(fd, buf, 1234));
        L("write(1234) = %s", RV);
        handover();
    } else {
        wait_peer();
        int n = -7;
        DO(ioctl(fd, FIONREAD, &n));
        L("ioctl(FIONREAD) = %s n=%d", RV, n);
        DO(recv(fd, buf, 1000, 0));
        L("recv(1000) = %s", RV);
        DO(ioctl(fd, FIONREAD, &n));
        L("ioctl(FIONREAD) = %s n=%d", RV, n);
        DO(read(fd, buf, sizeof buf));
        L("read(4096) = %s", RV);
        DO(ioctl(fd, FIONREAD, &n));
        L("ioctl(FIONREAD) = %s n=%d", RV, n);
        DO(read(fd, buf, sizeof buf));
        L("read(4096) empty = %s", RV);
        sig_peer();
    }
    /* a non-blocking writer fills the buffer, the peer drains it */
    if (IS_C) {
        memset(buf, 'f', sizeof buf);
        uint64_t total = 0;
        long last;
        int laste;
        for (;;) {
            last = write(fd, buf, sizeof buf);
            laste = errno;
            if (last <= 0)
                break;
            total += (uint64_t)last;
            if (total > (1ull << 32))
                fail("writer never saw EAGAIN");
        }
        L("fill: total>0 = %d last = %s", total > 0, rv(last, laste));
        {
            struct pollfd p = {fd, POLLOUT, 0};
            DO(poll(&p, 1, 0));
            L("poll(OUT,0) when full = %s revents=%s", RV, evname((unsigned)p.revents));
        }
        send_u64(total);
        do_poll(fd, POLLOUT, 5000, "fd");
        wait_peer();
        do_poll(fd, POLLOUT, 0, "fd");
        DO(write(fd, "after", 5));
        L("write(\"after\") = %s", RV);
        sig_peer();
    } else {
        uint64_t total = recv_u64();
        uint64_t got = 0;
        int bad = 0;
        while (got < total) {
            struct pollfd p = {fd, POLLIN, 0};
            int k = poll(&p, 1, 5000);
            if (k != 1) {
                L("drain: poll = %d after %s bytes", k, got == total ? "all" : "some");
                fail("drain poll");
            }
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EAGAIN)
                continue;
            if (n <= 0)
                fail("drain read");
            for (ssize_t j = 0; j < n; j++)
                bad |= buf[j] != 'f';
            got += (uint64_t)n;
        }
        L("drained all = %d bad = %d", got == total, bad);
        DO(read(fd, buf, sizeof buf));
        L("read(4096) empty = %s", RV);
        sig_peer();
        wait_peer();
        do_poll(fd, POLLIN, 5000, "fd");
        do_read(fd, 64);
    }
}

/* ---- scenario 4: half-close ----------------------------------------------- */

#define PMASK (POLLIN | POLLOUT | POLLRDHUP | POLLHUP | POLLERR)

static void sc4(int fd)
{
    if (IS_C) {
        do_write(fd, "tail");
        DO(shutdown(fd, SHUT_WR));
        L("shutdown(WR) = %s", RV);
        sig_peer();
    } else {
        wait_peer();
        do_read(fd, 64);
        do_read(fd, 64);
        do_read(fd, 64);
        do_poll(fd, PMASK, 0, "fd");
        do_write(fd, "resp");
        sig_peer();
    }
    if (IS_C) {
        wait_peer();
        do_read(fd, 64);
        do_poll(fd, PMASK, 0, "fd");
        DO(write(fd, "x", 1));
        L("write after SHUT_WR = %s", RV);
        DO(shutdown(fd, SHUT_RD));
        L("shutdown(RD) = %s", RV);
        do_poll(fd, PMASK, 0, "fd");
        do_read(fd, 64);
        sig_peer();
    } else {
        wait_peer();
        do_poll(fd, PMASK, 0, "fd");
        DO(write(fd, "more", 4));
        L("write after peer SHUT_RD = %s", RV);
        DO(send(fd, "more", 4, MSG_DONTWAIT | MSG_NOSIGNAL));
        L("send(DONTWAIT|NOSIGNAL) after peer SHUT_RD = %s", RV);
        do_read(fd, 64);
        DO(close(fd));
        L("close = %s", RV);
        sig_peer();
    }
    if (IS_C) {
        wait_peer();
        do_read(fd, 64);
        do_poll(fd, PMASK, 0, "fd");
        DO(write(fd, "x", 1));
        L("write after peer close = %s", RV);
    }
}

/* ---- scenario 5: EPIPE and SIGPIPE --------------------------------------------- */

static volatile sig_atomic_t g_sigpipes;
static void on_sigpipe(int s)
{
    (void)s;
    g_sigpipes++;
}

static void sc5(int fd)
{
    if (IS_S) {
        do_write(fd, "bye");
        DO(close(fd));
        L("close = %s", RV);
        sig_peer();
        return;
    }
    wait_peer();
    do_poll(fd, PMASK, 0, "fd");
    do_read(fd, 64);
    do_read(fd, 64);
    do_poll(fd, PMASK, 0, "fd");
    char buf[64];
    DO(recv(fd, buf, 64, MSG_DONTWAIT));
    L("recv(DONTWAIT) = %s", RV);
    /* SIGPIPE ignored (the default of this program) */
    DO(write(fd, "x", 1));
    L("write (SIGPIPE ignored) = %s", RV);
    /* SIGPIPE counted */
    g_sigpipes = 0;
    xsigaction(SIGPIPE, on_sigpipe, SA_RESTART);
    DO(send(fd, "x", 1, MSG_NOSIGNAL));
    L("send(NOSIGNAL) = %s sigpipes=%d", RV, (int)g_sigpipes);
    DO(write(fd, "x", 1));
    L("write = %s sigpipes=%d", RV, (int)g_sigpipes);
    struct iovec iov[2] = {{"a", 1}, {"b", 1}};
    DO(writev(fd, iov, 2));
    L("writev = %s sigpipes=%d", RV, (int)g_sigpipes);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    DO(sendmsg(fd, &m, 0));
    L("sendmsg(0) = %s sigpipes=%d", RV, (int)g_sigpipes);
    DO(sendmsg(fd, &m, MSG_NOSIGNAL));
    L("sendmsg(NOSIGNAL) = %s sigpipes=%d", RV, (int)g_sigpipes);
    DO(send(fd, "x", 1, MSG_DONTWAIT));
    L("send(DONTWAIT) = %s sigpipes=%d", RV, (int)g_sigpipes);
    xsigaction(SIGPIPE, SIG_IGN, 0);
}

/* ---- scenario 6: EOF only after every byte ------------------------------------ */

static void sc6(int fd)
{
    enum { TOTAL = 100000 };
    if (IS_S) {
        unsigned char *p = xmalloc(TOTAL);
        fill_pattern(p, TOTAL, 6);
        size_t off = 0;
        while (off < TOTAL) {
            size_t n = TOTAL - off < 3001 ? TOTAL - off : 3001;
            ssize_t k = write(fd, p + off, n);
            if (k < 0 && errno == EINTR)
                continue;
            if (k <= 0)
                fail("write");
            off += (size_t)k;
        }
        L("wrote %zu", off);
        DO(close(fd));
        L("close = %s", RV);
        free(p);
        return;
    }
    unsigned char *want = xmalloc(TOTAL);
    fill_pattern(want, TOTAL, 6);
    cks_t c, w;
    cks_init(&c);
    cks_init(&w);
    cks_update(&w, want, TOTAL);
    uint64_t total = 0, reads = 0;
    int mism = 0;
    unsigned char b[7];
    for (;;) {
        ssize_t n = read(fd, b, 7);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            L("read = %s after %" PRIu64 " bytes", rv(n, errno), total);
            break;
        }
        if (n == 0)
            break;
        if (total + (uint64_t)n <= TOTAL && memcmp(want + total, b, (size_t)n) != 0)
            mism = 1;
        cks_update(&c, b, (size_t)n);
        total += (uint64_t)n;
        reads++;
    }
    L("total=%" PRIu64 " cks=%016" PRIx64 " expected=%016" PRIx64 " mismatch=%d", total,
      cks_final(&c), cks_final(&w), mism);
    L("reads>=%d: %d", TOTAL / 7, reads >= TOTAL / 7);
    do_read(fd, 7);
    free(want);
}

/* ---- scenario 7: readiness: select, poll, epoll -------------------------------- */

static void do_select(int fd, int rd, int wr, long ms)
{
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    if (rd)
        FD_SET(fd, &r);
    if (wr)
        FD_SET(fd, &w);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    DO(select(fd + 1, rd ? &r : NULL, wr ? &w : NULL, NULL, &tv));
    L("select(%s%s,%ldms) = %s r=%d w=%d", rd ? "R" : "", wr ? "W" : "", ms, RV,
      rd && FD_ISSET(fd, &r), wr && FD_ISSET(fd, &w));
}

static void do_epoll_wait(int ep, int ms)
{
    struct epoll_event ev[4];
    memset(ev, 0, sizeof ev);
    DO(epoll_wait(ep, ev, 4, ms));
    if (r_ > 0)
        L("epoll_wait(%d) = %s events=%s data=%" PRIu64, ms, RV, evname(ev[0].events), ev[0].data.u64);
    else
        L("epoll_wait(%d) = %s", ms, RV);
}

static void do_epoll_ctl(int ep, int op, int fd, unsigned events)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = 42;
    DO(epoll_ctl(ep, op, fd, &ev));
    L("epoll_ctl(%s,%s%s%s) = %s",
      op == EPOLL_CTL_ADD ? "ADD" : op == EPOLL_CTL_MOD ? "MOD" : "DEL",
      evname(events & ~(unsigned)(EPOLLET | EPOLLONESHOT)), events & EPOLLET ? "|ET" : "",
      events & EPOLLONESHOT ? "|ONESHOT" : "", RV);
}

static void sc7(int fd)
{
    /* a fresh connection is writable at once */
    {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
            fail("epoll_create1");
        do_epoll_ctl(ep, EPOLL_CTL_ADD, fd, EPOLLOUT);
        do_epoll_wait(ep, 5000);
        close(ep);
        do_select(fd, 0, 1, 5000);
        do_poll(fd, POLLOUT, 5000, "fd");
        sig_peer();
        wait_peer();
    }
    /* select: empty, then a byte arrives while we block */
    if (IS_C) {
        do_select(fd, 1, 0, 0);
        sig_peer();
        do_select(fd, 1, 0, 5000);
        do_read(fd, 64);
        sig_peer();
    } else {
        wait_peer();
        msleep(30);
        do_write(fd, "s");
        wait_peer();
    }
    /* poll / ppoll: the same */
    if (IS_C) {
        do_poll(fd, POLLIN, 0, "fd");
        sig_peer();
        do_poll(fd, POLLIN, 5000, "fd");
        do_read(fd, 64);
        sig_peer();
        struct pollfd p = {fd, POLLIN, 0};
        struct timespec ts = {5, 0};
        DO(ppoll(&p, 1, &ts, NULL));
        L("ppoll(IN,5s) = %s revents=%s", RV, evname((unsigned)p.revents));
        do_read(fd, 64);
        sig_peer();
    } else {
        wait_peer();
        msleep(30);
        do_write(fd, "p");
        wait_peer();
        msleep(30);
        do_write(fd, "pp");
        wait_peer();
    }
    /* epoll, level-triggered */
    int ep = -1;
    if (IS_C) {
        ep = epoll_create1(0);
        if (ep < 0)
            fail("epoll_create1");
        do_epoll_ctl(ep, EPOLL_CTL_ADD, fd, EPOLLIN);
        do_epoll_wait(ep, 0);
        sig_peer();
        wait_peer();
        for (int i = 0; i < 3; i++) {
            do_epoll_wait(ep, 5000);
            do_read(fd, 1);
        }
        do_epoll_wait(ep, 0);
    } else {
        wait_peer();
        do_write(fd, "abc");
        sig_peer();
    }
    /* epoll, edge-triggered */
    if (IS_C) {
        do_epoll_ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLET);
        do_epoll_wait(ep, 0);
        sig_peer();
        wait_peer();
        do_epoll_wait(ep, 5000);
        do_read(fd, 1);
        do_epoll_wait(ep, 100);
        sig_peer();
        do_epoll_wait(ep, 5000);
        do_epoll_wait(ep, 0);
        do_read(fd, 64);
        do_epoll_wait(ep, 0);
    } else {
        wait_peer();
        do_write(fd, "abc");
        sig_peer();
        wait_peer();
        msleep(30);
        do_write(fd, "d");
    }
    /* EPOLLONESHOT */
    if (IS_C) {
        do_epoll_ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT);
        sig_peer();
        wait_peer();
        do_epoll_wait(ep, 5000);
        do_epoll_wait(ep, 0);
        do_read(fd, 1);
        do_epoll_wait(ep, 0);
        do_epoll_ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLONESHOT);
        do_epoll_wait(ep, 5000);
        do_epoll_wait(ep, 0);
        do_read(fd, 64);
    } else {
        wait_peer();
        do_write(fd, "xy");
        sig_peer();
    }
    /* EPOLLRDHUP after the peer's shutdown(SHUT_WR), then EPOLL_CTL_DEL */
    if (IS_C) {
        do_epoll_ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP);
        do_epoll_wait(ep, 0);
        sig_peer();
        do_epoll_wait(ep, 5000);
        do_read(fd, 64);
        do_epoll_wait(ep, 0);
        do_epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0);
        do_epoll_wait(ep, 0);
        do_select(fd, 1, 1, 0);
        do_poll(fd, PMASK, 0, "fd");
        close(ep);
    } else {
        wait_peer();
        msleep(30);
        DO(shutdown(fd, SHUT_WR));
        L("shutdown(WR) = %s", RV);
    }
}

/* ---- scenario 8: addresses -------------------------------------------------- */

static struct sockaddr_un g_acc_addr;
static socklen_t g_acc_len;

static void names(int fd, const char *tag)
{
    struct sockaddr_un a;
    socklen_t al;
    memset(&a, 0xee, sizeof a);
    al = sizeof a;
    DO(getsockname(fd, (struct sockaddr *)&a, &al));
    L("%sgetsockname = %s %s", tag, RV, r_ == 0 ? addrstr(&a, al) : "");
    memset(&a, 0xee, sizeof a);
    al = sizeof a;
    DO(getpeername(fd, (struct sockaddr *)&a, &al));
    L("%sgetpeername = %s %s", tag, RV, r_ == 0 ? addrstr(&a, al) : "");
    /* truncated buffer: the full length is reported */
    memset(&a, 0xee, sizeof a);
    al = 4;
    DO(getpeername(fd, (struct sockaddr *)&a, &al));
    L("%sgetpeername(buf 4) = %s len=%u bytes=%s", tag, RV, (unsigned)al, esc(&a, 6));
    memset(&a, 0xee, sizeof a);
    al = 4;
    DO(getsockname(fd, (struct sockaddr *)&a, &al));
    L("%sgetsockname(buf 4) = %s len=%u bytes=%s", tag, RV, (unsigned)al, esc(&a, 6));
}

static int accept_one(int lfd, const char *what)
{
    struct sockaddr_un a;
    memset(&a, 0xee, sizeof a);
    socklen_t al = sizeof a;
    DO(accept(lfd, (struct sockaddr *)&a, &al));
    L("accept(%s) = %s addr: %s", what, r_ >= 0 ? "fd" : RV, addrstr(&a, al));
    if (r_ < 0)
        fail("accept");
    return (int)r_;
}

static void exchange(int a, int b, const char *tag)
{
    char buf[64];
    DO(write(a, "ping", 4));
    L("%s write(\"ping\") = %s", tag, RV);
    DO(read(b, buf, sizeof buf));
    L("%s read = %s %s", tag, RV, esc(buf, r_));
    DO(write(b, "pong!", 5));
    L("%s write(\"pong!\") = %s", tag, RV);
    DO(read(a, buf, sizeof buf));
    L("%s read = %s %s", tag, RV, esc(buf, r_));
}

static void sc8(int fd)
{
    if (IS_S) {
        L("accept addr: %s", addrstr(&g_acc_addr, g_acc_len));
        names(fd, "");
        sig_peer();
        wait_peer();
        return;
    }
    wait_peer();
    names(fd, "");
    sig_peer();

    /* connect, send, and only then accept (single process) */
    int l = listen_unix("early.sock", 0);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    fill_sockaddr(&sa, "early.sock");
    DO(connect(c, (struct sockaddr *)&sa, sizeof sa));
    L("early: connect = %s", RV);
    DO(write(c, "early", 5));
    L("early: write(\"early\") = %s", RV);
    DO(send(c, "+more", 5, 0));
    L("early: send(\"+more\") = %s", RV);
    int s = accept_one(l, "early");
    int n = -7;
    DO(ioctl(s, FIONREAD, &n));
    L("early: ioctl(FIONREAD) = %s n=%d", RV, n);
    char buf[64];
    DO(read(s, buf, sizeof buf));
    L("early: read = %s %s", RV, esc(buf, r_));
    exchange(c, s, "early:");
    exchange(s, c, "early(rev):");
    names(c, "early: client ");
    names(s, "early: server ");
    close(c);
    DO(read(s, buf, sizeof buf));
    L("early: read after client close = %s", RV);
    close(s);

    /* a client that binds its socket itself before connecting */
    c = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ca;
    fill_sockaddr(&ca, "csock");
    unlink("csock");
    DO(bind(c, (struct sockaddr *)&ca, sizeof ca));
    L("bound: bind(\"csock\") = %s", RV);
    DO(connect(c, (struct sockaddr *)&sa, sizeof sa));
    L("bound: connect = %s", RV);
    s = accept_one(l, "bound");
    exchange(c, s, "bound:");
    names(c, "bound: client ");
    names(s, "bound: server ");
    {
        struct sockaddr_un a;
        memset(&a, 0xee, sizeof a);
        socklen_t al = sizeof a;
        DO(write(c, "from", 4));
        DO(recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&a, &al));
        L("bound: recvfrom = %s %s addr: %s", RV, esc(buf, r_), addrstr(&a, al));
    }
    close(c);
    close(s);
    close(l);
    unlink("early.sock");
    unlink("csock");

    /* abstract listener: the name contains our pid; printed masked */
    char name[64];
    int nl = snprintf(name, sizeof name, "%csockcheck.%010d", 0, (int)getpid());
    struct sockaddr_un aa;
    memset(&aa, 0, sizeof aa);
    aa.sun_family = AF_UNIX;
    memcpy(aa.sun_path, name, (size_t)nl);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)nl);
    l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(l, (struct sockaddr *)&aa, alen) != 0 || listen(l, 4) != 0)
        fail("abstract bind/listen");
    c = socket(AF_UNIX, SOCK_STREAM, 0);
    DO(connect(c, (struct sockaddr *)&aa, alen));
    L("abstract: connect = %s", RV);
    s = accept_one(l, "abstract");
    exchange(c, s, "abstract:");
    {
        struct sockaddr_un a;
        memset(&a, 0xee, sizeof a);
        socklen_t al = sizeof a;
        DO(getpeername(c, (struct sockaddr *)&a, &al));
        int same = al == alen && memcmp(a.sun_path, name, (size_t)nl) == 0;
        L("abstract: client getpeername = %s len-ok=%d same=%d", RV, al == alen, same);
        memset(&a, 0xee, sizeof a);
        al = sizeof a;
        DO(getsockname(s, (struct sockaddr *)&a, &al));
        same = al == alen && memcmp(a.sun_path, name, (size_t)nl) == 0;
        L("abstract: server getsockname = %s len-ok=%d same=%d", RV, al == alen, same);
        memset(&a, 0xee, sizeof a);
        al = sizeof a;
        DO(getpeername(s, (struct sockaddr *)&a, &al));
        L("abstract: server getpeername = %s %s", RV, addrstr(&a, al));
        memset(&a, 0xee, sizeof a);
        al = sizeof a;
        DO(getsockname(c, (struct sockaddr *)&a, &al));
        L("abstract: client getsockname = %s %s", RV, addrstr(&a, al));
    }
    close(c);
    close(s);
    close(l);
}

/* ---- scenario 9: full duplex ------------------------------------------------- */

static void sc9(int fd)
{
    enum { TOT = 1 << 20, CH = 1000 };
    set_nonblock(fd);
    unsigned char *out = xmalloc(TOT), *in = xmalloc(TOT);
    fill_pattern(out, TOT, IS_C ? 91 : 92);
    fill_pattern(in, TOT, IS_C ? 92 : 91);
    cks_t c, w;
    cks_init(&c);
    cks_init(&w);
    cks_update(&w, in, TOT);
    size_t sent = 0, got = 0;
    int wr_done = 0, eof = 0, mism = 0;
    unsigned char buf[65536];
    while (!(wr_done && eof)) {
        struct pollfd p = {fd, (short)((wr_done ? 0 : POLLOUT) | (eof ? 0 : POLLIN)), 0};
        int k = poll(&p, 1, 5000);
        if (k < 0 && errno == EINTR)
            continue;
        if (k != 1) {
            L("poll = %s sent=%zu got=%zu", rv(k, errno), sent, got);
            fail("duplex: poll");
        }
        if (!eof && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            for (;;) {
                ssize_t n = read(fd, buf, sizeof buf);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                if (n < 0)
                    fail("duplex: read");
                if (n == 0) {
                    eof = 1;
                    break;
                }
                if (got + (size_t)n > TOT || memcmp(in + got, buf, (size_t)n) != 0)
                    mism = 1;
                cks_update(&c, buf, (size_t)n);
                got += (size_t)n;
            }
        }
        if (!wr_done && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
            while (sent < TOT) {
                size_t n = TOT - sent < CH ? TOT - sent : CH;
                ssize_t k2 = write(fd, out + sent, n);
                if (k2 < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                if (k2 <= 0)
                    fail("duplex: write");
                sent += (size_t)k2;
            }
            if (sent == TOT) {
                if (shutdown(fd, SHUT_WR) != 0)
                    fail("duplex: shutdown");
                wr_done = 1;
            }
        }
    }
    L("duplex: sent=%zu got=%zu cks=%016" PRIx64 " expected=%016" PRIx64 " mismatch=%d", sent,
      got, cks_final(&c), cks_final(&w), mism);
    free(out);
    free(in);
}

/* ---- scenario 10: close with unread data (ECONNRESET) ----------------------- */

static void sc10(int fd)
{
    if (IS_C) {
        do_write(fd, "unread");
        handover();
        do_poll(fd, PMASK, 0, "fd");
        do_read(fd, 64);
        do_read(fd, 64);
        do_poll(fd, PMASK, 0, "fd");
        DO(write(fd, "x", 1));
        L("write = %s", RV);
    } else {
        wait_peer();
        int n = -7;
        DO(ioctl(fd, FIONREAD, &n));
        L("ioctl(FIONREAD) = %s n=%d", RV, n);
        DO(close(fd));
        L("close with unread data = %s", RV);
        sig_peer();
    }
}

/* ---- scenario 11: descriptor copies ------------------------------------------ */

static void sc11(int fd)
{
    if (IS_C) {
        int d = dup(fd);
        L("dup = %s", d >= 0 ? "ok" : "fail");
        do_write(d, "via-dup");
        DO(close(d));
        L("close(dup) = %s", RV);
        do_write(fd, "|orig");
        d = fcntl(fd, F_DUPFD_CLOEXEC, 50);
        L("F_DUPFD_CLOEXEC = %s", d >= 50 ? "ok" : "fail");
        do_write(d, "|fdup");
        DO(close(d));
        DO(dup2(fd, 60));
        L("dup2 = %s", RV);
        do_write(60, "|dup2");
        DO(dup3(fd, 61, O_CLOEXEC));
        L("dup3 = %s", RV);
        do_write(61, "|dup3");
        DO(close_range(60, 61, 0));
        L("close_range = %s", RV);
        DO(write(60, "x", 1));
        L("write(closed) = %s", RV);
        int moved = dup(fd);
        DO(close(fd));
        L("close(original) = %s", RV);
        do_write(moved, "|moved");
        handover();
        do_read(moved, 64);
        DO(close(moved));
        L("close(last copy) = %s", RV);
    } else {
        wait_peer();
        do_read(fd, 4096);
        do_write(fd, "bye");
        sig_peer();
        do_read(fd, 64);
    }
}

/* ---- scenario 12: fork ------------------------------------------------------ */

static void sc12(int fd)
{
    if (IS_C) {
        do_write(fd, "ping");
        do_read(fd, 64);
        pid_t k = fork();
        if (k < 0)
            fail("fork");
        if (k == 0) {
            /* the child writes through the inherited connection */
            if (write(fd, "again", 5) != 5)
                _exit(1);
            _exit(0);
        }
        int st = 0;
        waitpid(k, &st, 0);
        L("child wrote through the inherited connection: exit %d", WEXITSTATUS(st));
        do_read(fd, 64);
        do_read(fd, 64);
    } else {
        /* accept, fork a child to serve, close our copy: the classic server */
        pid_t k = fork();
        if (k < 0)
            fail("fork");
        if (k == 0) {
            do_read(fd, 64);
            do_write(fd, "pong");
            do_read(fd, 64);
            do_write(fd, "done");
            _exit(0);
        }
        int rc = close(fd);
        int st = 0;
        waitpid(k, &st, 0);
        L("parent closed its copy = %d; child exit %d", rc, WEXITSTATUS(st));
    }
}

/* ---- scenario 13: exec ------------------------------------------------------ */

extern char **environ;
static int g_exec_variant; /* 0: execl, 1: execle (scenario 16) */

static void sc13(int fd)
{
    if (IS_C) {
        /* inetd style: the child serves the connection as stdin/stdout of
         * a program it execs; the parent closes its copy */
        pid_t k = fork();
        if (k < 0)
            fail("fork");
        if (k == 0) {
            if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0)
                _exit(126);
            close(fd);
            if (g_exec_variant)
                execle("/bin/cat", "cat", (char *)NULL, environ);
            else
                execl("/bin/cat", "cat", (char *)NULL);
            _exit(127);
        }
        DO(close(fd));
        L("parent close = %s", RV);
        handover();
        int st = 0;
        waitpid(k, &st, 0);
        L("cat exited %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    } else {
        wait_peer();
        do_write(fd, "through exec");
        char buf[64];
        size_t got = 0;
        while (got < 12) {
            ssize_t n = read(fd, buf + got, sizeof buf - got);
            if (n <= 0)
                break;
            got += (size_t)n;
        }
        L("echo from cat = %s", esc(buf, (long)got));
        DO(shutdown(fd, SHUT_WR));
        L("shutdown(WR) = %s", RV);
        do_read(fd, 64);
        sig_peer();
    }
}

/* ---- scenario 14: sendmmsg/recvmmsg, SO_ERROR, SIOCOUTQ ---------------------- */

static void sc14(int fd)
{
    if (IS_C) {
        struct iovec iov[3] = {{"one", 3}, {"two", 3}, {"three", 5}};
        struct mmsghdr mm[3];
        memset(mm, 0, sizeof mm);
        for (int i = 0; i < 3; i++) {
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        DO(sendmmsg(fd, mm, 3, 0));
        L("sendmmsg = %s lens=%u,%u,%u", RV, mm[0].msg_len, mm[1].msg_len, mm[2].msg_len);
        int q = -1;
        DO(ioctl(fd, SIOCOUTQ, &q));
        L("ioctl(SIOCOUTQ) = %s pending=%s", RV, q > 0 ? "yes" : q == 0 ? "no" : "?");
        handover();
        DO(ioctl(fd, SIOCOUTQ, &q));
        L("after the peer read: ioctl(SIOCOUTQ) = %s pending=%s", RV, q > 0 ? "yes" : q == 0 ? "no" : "?");
    } else {
        wait_peer();
        char b[3][32];
        struct iovec iov[3] = {{b[0], 32}, {b[1], 32}, {b[2], 32}};
        struct mmsghdr mm[3];
        memset(mm, 0, sizeof mm);
        for (int i = 0; i < 3; i++) {
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        errno = 0; /* a count returned leaves errno alone */
        DO(recvmmsg(fd, mm, 3, MSG_WAITFORONE, NULL));
        L("recvmmsg(WAITFORONE) = %s first=%s errno=%s", RV, esc(b[0], mm[0].msg_len),
          r_ > 0 && e_ == 0 ? "unchanged" : errname(e_));
        int err = -1;
        socklen_t el = sizeof err;
        DO(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el));
        L("getsockopt(SO_ERROR) = %s err=%d", RV, err);
        sig_peer();
    }
}

/* ---- scenario 15: SO_SNDTIMEO and SO_RCVTIMEO --------------------------------- */

static double mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void sc15(int fd)
{
    struct timeval tv = {0, 100000};
    if (IS_C) {
        DO(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv));
        L("setsockopt(SO_SNDTIMEO, 100ms) = %s", RV);
        static char big[65536];
        double t0 = mono_ms();
        long r;
        int e;
        do {
            r = write(fd, big, sizeof big);
            e = errno;
        } while (r == (long)sizeof big && mono_ms() - t0 < 5000);
        double dt = mono_ms() - t0;
        L("writer stopped by the timeout: %s, after 80 ms..3 s: %s",
          (r == -1 && e == EAGAIN) || (r >= 0 && r < (long)sizeof big) ? "yes" : "no",
          dt >= 80 && dt < 3000 ? "yes" : "no");
        handover();
    } else {
        DO(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
        L("setsockopt(SO_RCVTIMEO, 100ms) = %s", RV);
        wait_peer();
        static char buf[65536];
        long total = 0, r;
        while ((r = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
            total += r;
        L("drained everything: %s", total > 0 ? "yes" : "no");
        double t0 = mono_ms();
        DO(read(fd, buf, 1));
        double dt = mono_ms() - t0;
        L("read on empty = %s after 80 ms..3 s: %s", RV, dt >= 80 && dt < 3000 ? "yes" : "no");
        sig_peer();
    }
}

static void sc16(int fd)
{
    g_exec_variant = 1;
    sc13(fd);
}

/* ---- scenario 17: EINTR and SA_RESTART in blocked reads and writes ------------ */

static volatile int g_usr1, g_usr2;
static void on_usr1(int sig) { (void)sig; g_usr1++; }
static void on_usr2(int sig) { (void)sig; g_usr2++; }

struct kicker {
    pthread_t target;
    int sig;
};

static void *kick(void *arg)
{
    struct kicker *k = arg;
    msleep(150);
    pthread_kill(k->target, k->sig);
    return NULL;
}

/* Runs `call` while another thread signals us 150 ms in. */
#define WITH_SIGNAL(sig, call)                                            \
    do {                                                                  \
        struct kicker k_ = {pthread_self(), (sig)};                        \
        pthread_t t_;                                                     \
        if (pthread_create(&t_, NULL, kick, &k_) != 0)                    \
            fail("pthread_create");                                       \
        call;                                                             \
        pthread_join(t_, NULL);                                           \
    } while (0)

/* Non-blocking writes until EAGAIN, then back to blocking. */
static void fill_up(int fd)
{
    static char junk[1000];
    memset(junk, 'x', sizeof junk);
    set_nonblock(fd);
    while (write(fd, junk, sizeof junk) > 0)
        ;
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* Reads until an 'E' arrives (the writer's end mark). */
static void drain_to_mark(int fd)
{
    static char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("drain");
        if (buf[n - 1] == 'E')
            return;
    }
}

static void sc17(int fd)
{
    char c = 0;
    /* SIGUSR1 restarts, SIGUSR2 interrupts: a guess from "some handler
     * lacks SA_RESTART" gets the first case wrong. */
    xsigaction(SIGUSR1, on_usr1, SA_RESTART);
    xsigaction(SIGUSR2, on_usr2, 0);
    if (IS_C) {
        sig_peer();
        WITH_SIGNAL(SIGUSR1, DO(read(fd, &c, 1)));
        L("blocked read, SIGUSR1 (SA_RESTART) = %s '%c', handled %d", RV, c, g_usr1);
        sig_peer();
        WITH_SIGNAL(SIGUSR2, DO(read(fd, &c, 1)));
        L("blocked read, SIGUSR2 (no SA_RESTART) = %s, handled %d", RV, g_usr2);
        handover();
        do_read(fd, 16);

        static char msg[1000];
        memset(msg, 'y', sizeof msg);
        fill_up(fd);
        sig_peer();
        WITH_SIGNAL(SIGUSR1, DO(write(fd, msg, sizeof msg)));
        L("blocked write, SIGUSR1 (SA_RESTART) = %s, handled %d", RV, g_usr1);
        DO(write(fd, "E", 1));
        wait_peer();
        fill_up(fd);
        WITH_SIGNAL(SIGUSR2, DO(write(fd, msg, sizeof msg)));
        L("blocked write, SIGUSR2 (no SA_RESTART) = %s, handled %d", RV, g_usr2);
        sig_peer();
        DO(write(fd, "E", 1));
        wait_peer();
    } else {
        wait_peer();
        msleep(400);
        do_write(fd, "R");
        wait_peer();
        msleep(400);
        wait_peer();
        do_write(fd, "after");
        sig_peer();

        wait_peer();
        msleep(400);
        drain_to_mark(fd);
        L("drained to the end mark");
        sig_peer();
        wait_peer();
        drain_to_mark(fd);
        L("drained to the end mark");
        sig_peer();
    }
}

/* ---- scenario 18: where ancillary data arrives -------------------------------- */

/* sendmsg of `s` with our credentials (creds) or `nfds` fresh pipe ends. */
static void send_anc(int fd, const char *s, int creds, int nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {(void *)s, strlen(s)};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf};
    struct cmsghdr *c = (struct cmsghdr *)u.buf;
    int p[4] = {-1, -1, -1, -1};
    if (creds) {
        struct ucred uc = {getpid(), getuid(), getgid()};
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_CREDENTIALS;
        c->cmsg_len = CMSG_LEN(sizeof uc);
        memcpy(CMSG_DATA(c), &uc, sizeof uc);
        m.msg_controllen = CMSG_SPACE(sizeof uc);
    } else {
        if (pipe(p) != 0 || pipe(p + 2) != 0)
            fail("pipe");
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), p, (size_t)nfds * sizeof(int));
        m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    }
    DO(sendmsg(fd, &m, 0));
    if (creds)
        L("sendmsg(%s, SCM_CREDENTIALS) = %s", esc(s, (long)strlen(s)), RV);
    else
        L("sendmsg(%s, SCM_RIGHTS x%d) = %s", esc(s, (long)strlen(s)), nfds, RV);
    for (int i = 0; i < 4; i++)
        if (p[i] >= 0)
            close(p[i]);
}

/* recvmsg of up to `len` bytes with room for `room` descriptors; logs the
 * bytes, flags and what the control data held. */
static void recv_anc(int fd, size_t len, int room, int flags)
{
    char data[256];
    union {
        char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {data, len < sizeof data ? len : sizeof data};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf};
    m.msg_controllen = room ? CMSG_SPACE((size_t)room * sizeof(int)) : sizeof u.buf;
    DO(recvmsg(fd, &m, flags));
    char what[256] = "";
    size_t w = 0;
    if (r_ >= 0)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                int cloexec = 0, valid = 0;
                for (int i = 0; i < n; i++) {
                    int f;
                    memcpy(&f, CMSG_DATA(c) + (size_t)i * sizeof(int), sizeof f);
                    int fl = fcntl(f, F_GETFD);
                    valid += fl >= 0;
                    cloexec += fl >= 0 && (fl & FD_CLOEXEC);
                    close(f);
                }
                w += (size_t)snprintf(what + w, sizeof what - w, " RIGHTS n=%d valid=%d cloexec=%d", n,
                                      valid, cloexec);
            } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred uc;
                memcpy(&uc, CMSG_DATA(c), sizeof uc);
                w += (size_t)snprintf(what + w, sizeof what - w, " CREDS peer=%s uid=%u",
                                      uc.pid == getppid() || uc.pid == g_child ? "yes" : "no", uc.uid);
            } else {
                w += (size_t)snprintf(what + w, sizeof what - w, " other(%d,%d)", c->cmsg_level,
                                      c->cmsg_type);
            }
        }
    L("recvmsg(%zu, room %d%s) = %s %s flags=%s%s", len, room,
      flags & MSG_CMSG_CLOEXEC ? ", CMSG_CLOEXEC" : "", RV, esc(data, r_),
      r_ < 0 ? "-" : (m.msg_flags & MSG_CTRUNC) ? "CTRUNC" : "0", w ? what : " (none)");
}

static void sc18(int fd)
{
    if (IS_C) {
        /* Credentials to a socket without SO_PASSCRED: invisible, glued. */
        do_write(fd, "aaa");
        send_anc(fd, "bbb", 1, 0);
        do_write(fd, "ccc");
        handover();
        /* Descriptors: with the read that reaches their first byte, which
         * stops at the end of their message. */
        do_write(fd, "ggg");
        send_anc(fd, "hhh", 0, 1);
        do_write(fd, "iii");
        send_anc(fd, "jjj", 0, 3); /* more than the reader has room for */
        send_anc(fd, "kkk", 0, 1);
        do_write(fd, "lll");
        handover();
        send_anc(fd, "mmm", 1, 0);
        send_anc(fd, "nnn", 0, 1);
        do_write(fd, "ooo");
        handover();
    } else {
        wait_peer();
        recv_anc(fd, 100, 0, 0);
        sig_peer();
        wait_peer();
        recv_anc(fd, 2, 0, 0);
        recv_anc(fd, 2, 0, 0);
        recv_anc(fd, 100, 1, MSG_CMSG_CLOEXEC);
        recv_anc(fd, 1, 1, 0);
        recv_anc(fd, 100, 1, 0);
        sig_peer();
        /* read() drops the descriptors of the message it reaches. */
        wait_peer();
        do_read(fd, 4);
        recv_anc(fd, 100, 1, MSG_PEEK);
        recv_anc(fd, 100, 1, 0);
        sig_peer();
    }
}

/* ---- scenario 19: SO_RCVLOWAT -------------------------------------------------- */

static void sc19(int fd)
{
    if (IS_C) {
        /* A read under the default mark first: the new mark must count. */
        do_write(fd, "z");
        wait_peer();
        /* A blocking read waits for the low mark: both writes in one read. */
        do_write(fd, "abc");
        usleep(100000);
        do_write(fd, "defgh");
        handover();
        /* Below the mark: non-blocking reads, peeks and short buffers
         * return what there is; so does a read that meets the EOF. */
        do_write(fd, "123");
        handover();
        do_write(fd, "45");
        handover();
        do_write(fd, "xyz");
        DO(shutdown(fd, SHUT_WR));
        L("shutdown(WR) = %s", RV);
        handover();
    } else {
        int v = 8;
        socklen_t len = sizeof v;
        do_read(fd, 64);
        DO(setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v));
        L("setsockopt(SO_RCVLOWAT, 8) = %s", RV);
        v = 0;
        DO(getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, &len));
        L("getsockopt(SO_RCVLOWAT) = %s %d", RV, v);
        sig_peer();
        do_read(fd, 64);
        wait_peer();
        sig_peer();
        wait_peer();
        char buf[64];
        DO(recv(fd, buf, sizeof buf, MSG_DONTWAIT));
        L("recv(64, DONTWAIT) = %s %s", RV, esc(buf, r_));
        sig_peer();
        wait_peer();
        DO(recv(fd, buf, sizeof buf, MSG_PEEK));
        L("recv(64, PEEK) = %s %s", RV, esc(buf, r_));
        do_read(fd, 2);
        sig_peer();
        wait_peer();
        do_read(fd, 64);
        do_read(fd, 64);
        v = 0;
        DO(setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v));
        L("setsockopt(SO_RCVLOWAT, 0) = %s", RV);
        len = sizeof v;
        DO(getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, &len));
        L("getsockopt(SO_RCVLOWAT) = %s %d", RV, v);
        sig_peer();
    }
}

/* ---- scenario 20: SO_PEEK_OFF set, then plain reads ---------------------------- */

static int g_preset; /* set by the driver: the client set it before connect */

static void sc20(int fd)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (!(IS_C && g_preset)) {
        DO(setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v));
        L("setsockopt(SO_PEEK_OFF, 0) = %s", RV);
    }
    v = -2;
    DO(getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, &len));
    L("getsockopt(SO_PEEK_OFF) = %s %d", RV, v);
    /* Round trips that sleep now and then: the offset is the program's,
     * it must not move anything else. */
    char b[8];
    int ok = 0;
    for (int i = 0; i < 2000; i++) {
        if (IS_C) {
            if (write(fd, "12345678", 8) == 8 && read(fd, b, 8) == 8 && !memcmp(b, "abcdefgh", 8))
                ok++;
        } else {
            if (read(fd, b, 8) == 8 && !memcmp(b, "12345678", 8) && write(fd, "abcdefgh", 8) == 8)
                ok++;
        }
        if (i % 100 == 0)
            usleep(1000);
    }
    L("2000 round trips: %d whole", ok);
    v = -2;
    len = sizeof v;
    DO(getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &v, &len));
    L("getsockopt(SO_PEEK_OFF) = %s %d", RV, v);
    if (IS_C)
        handover();
    else {
        wait_peer();
        sig_peer();
    }
}

/* ---- driver ------------------------------------------------------------------ */

static void (*const g_scen[NSCEN + 1])(int) = {NULL, sc1, sc2, sc3, sc4, sc5, sc6, sc7, sc8, sc9, sc10, sc11, sc12, sc13, sc14, sc15, sc16, sc17, sc18, sc19, sc20};
static const char *const g_names[NSCEN + 1] = {
    NULL,
    "basic I/O calls (read/write, readv/writev, send/recv, sendto/recvfrom, sendmsg/recvmsg)",
    "recv flags (PEEK, WAITALL, DONTWAIT, zero length)",
    "non-blocking mode, FIONREAD, filling and draining",
    "half-close (shutdown WR/RD, close)",
    "EPIPE and SIGPIPE",
    "EOF only after every byte (100000 bytes in 7-byte reads)",
    "readiness (select, poll, ppoll, epoll LT/ET/ONESHOT/RDHUP)",
    "addresses (accept, getsockname, getpeername; connect+send before accept; bound client; abstract)",
    "full duplex (1 MiB each way in 1000-byte non-blocking writes)",
    "close with unread data (ECONNRESET)",
    "descriptor copies (dup, F_DUPFD_CLOEXEC, dup2, dup3, close_range, close the original)",
    "fork (server child serves, parent closes; client child writes through the inherited fd)",
    "exec (a child execls cat on the connection as stdin/stdout)",
    "sendmmsg/recvmmsg, SO_ERROR, SIOCOUTQ",
    "SO_SNDTIMEO and SO_RCVTIMEO",
    "exec with execle (explicit environment)",
    "EINTR and SA_RESTART in blocked reads and writes",
    "where ancillary data arrives (SCM_CREDENTIALS, SCM_RIGHTS, CTRUNC, CMSG_CLOEXEC)",
    "SO_RCVLOWAT (a blocking read waits for the low mark)",
    "SO_PEEK_OFF set (cold: the client's before connect), then 2000 round trips that sleep now and then",
};

/*
 * "warm" variant: a few one-byte round trips before the scenario, so that a
 * transparent accelerator has switched the connection before the script
 * starts; the "cold" variant starts the script on a brand-new connection.
 */
static void warm_up(int fd)
{
    for (int i = 0; i < 4; i++) {
        char c = (char)('0' + i), d = 0;
        if (IS_C) {
            if (write(fd, &c, 1) != 1 || read(fd, &d, 1) != 1 || d != c)
                fail("warm-up");
        } else {
            if (read(fd, &d, 1) != 1 || d != c || write(fd, &d, 1) != 1)
                fail("warm-up");
        }
    }
    L("warm-up done");
}

static int run(int n, int warm)
{
    printf("== scenario %d (%s): %s ==\n", n, warm ? "warm" : "cold", g_names[n]);
    fflush(stdout);
    *g_sloglen = 0;
    g_cloglen = 0;
    int p2c[2], c2p[2];
    if (pipe(p2c) != 0 || pipe(c2p) != 0)
        die("pipe");
    int lfd = listen_unix(SOCK, 0);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        g_role = 'S';
        alarm(10);
        close(p2c[1]);
        close(c2p[0]);
        g_from_peer = p2c[0];
        g_to_peer = c2p[1];
        g_acc_len = sizeof g_acc_addr;
        memset(&g_acc_addr, 0xee, sizeof g_acc_addr);
        int fd;
        do {
            fd = accept(lfd, (struct sockaddr *)&g_acc_addr, &g_acc_len);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0)
            fail("accept");
        close(lfd);
        if (warm)
            warm_up(fd);
        g_scen[n](fd);
        /* final barrier: nobody closes before the peer is done */
        sig_peer();
        wait_peer();
        close(fd); /* may already be closed by the scenario: EBADF is fine */
        _exit(0);
    }
    g_role = 'C';
    g_child = pid;
    alarm(10);
    close(p2c[0]);
    close(c2p[1]);
    g_from_peer = c2p[0];
    g_to_peer = p2c[1];
    close(lfd);
    struct sockaddr_un sa;
    fill_sockaddr(&sa, SOCK);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    g_preset = n == 20 && !warm;
    if (g_preset) {
        /* scenario 20 (cold): the client's peek offset is set before connect */
        int z = 0;
        DO(setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &z, sizeof z));
        L("before connect: setsockopt(SO_PEEK_OFF, 0) = %s", RV);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail("connect");
    if (warm)
        warm_up(fd);
    g_scen[n](fd);
    sig_peer();
    wait_peer();
    close(fd);
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            fail("waitpid");
    }
    alarm(0);
    g_child = -1;
    close(g_from_peer);
    close(g_to_peer);
    unlink(SOCK);
    print_logs();
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("server process failed (status 0x%x)\n", st);
        fflush(stdout);
        return 1;
    }
    return 0;
}

static char g_dir[256];
static pid_t g_main_pid;
static void rm_dir(void)
{
    if (g_dir[0] && getpid() == g_main_pid) {
        unlink(SOCK);
        unlink("early.sock");
        unlink("csock");
        rmdir(g_dir);
    }
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc < 2)
        dief("usage: sockcheck all | list | N [N...]   (N in 1..%d)", NSCEN);
    if (strcmp(argv[1], "list") == 0) {
        for (int i = 1; i <= NSCEN; i++)
            printf("%d %s\n", i, g_names[i]);
        return 0;
    }
    int want[NSCEN + 1] = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "all") == 0) {
            for (int j = 1; j <= NSCEN; j++)
                want[j] = 1;
        } else {
            char *end;
            long v = strtol(argv[i], &end, 10);
            if (*end || v < 1 || v > NSCEN)
                dief("invalid scenario '%s'", argv[i]);
            want[v] = 1;
        }
    }
    void *m = mmap(NULL, LOGCAP + 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("mmap");
    g_sloglen = m;
    g_slog = (char *)m + 64;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);

    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/sockcheck.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir))
        die("mkdtemp");
    if (chdir(g_dir) != 0)
        die("chdir");
    g_main_pid = getpid();
    g_cleanup = rm_dir;
    atexit(rm_dir);

    xsigaction(SIGPIPE, SIG_IGN, 0);
    xsigaction(SIGALRM, on_alarm, 0);
    /* Each scenario runs in its own process (which forks the server), so
     * that a hang or crash in one scenario does not hide the others. */
    int rc = 0;
    for (int k = 2; k <= 2 * NSCEN + 1; k++) {
        int i = k / 2, warm = k % 2;
        if (!want[i])
            continue;
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            g_cleanup = NULL;
            int r = run(i, warm);
            fflush(stdout);
            _exit(r);
        }
        int st;
        while (waitpid(pid, &st, 0) < 0) {
            if (errno != EINTR)
                die("waitpid");
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (!WIFEXITED(st))
                printf("scenario %d: runner killed by signal %d\n", i, (int)WTERMSIG(st));
            rc = 1;
        }
        unlink(SOCK);
        unlink("early.sock");
        unlink("csock");
    }
    fflush(stdout);
    return rc;
}
