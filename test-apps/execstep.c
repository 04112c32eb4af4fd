/*
 * execstep - a connection handed to another program (exec or posix_spawn)
 * at a chosen step of its start, on either side.
 *
 *   execstep server PATH STEP HOW KIND
 *   execstep client PATH STEP HOW KIND
 *       The client streams LEN bytes of the pattern in 4 KiB chunks and
 *       reads each chunk's echo before the next; the server echoes until
 *       EOF.  One side hands the connection over at STEP:
 *         server  accept    right after accept()
 *                 attached  100 ms after accept(), having read nothing
 *                           (the client has read the server's first bytes
 *                           meanwhile)
 *                 switched  after echoing two chunks
 *         client  connect   right after connect() (the server accepts
 *                           100 ms later)
 *                 hello     100 ms after connect(), having read nothing
 *                 attached  after a non-blocking read that finds nothing
 *                           (the server sleeps 300 ms after accept)
 *                 switched  after two chunks and their echoes
 *       HOW: exec (execv of "execstep child", the descriptor on 0 and 1)
 *       or spawn (posix_spawn of it, file actions dup2 the descriptor to
 *       0 and 1; the parent closes its copy and waits).  KIND: rw (the
 *       child uses read/write) or stdio (fread/fwrite on stdin/stdout,
 *       which LD_PRELOAD cannot intercept).  The other side sleeps as the
 *       step needs and otherwise runs to the end itself.
 *         RESULT role=R bytes=N ok=1
 *
 *   execstep child ROLE KIND OFF
 *       the handed-over end: ROLE server echoes until EOF; ROLE client
 *       streams pattern bytes [OFF, LEN) as above and shuts down.
 *
 * LEN is 1 MiB.  Wrong bytes print MISMATCH and exit 1; no echo within
 * 10 s exits 1 with "hang".
 */
#include "common.h"

#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>

#define LEN (1u << 20)
#define CHUNK 4096u

extern char **environ;

static unsigned char *g_pat;
static char g_self[4096];

static void pattern(void)
{
    g_pat = xmalloc(LEN);
    fill_pattern(g_pat, LEN, PATTERN_SEED ^ 0xe8ec);
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the two ends, over plain read/write or over stdio ---- */

struct io {
    int fd;
    FILE *in, *out;
};

static size_t io_read(struct io *io, unsigned char *b, size_t n)
{
    if (io->in) {
        size_t k = fread(b, 1, n, io->in);
        if (k == 0 && ferror(io->in)) die("fread");
        return k;
    }
    for (;;) {
        struct pollfd p = {.fd = io->fd, .events = POLLIN};
        int r = poll(&p, 1, 10000);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("poll");
        if (r == 0) dief("hang: nothing to read for 10 s");
        ssize_t k = read(io->fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) die("read");
        return (size_t)k;
    }
}

static void io_write(struct io *io, const unsigned char *b, size_t n)
{
    if (io->out) {
        if (fwrite(b, 1, n, io->out) != n || fflush(io->out) != 0) die("fwrite");
        return;
    }
    write_all(io->fd, b, n);
}

static void check(const unsigned char *b, size_t off, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] != g_pat[off + i]) {
            fprintf(stderr, "execstep: MISMATCH in %s at stream byte %zu\n", what, off + i);
            exit(1);
        }
    }
}

/* Echoes until EOF; returns the bytes echoed (all checked). */
static size_t echo(struct io *io, size_t off, size_t max)
{
    unsigned char buf[CHUNK];
    size_t done = 0;
    while (done < max) {
        size_t k = io_read(io, buf, sizeof buf < max - done ? sizeof buf : max - done);
        if (k == 0) break;
        check(buf, off + done, k, "echo server input");
        io_write(io, buf, k);
        done += k;
    }
    return done;
}

/* Sends chunks [off, end) and reads each one's echo. */
static void stream(struct io *io, size_t off, size_t end)
{
    unsigned char buf[CHUNK];
    while (off < end) {
        size_t n = end - off < CHUNK ? end - off : CHUNK;
        io_write(io, g_pat + off, n);
        size_t got = 0;
        while (got < n) {
            size_t k = io_read(io, buf + got, n - got);
            if (k == 0) dief("unexpected EOF at stream byte %zu", off + got);
            got += k;
        }
        check(buf, off, n, "echo");
        off += n;
    }
}

/* ---- handing over ---- */

static void hand_over(int fd, const char *role, const char *how, const char *kind, size_t off)
{
    char offs[32];
    snprintf(offs, sizeof offs, "%zu", off);
    char *argv[] = {g_self, "child", (char *)role, (char *)kind, offs, NULL};
    fprintf(stderr, "execstep: handover %s %s at %zu\n", how, role, off);
    if (strcmp(how, "exec") == 0) {
        if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0) die("dup2");
        if (fd > 1) close(fd);
        execv(g_self, argv);
        die("execv");
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 0);
    posix_spawn_file_actions_adddup2(&fa, fd, 1);
    posix_spawn_file_actions_addclose(&fa, fd);
    pid_t pid;
    int e = posix_spawn(&pid, g_self, &fa, NULL, argv, environ);
    if (e != 0) {
        errno = e;
        die("posix_spawn");
    }
    close(fd);
    int st;
    if (waitpid(pid, &st, 0) != pid) die("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) dief("child failed (status %d)", st);
    exit(0);
}

static int server(const char *path, const char *step, const char *how, const char *kind)
{
    int lfd = listen_unix(path, 0);
    if (strcmp(step, "client-connect") == 0) msleep(100);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) die("accept");
    close(lfd);
    struct io io = {.fd = fd};
    size_t done = 0;
    if (strcmp(step, "accept") == 0) hand_over(fd, "server", how, kind, 0);
    if (strcmp(step, "attached") == 0) {
        msleep(100);
        hand_over(fd, "server", how, kind, 0);
    }
    if (strcmp(step, "switched") == 0) {
        done = echo(&io, 0, 2 * CHUNK);
        if (done != 2 * CHUNK) dief("EOF after %zu bytes", done);
        hand_over(fd, "server", how, kind, done);
    }
    if (strcmp(step, "client-attached") == 0) msleep(300);
    done += echo(&io, done, LEN);
    printf("RESULT role=server bytes=%zu ok=1\n", done);
    return 0;
}

static int client(const char *path, const char *step, const char *how, const char *kind)
{
    int fd = connect_unix(path);
    struct io io = {.fd = fd};
    size_t off = 0;
    if (strcmp(step, "connect") == 0) hand_over(fd, "client", how, kind, 0);
    if (strcmp(step, "hello") == 0) {
        msleep(100);
        hand_over(fd, "client", how, kind, 0);
    }
    if (strcmp(step, "attached") == 0) {
        msleep(100);
        unsigned char b;
        if (recv(fd, &b, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
            dief("expected nothing to read yet");
        hand_over(fd, "client", how, kind, 0);
    }
    if (strcmp(step, "switched") == 0) {
        stream(&io, 0, 2 * CHUNK);
        off = 2 * CHUNK;
        hand_over(fd, "client", how, kind, off);
    }
    stream(&io, off, LEN);
    if (shutdown(fd, SHUT_WR) != 0) die("shutdown");
    unsigned char b;
    if (io_read(&io, &b, 1) != 0) dief("bytes after the last echo");
    printf("RESULT role=client bytes=%u ok=1\n", LEN);
    return 0;
}

static int child(const char *role, const char *kind, size_t off)
{
    struct io io = {.fd = 0};
    if (strcmp(kind, "stdio") == 0) {
        io.in = stdin;
        io.out = stdout;
    }
    if (strcmp(role, "server") == 0) {
        size_t n = echo(&io, off, LEN - off);
        fprintf(stderr, "CHILD role=server bytes=%zu\n", off + n);
        if (off + n != LEN) dief("EOF after %zu bytes", off + n);
        return 0;
    }
    stream(&io, off, LEN);
    if (io.out) fflush(io.out);
    if (shutdown(1, SHUT_WR) != 0) die("shutdown");
    unsigned char b;
    if (io_read(&io, &b, 1) != 0) dief("bytes after the last echo");
    fprintf(stderr, "CHILD role=client bytes=%u\n", LEN);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (!realpath("/proc/self/exe", g_self)) die("realpath");
    pattern();
    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return child(argv[2], argv[3], strtoul(argv[4], NULL, 10));
    if (argc == 6 && strcmp(argv[1], "server") == 0)
        return server(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 6 && strcmp(argv[1], "client") == 0)
        return client(argv[2], argv[3], argv[4], argv[5]);
    fprintf(stderr, "usage: execstep server|client PATH STEP exec|spawn rw|stdio\n"
                    "       execstep child server|client rw|stdio OFF\n");
    return 2;
}
