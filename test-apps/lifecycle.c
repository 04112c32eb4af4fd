/*
 * lifecycle - a connection that outlives the process that made it:
 * fork-per-connection servers, vfork + exec, _Fork, posix_spawn.
 *
 *   lifecycle forkserver PATH CONNS
 *       accept CONNS connections; for each, fork() a child that echoes it
 *       until EOF, while the parent closes its copy at once and accepts the
 *       next (the inetd / postgres pattern).  Each child prints
 *         CHILD role=forkchild bytes=N ok=1
 *       and the parent, once every child has exited 0,
 *         RESULT role=forkserver conns=N ok=1
 *
 *   lifecycle server PATH
 *       accept one connection and echo it until EOF, checking that byte k
 *       of the stream is byte k of the pattern (MISMATCH otherwise).
 *         RESULT role=server bytes=N end=eof|<error> ok=1
 *       (ok=0 only for wrong bytes; the test judges bytes and end).
 *
 *   lifecycle client PATH HOW BEFORE DURING AFTER
 *       connect, exchange stream bytes [0, BEFORE) (write a chunk, read
 *       its echo, compare), then hand the connection on as HOW says, the
 *       new process exchanging [BEFORE, BEFORE+DURING), and exchange the
 *       rest, AFTER bytes, itself.  HOW is one of
 *         vfork, fork  vfork() / fork(), the child execve()s
 *                      "lifecycle child" with the inherited descriptor
 *                      (same number, environ), optionally followed by
 *           -move      the child first dup2()s the descriptor to 40 and
 *                      closes the original (as subprocess modules do)
 *           -noenv     the child execs with an environment without
 *                      LD_PRELOAD
 *           -static    the child execs the statically linked
 *                      lifecycle_static
 *         _fork        _Fork(); the child only writes its part (no echo
 *                      read), closes and _exit()s while the parent reads
 *                      that part's echo concurrently
 *         spawn        posix_spawn "lifecycle child", file actions move
 *                      the descriptor to 50 and close the original
 *         spawn-static the same with the statically linked lifecycle_static
 *         spawn-cloexec  spawn with FD_CLOEXEC set on the descriptor: only
 *                      the file actions' dup2 makes the child inherit it
 *                      (Rust's Command with Stdio::from(UnixStream))
 *       Before handing over it prints "lifecycle: handover HOW at BEFORE" on
 *       stderr.  Output:
 *         RESULT role=client how=HOW before=R child=R after=R ok=1
 *       where each R is ok, eof, error:<errno>, hang (no echo within
 *       5 s), exit:<status> or skipped; ok=1 only if all three are ok.
 *       Wrong bytes anywhere print MISMATCH and exit 1.  Env
 *       LIFECYCLE_CORRUPT=N flips stream byte N on its way out of whichever
 *       process sends it (self-check: the server must report MISMATCH).
 *
 *   lifecycle child FD OFF LEN
 *       exchange stream bytes [OFF, OFF+LEN) on FD; prints
 *         CHILD role=child pid=P result=R
 *       and exits 0 (ok), 2 (eof), 3 (error), 4 (hang); 1 on MISMATCH.
 *
 * Stream byte k is pattern byte k mod 1 MiB.
 */
#include "common.h"

#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>

#define PLEN (1u << 20)
#define CHUNK_MAX (32u << 10)
#define READ_TIMEOUT_MS 5000

extern char **environ;

static unsigned char *g_pat; /* 2 * PLEN: second half repeats the first */
static unsigned char g_buf[CHUNK_MAX];
static char g_self[PATH_MAX];

enum { RES_OK = 0, RES_MISMATCH = 1, RES_EOF = 2, RES_ERROR = 3, RES_HANG = 4 };

static void init_pattern(void)
{
    g_pat = xmalloc(2 * PLEN);
    fill_pattern(g_pat, PLEN, PATTERN_SEED ^ 0x11fe);
    memcpy(g_pat + PLEN, g_pat, PLEN);
}

static const unsigned char *pat(uint64_t off)
{
    return g_pat + (off & (PLEN - 1));
}

/* Chunk sizes 1 .. CHUNK_MAX, varying with the offset. */
static size_t chunk_at(uint64_t off, uint64_t left)
{
    uint64_t c = splitmix64(off) % CHUNK_MAX + 1;
    return (size_t)(c < left ? c : left);
}

static int g_err; /* errno behind the last RES_ERROR */

static int send_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            g_err = errno;
            return RES_ERROR;
        }
        p += w;
        n -= (size_t)w;
    }
    return RES_OK;
}

/* Env LIFECYCLE_CORRUPT=N: this process flips stream byte N on the way
 * out (a self-check: the receiver must report MISMATCH). */
static int64_t g_corrupt = -1;

/* Writes stream bytes [off, off+n). */
static int send_stream(int fd, uint64_t off, size_t n)
{
    if (g_corrupt >= 0 && (uint64_t)g_corrupt >= off && (uint64_t)g_corrupt < off + n) {
        unsigned char *tmp = xmalloc(n);
        memcpy(tmp, pat(off), n);
        tmp[(uint64_t)g_corrupt - off] ^= 0x5a;
        int r = send_all(fd, tmp, n);
        free(tmp);
        return r;
    }
    return send_all(fd, pat(off), n);
}

/* Reads n bytes, expected to be stream bytes [off, off+n). */
static int recv_check(int fd, uint64_t off, size_t n)
{
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, READ_TIMEOUT_MS);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (r == 0)
            return RES_HANG;
        ssize_t k = read(fd, g_buf + got, n - got);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            g_err = errno;
            return RES_ERROR;
        }
        if (k == 0)
            return RES_EOF;
        got += (size_t)k;
    }
    if (memcmp(g_buf, pat(off), n) != 0) {
        size_t i = 0;
        while (g_buf[i] == pat(off)[i])
            i++;
        dief("MISMATCH: echoed stream byte %" PRIu64 " is 0x%02x, expected 0x%02x",
             off + i, g_buf[i], pat(off)[i]);
    }
    return RES_OK;
}

/* Writes stream bytes [off, off+len) chunk by chunk, reading each echo. */
static int exchange(int fd, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    while (off < end) {
        size_t n = chunk_at(off, end - off);
        int r = send_stream(fd, off, n);
        if (r == RES_OK)
            r = recv_check(fd, off, n);
        if (r != RES_OK)
            return r;
        off += n;
    }
    return RES_OK;
}

static const char *rname(int r, char *buf, size_t cap)
{
    switch (r) {
    case RES_OK: return "ok";
    case RES_EOF: return "eof";
    case RES_HANG: return "hang";
    case RES_ERROR:
        snprintf(buf, cap, "error:%s", strerrorname_np(g_err) ? strerrorname_np(g_err) : "?");
        return buf;
    default:
        if (r >= 200)
            snprintf(buf, cap, "signal:%d", r - 200);
        else
            snprintf(buf, cap, "exit:%d", r - 100);
        return buf;
    }
}

/* ------------------------------------------------------------ modes */

static int forkserver(const char *path, uint64_t conns)
{
    int lfd = listen_unix(path, 0);
    fflush(NULL);
    for (uint64_t i = 0; i < conns; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                i--;
                continue;
            }
            die("accept");
        }
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            xclose(lfd);
            uint64_t bytes = 0;
            for (;;) {
                ssize_t n = read(fd, g_buf, sizeof g_buf);
                if (n < 0) {
                    if (errno == EINTR)
                        continue;
                    die("child read");
                }
                if (n == 0)
                    break;
                write_all(fd, g_buf, (size_t)n);
                bytes += (uint64_t)n;
            }
            xclose(fd);
            dprintf(1, "CHILD role=forkchild pid=%d bytes=%" PRIu64 " ok=1\n",
                    (int)getpid(), bytes);
            _exit(0);
        }
        xclose(fd); /* the child serves it */
    }
    xclose(lfd);
    unlink(path);
    uint64_t good = 0;
    for (uint64_t i = 0; i < conns; i++) {
        int st;
        if (wait(&st) < 0)
            die("wait");
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            good++;
    }
    printf("RESULT role=forkserver conns=%" PRIu64 " children_ok=%" PRIu64 " ok=%d\n",
           conns, good, good == conns);
    return good == conns ? 0 : 1;
}

static int server(const char *path)
{
    int lfd = listen_unix(path, 0);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        die("accept");
    xclose(lfd);
    unlink(path);
    uint64_t off = 0;
    const char *end = "eof";
    for (;;) {
        ssize_t n = read(fd, g_buf, sizeof g_buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            end = strerrorname_np(errno);
            break;
        }
        if (n == 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (g_buf[i] != pat(off + (uint64_t)i)[0])
                dief("MISMATCH: received stream byte %" PRIu64 " is 0x%02x, expected 0x%02x",
                     off + (uint64_t)i, g_buf[i], pat(off + (uint64_t)i)[0]);
        off += (uint64_t)n;
        if (send_all(fd, g_buf, (size_t)n) != RES_OK) {
            end = strerrorname_np(g_err);
            break;
        }
    }
    close(fd);
    printf("RESULT role=server bytes=%" PRIu64 " end=%s ok=1\n", off, end ? end : "?");
    return 0;
}

static int child(int fd, uint64_t off, uint64_t len)
{
    char b[64];
    int r = exchange(fd, off, len);
    dprintf(1, "CHILD role=child pid=%d result=%s\n", (int)getpid(), rname(r, b, sizeof b));
    return r;
}

/* Result of a waited-for child: a RES_* code, 100 + another exit status,
 * or 200 + the signal that killed it. */
static int child_result(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid");
    if (WIFSIGNALED(st))
        return 200 + WTERMSIG(st);
    int e = WEXITSTATUS(st);
    if (e == RES_MISMATCH)
        dief("MISMATCH in the child (see above)");
    return e <= RES_HANG ? e : 100 + e;
}

static char **env_without_preload(void)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **e = calloc(n + 1, sizeof *e);
    if (!e)
        die("calloc");
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            e[k++] = environ[i];
    e[k] = NULL;
    return e;
}

/* vfork or fork, then execve; what a vfork child touches is prepared
 * before. */
static pid_t do_exec(int use_vfork, int fd, int move_to, const char *prog, char **argv,
                     char **envp)
{
    pid_t pid = use_vfork ? vfork() : fork();
    if (pid == 0) {
        if (move_to >= 0) {
            if (dup2(fd, move_to) < 0)
                _exit(120);
            close(fd);
        }
        execve(prog, argv, envp);
        _exit(127);
    }
    return pid;
}

static pid_t do_spawn(const char *prog, int fd, int move_to, char **argv)
{
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0 ||
        posix_spawn_file_actions_adddup2(&fa, fd, move_to) != 0 ||
        posix_spawn_file_actions_addclose(&fa, fd) != 0)
        dief("posix_spawn_file_actions");
    pid_t pid;
    int e = posix_spawn(&pid, prog, &fa, NULL, argv, environ);
    if (e != 0) {
        errno = e;
        die("posix_spawn");
    }
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

/* _Fork child: writes its part, closes, exits; the parent reads the echo. */
static int do_fork_(int fd, uint64_t off, uint64_t len)
{
    pid_t pid = _Fork();
    if (pid < 0)
        die("_Fork");
    if (pid == 0) {
        uint64_t end = off + len;
        for (uint64_t o = off; o < end;) {
            size_t n = chunk_at(o, end - o);
            if (send_stream(fd, o, n) != RES_OK)
                _exit(RES_ERROR);
            o += n;
        }
        close(fd);
        _exit(0);
    }
    int r = RES_OK;
    uint64_t end = off + len;
    for (uint64_t o = off; o < end && r == RES_OK;) {
        size_t n = chunk_at(o, end - o);
        r = recv_check(fd, o, n);
        o += n;
    }
    int c = child_result(pid);
    return r != RES_OK ? r : c;
}

static int client(const char *path, const char *how, uint64_t before, uint64_t during,
                  uint64_t after)
{
    int fd = connect_unix(path);
    char b1[64], b2[64], b3[64];
    int rb = exchange(fd, 0, before), rc = -1, ra = -1;
    if (rb == RES_OK) {
        char sfd[16], soff[32], slen[32];
        snprintf(soff, sizeof soff, "%" PRIu64, before);
        snprintf(slen, sizeof slen, "%" PRIu64, during);
        fprintf(stderr, "lifecycle: handover %s at %" PRIu64 "\n", how, before);
        fflush(NULL);
        pid_t pid = -1;
        int is_static = strstr(how, "-static") != NULL;
        char prog[PATH_MAX + 16];
        snprintf(prog, sizeof prog, "%s%s", g_self, is_static ? "_static" : "");
        if (strncmp(how, "vfork", 5) == 0 || strncmp(how, "fork", 4) == 0) {
            int move = strstr(how, "-move") != NULL;
            int noenv = strstr(how, "-noenv") != NULL;
            snprintf(sfd, sizeof sfd, "%d", move ? 40 : fd);
            char *argv[] = {"lifecycle", "child", sfd, soff, slen, NULL};
            pid = do_exec(how[0] == 'v', fd, move ? 40 : -1, prog, argv,
                          noenv ? env_without_preload() : environ);
            if (pid < 0)
                die("fork");
            rc = child_result(pid);
        } else if (strcmp(how, "_fork") == 0) {
            rc = do_fork_(fd, before, during);
        } else if (strncmp(how, "spawn", 5) == 0) {
            snprintf(sfd, sizeof sfd, "%d", 50);
            char *argv[] = {"lifecycle", "child", sfd, soff, slen, NULL};
            if (strstr(how, "-cloexec") != NULL && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
                die("fcntl");
            pid = do_spawn(prog, fd, 50, argv);
            rc = child_result(pid);
        } else {
            dief("unknown HOW '%s'", how);
        }
        ra = exchange(fd, before + during, after);
    }
    close(fd);
    int ok = rb == RES_OK && rc == RES_OK && ra == RES_OK;
    printf("RESULT role=client how=%s before=%s child=%s after=%s ok=%d\n", how,
           rname(rb, b1, sizeof b1), rc < 0 ? "skipped" : rname(rc, b2, sizeof b2),
           ra < 0 ? "skipped" : rname(ra, b3, sizeof b3), ok);
    return ok ? 0 : 1;
}

static void usage(void)
{
    dief("usage: lifecycle forkserver PATH CONNS | server PATH | "
         "client PATH HOW BEFORE DURING AFTER | child FD OFF LEN");
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    init_pattern();
    g_corrupt = env_i64("LIFECYCLE_CORRUPT");
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
    if (n < 0)
        die("readlink /proc/self/exe");
    g_self[n] = '\0';
    if (argc == 4 && strcmp(argv[1], "forkserver") == 0)
        return forkserver(argv[2], parse_size(argv[3], "CONNS"));
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return server(argv[2]);
    if (argc == 7 && strcmp(argv[1], "client") == 0)
        return client(argv[2], argv[3], parse_size(argv[4], "BEFORE"),
                      parse_size(argv[5], "DURING"), parse_size(argv[6], "AFTER"));
    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return child((int)parse_size(argv[2], "FD"), parse_size(argv[3], "OFF"),
                     parse_size(argv[4], "LEN"));
    usage();
}
