/*
 * idle - CPU cost of waiting on an idle AF_UNIX stream connection.
 *
 *   idle server PATH MODE
 *   idle client PATH MODE SECONDS
 *
 * MODE:
 *   read      the server blocks in read() on the idle connection;
 *   poll      the server blocks in poll(POLLIN, -1);
 *   epoll     the server blocks in epoll_wait(EPOLLIN, -1);
 *   fullring  the server's non-blocking writes fill the socket buffer (or
 *             ring) until EAGAIN while the client does not read; then the
 *             server blocks in epoll_wait(EPOLLOUT, -1);
 *   shutrd    as fullring, but the server then shuts its read side
 *             (shutdown(SHUT_RD)) and blocks in poll(POLLOUT, -1): its own
 *             end of input must not keep waking the wait.
 *   unread    the client's first byte stays unread; the server answers
 *             the client's first read with one byte 50 ms after accept,
 *             then fills as in fullring and blocks in poll(POLLOUT, -1).
 *             (Over tsss: writes on the ring while the incoming direction
 *             still has plain bytes unread; the kernel's POLLOUT says
 *             nothing about the ring, and sleeping on it spun.)  No
 *             handshake: the server takes SECONDS as its 4th argument.
 *
 * First both sides exchange a few small messages in both directions, so a
 * transparent accelerator has finished switching the connection before the
 * idle period starts.  Then the client stays idle for SECONDS and either
 * writes one byte (read/poll/epoll) or reads everything until EOF
 * (fullring), which wakes the server.  The server measures its own CPU time
 * (getrusage(RUSAGE_SELF), user + system) and the wall time from just before
 * it starts waiting until it wakes, closes the connection and prints
 *
 *   RESULT role=server mode=M cpu_ms=X wall_ms=Y bytes=B ok=1
 *
 * ok=1 requires the wake-up to be the expected one (the right byte, or
 * EPOLLOUT) and the wait to have lasted at least 90% of SECONDS (the client
 * sends SECONDS in the handshake), so a premature return cannot pass as an
 * idle wait.  The client prints
 *
 *   RESULT role=client mode=M bytes=B ok=1
 */
#include "common.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>

enum mode { M_READ, M_POLL, M_EPOLL, M_FULLRING, M_SHUTRD, M_UNREAD };
static const char *const g_mode_name[] = {"read", "poll", "epoll", "fullring", "shutrd", "unread"};

static enum mode parse_mode(const char *s)
{
    if (strcmp(s, "read") == 0)
        return M_READ;
    if (strcmp(s, "poll") == 0)
        return M_POLL;
    if (strcmp(s, "epoll") == 0)
        return M_EPOLL;
    if (strcmp(s, "shutrd") == 0)
        return M_SHUTRD;
    if (strcmp(s, "fullring") == 0)
        return M_FULLRING;
    if (strcmp(s, "unread") == 0)
        return M_UNREAD;
    dief("invalid MODE '%s' (read|poll|epoll|fullring|shutrd|unread)", s);
}

static uint64_t cpu_ns(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        die("getrusage");
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

#define ROUNDS 4

static int do_server(const char *path, enum mode mode, uint64_t unread_secs)
{
    int lfd = listen_unix(path, 0);
    int fd;
    for (;;) {
        fd = accept(lfd, NULL, NULL);
        if (fd >= 0)
            break;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        die("accept");
    }
    xclose(lfd);
    if (unlink(path) != 0 && errno != ENOENT)
        die("unlink");

    uint64_t idle_ms = unread_secs * 1000;
    if (mode == M_UNREAD) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        write_all(fd, "s", 1);
    }
    /* handshake: the client sends its idle time first */
    unsigned char b8[8];
    if (mode != M_UNREAD && read_full(fd, b8, 8) != 8)
        dief("EOF in handshake");
    if (mode != M_UNREAD)
        idle_ms = get_le64(b8);
    for (int i = 0; mode != M_UNREAD && i < ROUNDS; i++) {
        char b[2];
        if (read_full(fd, b, 2) != 2 || b[0] != 'h' || b[1] != (char)('0' + i))
            dief("MISMATCH in handshake");
        b[0] = 'o';
        write_all(fd, b, 2);
    }

    int ok = 0;
    uint64_t bytes = 0, c0 = 0, t0 = 0;
    if (mode == M_READ) {
        c0 = cpu_ns();
        t0 = now_ns();
        char c;
        ssize_t n;
        do
            n = read(fd, &c, 1);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            die("read");
        ok = n == 1 && c == 'w';
        bytes = n > 0 ? (uint64_t)n : 0;
    } else if (mode == M_POLL || mode == M_EPOLL) {
        int ep = -1;
        if (mode == M_EPOLL) {
            ep = epoll_create1(0);
            if (ep < 0)
                die("epoll_create1");
            struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
                die("epoll_ctl");
        }
        c0 = cpu_ns();
        t0 = now_ns();
        for (;;) {
            int k;
            if (mode == M_EPOLL) {
                struct epoll_event ev;
                k = epoll_wait(ep, &ev, 1, -1);
            } else {
                struct pollfd p = {fd, POLLIN, 0};
                k = poll(&p, 1, -1);
            }
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                die(mode == M_EPOLL ? "epoll_wait" : "poll");
            if (k == 0)
                dief("infinite wait returned 0");
            break;
        }
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        ok = n == 1 && c == 'w';
        bytes = n > 0 ? (uint64_t)n : 0;
        if (ep >= 0)
            xclose(ep);
    } else {
        set_nonblock(fd);
        unsigned char buf[65536];
        memset(buf, 'f', sizeof buf);
        for (;;) {
            ssize_t n = write(fd, buf, sizeof buf);
            if (n < 0 && errno == EAGAIN)
                break;
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die("write");
            bytes += (uint64_t)n;
            if (bytes > (8ull << 30))
                dief("the writer never saw EAGAIN");
        }
        if (mode == M_SHUTRD || mode == M_UNREAD) {
            if (mode == M_SHUTRD && shutdown(fd, SHUT_RD) != 0)
                die("shutdown");
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            c0 = cpu_ns();
            t0 = now_ns();
            int k;
            while ((k = poll(&p, 1, -1)) < 0 && errno == EINTR)
                ;
            if (k <= 0)
                die("poll");
            ok = (p.revents & POLLOUT) != 0;
        } else {
            int ep = epoll_create1(0);
            if (ep < 0)
                die("epoll_create1");
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
                die("epoll_ctl");
            c0 = cpu_ns();
            t0 = now_ns();
            for (;;) {
                int k = epoll_wait(ep, &ev, 1, -1);
                if (k < 0 && errno == EINTR)
                    continue;
                if (k < 0)
                    die("epoll_wait");
                if (k == 0)
                    dief("infinite wait returned 0");
                break;
            }
            ok = (ev.events & EPOLLOUT) != 0;
            xclose(ep);
        }
    }
    uint64_t c1 = cpu_ns(), t1 = now_ns();
    if (mode == M_UNREAD) {
        /* Read the client's first byte: closing with it unread would reset. */
        char c;
        clear_nonblock(fd);
        if (read_full(fd, &c, 1) != 1 || c != 'u')
            dief("MISMATCH: not the client's first byte");
    }
    uint64_t wall_ms = (t1 - t0) / 1000000;
    if (wall_ms * 10 < idle_ms * 9) {
        fprintf(stderr, "idle: the wait ended after %" PRIu64 " ms, before the client's %" PRIu64
                        " ms idle period\n", wall_ms, idle_ms);
        ok = 0;
    }
    xclose(fd);
    printf("RESULT role=server mode=%s cpu_ms=%.1f wall_ms=%" PRIu64 " bytes=%" PRIu64 " ok=%d\n",
           g_mode_name[mode], (double)(c1 - c0) / 1e6, wall_ms, bytes, ok);
    return ok ? 0 : 1;
}

static int do_client(const char *path, enum mode mode, uint64_t secs)
{
    int fd = connect_unix(path);
    if (mode == M_UNREAD) {
        char c;
        write_all(fd, "u", 1);
        if (read_full(fd, &c, 1) != 1 || c != 's')
            dief("MISMATCH: no first byte from the server");
    }
    unsigned char b8[8];
    put_le64(b8, secs * 1000);
    if (mode != M_UNREAD)
        write_all(fd, b8, 8);
    for (int i = 0; mode != M_UNREAD && i < ROUNDS; i++) {
        char b[2] = {'h', (char)('0' + i)};
        write_all(fd, b, 2);
        if (read_full(fd, b, 2) != 2 || b[0] != 'o' || b[1] != (char)('0' + i))
            dief("MISMATCH in handshake");
    }
    struct timespec ts = {(time_t)secs, 0};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    uint64_t bytes = 0;
    int ok = 1;
    if (mode == M_FULLRING || mode == M_SHUTRD || mode == M_UNREAD) {
        unsigned char buf[65536];
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                die("read");
            if (n == 0)
                break;
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] != 'f')
                    ok = 0;
            bytes += (uint64_t)n;
        }
        if (!ok)
            fprintf(stderr, "idle: MISMATCH in the filled data\n");
    } else {
        write_all(fd, "w", 1);
        bytes = 1;
        char c;
        if (read_full(fd, &c, 1) != 0) /* wait for the server to finish */
            dief("unexpected data from the server");
    }
    xclose(fd);
    printf("RESULT role=client mode=%s bytes=%" PRIu64 " ok=%d\n",
           g_mode_name[mode], bytes, ok);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return do_server(argv[2], parse_mode(argv[3]), 0);
    if (argc == 5 && strcmp(argv[1], "server") == 0)
        return do_server(argv[2], parse_mode(argv[3]), parse_size(argv[4], "SECONDS"));
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return do_client(argv[2], parse_mode(argv[3]), parse_size(argv[4], "SECONDS"));
    fprintf(stderr, "usage: %s server PATH MODE\n"
                    "       %s client PATH MODE SECONDS\n"
                    "MODE: read | poll | epoll | fullring | shutrd\n",
            g_prog, g_prog);
    return 1;
}
