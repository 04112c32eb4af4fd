/*
 * fdpass - descriptor passing right after a connection starts, into an
 * epoll server (the dbus pattern: a method call carrying a unix fd).
 *
 *   fdpass server PATH MODE CONNS
 *       MODE lt or et.  One epoll loop; every message is read with
 *       recvmsg (a control buffer for 4 descriptors) and echoed; received
 *       descriptors are counted and closed.  Level-triggered reads once
 *       per event, edge-triggered until EAGAIN.  Exits after CONNS
 *       connections have ended:
 *         RESULT role=server conns=N fds=F ok=1
 *
 *   fdpass client PATH CONNS TIMEOUT_MS
 *       CONNS times: connect, send "hi", wait for its echo, then send 100
 *       bytes with one descriptor (SCM_RIGHTS) and wait TIMEOUT_MS for
 *       their echo.  Counts replies that never came:
 *         RESULT role=client conns=N missing=M ok=1   (ok=0 if M > 0)
 */
#include "common.h"

#include <poll.h>
#include <sys/epoll.h>

#define MSG 100

static int wait_bytes(int fd, unsigned char *buf, size_t want, int timeout_ms)
{
    size_t got = 0;
    uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (got < want) {
        uint64_t now = now_ns();
        if (now >= end) return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)((end - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("poll");
        if (r == 0) continue;
        ssize_t n = read(fd, buf + got, want - got);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) die("read");
        if (n == 0) dief("unexpected EOF after %zu of %zu bytes", got, want);
        got += (size_t)n;
    }
    return 1;
}

static int client(const char *path, int conns, int timeout_ms)
{
    int missing = 0;
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0) die("open /dev/null");
    unsigned char msg[MSG], back[MSG];
    for (int i = 0; i < MSG; i++) msg[i] = (unsigned char)(i * 7 + 1);
    for (int c = 0; c < conns; c++) {
        int fd = connect_unix(path);
        write_all(fd, "hi", 2);
        if (!wait_bytes(fd, back, 2, 10000) || memcmp(back, "hi", 2) != 0)
            dief("connection %d: no echo of the greeting", c);
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct iovec iov = {.iov_base = msg, .iov_len = MSG};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                           .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
        struct cmsghdr *h = CMSG_FIRSTHDR(&m);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(h), &devnull, sizeof(int));
        if (sendmsg(fd, &m, 0) != MSG) die("sendmsg");
        if (!wait_bytes(fd, back, MSG, timeout_ms)) {
            missing++;
        } else if (memcmp(back, msg, MSG) != 0) {
            fprintf(stderr, "fdpass: MISMATCH in the echo of connection %d\n", c);
            exit(1);
        }
        close(fd);
    }
    printf("RESULT role=client conns=%d missing=%d ok=%d\n", conns, missing, missing == 0);
    return 0;
}

static int server(const char *path, int et, int conns)
{
    /* A client that gave up on its reply is gone: EPIPE, not SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_unix(path, 0);
    set_nonblock(lfd);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) die("epoll_ctl listen");
    int ended = 0;
    long fds = 0;
    unsigned char buf[4096];
    while (ended < conns) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, 30000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        if (n == 0) dief("no event for 30 s (%d of %d connections ended)", ended, conns);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c = accept(lfd, NULL, NULL);
                if (c < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (c < 0) die("accept");
                set_nonblock(c);
                struct epoll_event ce = {.events = EPOLLIN | (et ? EPOLLET : 0), .data.fd = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) != 0) die("epoll_ctl add");
                continue;
            }
            for (;;) {
                union {
                    struct cmsghdr h;
                    char buf[CMSG_SPACE(4 * sizeof(int))];
                } ctl;
                struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
                struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                                   .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
                ssize_t r = recvmsg(fd, &m, 0);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                if (r < 0) die("recvmsg");
                for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
                    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
                    size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                    for (size_t j = 0; j < k; j++) {
                        int got;
                        memcpy(&got, CMSG_DATA(h) + j * sizeof(int), sizeof(int));
                        close(got);
                        fds++;
                    }
                }
                if (r == 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                    ended++;
                    break;
                }
                if (write(fd, buf, (size_t)r) != r && errno != EPIPE && errno != ECONNRESET)
                    die("write");
                if (!et) break;
            }
        }
    }
    printf("RESULT role=server conns=%d fds=%ld ok=1\n", ended, fds);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc == 5 && strcmp(argv[1], "server") == 0)
        return server(argv[2], strcmp(argv[3], "et") == 0, atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: fdpass server PATH lt|et CONNS | client PATH CONNS TIMEOUT_MS\n");
    return 2;
}
