/*
 * etshut - a FastCGI-like exchange on many short connections, the client
 * in an edge-triggered epoll loop, as nginx talks to php-fpm.
 *
 *   etshut PATH N [--add-first] [--plain-server]
 *
 * A forked server accepts each connection, reads a 64-byte request,
 * writes a 104-byte reply, shuts its writing side down, reads until EOF
 * and closes. The client, for each of N connections one after the other:
 * a non-blocking connect, registered with EPOLLIN | EPOLLOUT | EPOLLRDHUP
 * | EPOLLET; writes the request; then on every event reads once (like
 * nginx, it waits for the next edge after a short read) until it sees
 * EOF (a read of 0, or EPOLLRDHUP), checks it got the 104 bytes, closes.
 * An EOF whose edge is never reported leaves the client waiting: after
 * 3 s without an event it prints HANG and exits 1.
 *
 * --add-first registers each socket with epoll before it connects, as
 * nginx does. --plain-server runs the server as a fresh image of this
 * program without LD_PRELOAD: a client alone under tsss (a one-sided
 * deployment).
 *
 * Output: "RESULT conns=N ok=1", or HANG / MISMATCH lines and status 1.
 */
#include "common.h"

#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define REQ 64
#define REPLY 104

static void serve(int l)
{
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            continue;
        char b[4096];
        size_t got = 0;
        while (got < REQ) {
            ssize_t r = read(c, b, sizeof b);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        memset(b, 'r', REPLY);
        if (write(c, b, REPLY) != REPLY)
            _exit(1);
        shutdown(c, SHUT_WR);
        while (recv(c, b, sizeof b, 0) > 0) {
        }
        close(c);
    }
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc == 3 && strcmp(argv[1], "--serve-fd") == 0)
        serve(atoi(argv[2]));
    if (argc < 3)
        dief("usage: etshut PATH N [--add-first] [--plain-server]");
    long n = atol(argv[2]);
    int add_first = 0, plain_server = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--add-first") == 0)
            add_first = 1;
        else if (strcmp(argv[i], "--plain-server") == 0)
            plain_server = 1;
        else
            dief("unknown option %s", argv[i]);
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
    unlink(argv[1]);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 64) != 0)
        die("listen");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (plain_server) {
            char fdarg[16];
            snprintf(fdarg, sizeof fdarg, "%d", l);
            unsetenv("LD_PRELOAD");
            execl("/proc/self/exe", argv[0], "--serve-fd", fdarg, (char *)NULL);
            die("exec");
        }
        serve(l);
    }
    close(l);
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    int status = 0;
    for (long i = 0; i < n && !status; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            die("socket");
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
        if (add_first && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            die("epoll_ctl");
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EAGAIN)
            die("connect");
        if (!add_first && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            die("epoll_ctl");
        char req[REQ];
        memset(req, 'q', REQ);
        if (write(fd, req, REQ) != REQ)
            die("write");
        size_t got = 0;
        int eof = 0;
        while (!eof) {
            struct epoll_event out[4];
            int k = epoll_wait(ep, out, 4, 3000);
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                die("epoll_wait");
            if (k == 0) {
                printf("HANG at connection %ld: %zu bytes, no EOF edge\n", i, got);
                status = 1;
                break;
            }
            for (int j = 0; j < k; j++) {
                if (out[j].events & EPOLLRDHUP)
                    eof = 1;
                if (out[j].events & EPOLLIN) {
                    char b[4096];
                    ssize_t r = recv(fd, b, sizeof b, 0);
                    if (r > 0)
                        got += (size_t)r;
                    else if (r == 0)
                        eof = 1;
                }
            }
        }
        char b[4096];
        ssize_t r;
        while ((r = recv(fd, b, sizeof b, 0)) > 0)
            got += (size_t)r;
        if (!status && got != REPLY) {
            printf("MISMATCH at connection %ld: %zu bytes, want %d\n", i, got, REPLY);
            status = 1;
        }
        close(fd);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (!status)
        printf("RESULT conns=%ld ok=1\n", n);
    return status;
}
