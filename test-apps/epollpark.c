/*
 * epollpark - readiness an epoll set must report after the program's own
 * calls changed it while the set was not looking.
 *
 *   epollpark <socket-path>
 *
 * Forks a client; the server watches its end in a level-triggered epoll,
 * lets one epoll_wait time out, then:
 *   drain:    reads a byte nobody reported (recv until EAGAIN), the client
 *             writes another: epoll_wait must report EPOLLIN;
 *   fair:     with that socket kept readable, a pipe becomes readable: an
 *             epoll_wait for one event at a time must report each of
 *             them within 4 calls, as the kernel's round robin does;
 *   rr:       the same with a second connection (to itself) instead of
 *             the pipe;
 *   shutdown: shuts its own reads: epoll_wait must report EPOLLIN|RDHUP.
 * Prints: RESULT ok=1 drain=<events> fair=<1: both came> rr=<1: both came>
 * shutdown=<events> (0 = nothing in 2 s).
 */
#include "common.h"
#include <sys/epoll.h>
#include <sys/wait.h>

static int to_child[2], from_child[2];

/* The client: one command byte at a time from the server. */
static void client(const char *path)
{
    int fd = connect_unix(path);
    char cmd, b;
    while (read(to_child[0], &cmd, 1) == 1 && cmd != 'q') {
        if (cmd == 'w') {
            write_all(fd, "B", 1);
        } else if (cmd == 'e') {
            write_all(fd, "x", 1);
            read_full(fd, &b, 1);
        }
        write_all(from_child[1], "k", 1);
    }
    close(fd);
    _exit(0);
}

static void ask(char cmd)
{
    char k;
    write_all(to_child[1], &cmd, 1);
    if (read_full(from_child[0], &k, 1) != 1)
        dief("client gone");
}

/* Events reported within 2 s (0: none). */
static unsigned wait_events(int ep, int ms)
{
    struct epoll_event ev;
    int n = epoll_wait(ep, &ev, 1, ms);
    if (n < 0)
        die("epoll_wait");
    return n ? ev.events : 0;
}

/* Whether 4 one-event epoll_waits report both `a` and `b` (the kernel's
 * round robin of level-triggered fds). */
static int both_reported(int ep, int a, int b)
{
    int seen_a = 0, seen_b = 0;
    for (int i = 0; i < 4; i++) {
        struct epoll_event got;
        int n = epoll_wait(ep, &got, 1, 2000);
        if (n < 0)
            die("epoll_wait");
        seen_a |= n == 1 && got.data.fd == a;
        seen_b |= n == 1 && got.data.fd == b;
    }
    return seen_a && seen_b;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc != 2)
        dief("usage: epollpark <socket-path>");
    unlink(argv[1]);
    int lfd = listen_unix(argv[1], 0);
    if (pipe(to_child) || pipe(from_child))
        die("pipe");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0)
        client(argv[1]);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept");
    char b;
    /* A few exchanges: both directions reach the ring. */
    for (int i = 0; i < 3; i++) {
        write_all(to_child[1], "e", 1);
        read_full(fd, &b, 1);
        write_all(fd, "y", 1);
        read_full(from_child[0], &b, 1);
    }
    set_nonblock(fd);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
        die("epoll");

    if (wait_events(ep, 5))
        dief("drain: ready before anything was written");
    ask('w');
    if (recv(fd, &b, 1, 0) != 1)
        die("drain: recv");
    if (recv(fd, &b, 1, 0) != -1 || errno != EAGAIN)
        dief("drain: second recv did not say EAGAIN");
    ask('w');
    unsigned drain = wait_events(ep, 2000);
    if (recv(fd, &b, 1, 0) != 1)
        die("drain: recv after epoll");

    /* fair: the socket stays readable while the pipe waits its turn. */
    ask('w');
    int p[2];
    if (pipe(p) || write(p[1], "p", 1) != 1)
        die("fair: pipe");
    struct epoll_event pev = {.events = EPOLLIN, .data.fd = p[0]};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &pev))
        die("fair: epoll_ctl ADD");
    int fair = both_reported(ep, p[0], fd);
    if (epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL))
        die("fair: epoll_ctl DEL");
    xclose(p[0]);
    xclose(p[1]);

    /* rr: two sockets readable, one event per call: each within 4. */
    int c2 = connect_unix(argv[1]);
    int a2 = accept(lfd, NULL, NULL);
    if (a2 < 0)
        die("rr: accept");
    for (int i = 0; i < 3; i++) {
        write_all(c2, "e", 1);
        read_full(a2, &b, 1);
        write_all(a2, "y", 1);
        read_full(c2, &b, 1);
    }
    write_all(c2, "r", 1);
    struct epoll_event aev = {.events = EPOLLIN, .data.fd = a2};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, a2, &aev))
        die("rr: epoll_ctl ADD");
    int rr = both_reported(ep, a2, fd);
    if (epoll_ctl(ep, EPOLL_CTL_DEL, a2, NULL))
        die("rr: epoll_ctl DEL");
    xclose(a2);
    xclose(c2);
    if (recv(fd, &b, 1, 0) != 1)
        die("fair: recv");

    ev.events = EPOLLIN | EPOLLRDHUP;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev))
        die("epoll_ctl MOD");
    if (wait_events(ep, 5))
        dief("shutdown: ready before the shutdown");
    if (shutdown(fd, SHUT_RD))
        die("shutdown");
    unsigned shut = wait_events(ep, 2000);

    write_all(to_child[1], "q", 1);
    close(fd);
    waitpid(pid, NULL, 0);
    unlink(argv[1]);
    printf("RESULT ok=1 drain=%#x fair=%d rr=%d shutdown=%#x\n", drain, fair, rr, shut);
    return 0;
}
