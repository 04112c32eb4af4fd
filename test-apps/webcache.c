/*
 * webcache - a file cache server and a "web proxy" client hammering it, after
 * the webproxy/cache benchmark of tssx.
 *
 *   webcache mkfiles DIR N
 *   webcache cache PATH DIR NWORKERS [--sendfile] [--max-conns N]
 *   webcache webproxy PATH NCONNS NREQS NAME...
 *
 * mkfiles: creates N files in DIR named "fII-SIZE.dat" (II = index, SIZE =
 * byte count, log-spread from 1 KiB to 4 MiB).  A file's size is part of its
 * name and its content is the xorshift64 pattern of common.h seeded by the
 * FNV-1a hash of the name, so the client can regenerate the expected content
 * of every file from its name alone.
 *
 * cache: listens on the AF_UNIX stream socket PATH.  The boss (main) thread
 * accepts connections and pushes them into a bounded queue (mutex +
 * condvars); NWORKERS worker threads pop connections and serve requests on
 * each until EOF (keep-alive).  Protocol, per request:
 *     client -> cache:  "GET <name>\n"
 *     cache -> client:  "OK <size>\n" followed by exactly <size> bytes of
 *                       DIR/<name>, or "ERR notfound\n" if there is no such
 *                       file ("ERR badrequest\n" for a name containing '/'
 *                       or starting with '.').
 * File bytes are sent with pread()+write() in 256 KiB chunks (the header
 * rides in the first chunk's write), or with sendfile(2) after the header
 * with --sendfile.  The cache exits after --max-conns N connections have
 * been served, or on SIGTERM/SIGINT (stops accepting, wakes the workers by
 * shutting their connections down, gives them 2 s).
 *
 * webproxy: NCONNS threads, one connection each; they connect, meet at a
 * barrier (the clock starts there), and each issues NREQS requests, request
 * k of connection i asking for NAME[(i + k) % count] (deterministic round
 * robin).  Every reply is checked: names of the mkfiles form must come back
 * as "OK <size>" with the size from the name and the exact content; any
 * other name must come back as "ERR notfound" (e.g. "missing.dat"), or as
 * "ERR badrequest" if it contains '/' or starts with '.'.
 * Wrong headers, sizes or bytes print MISMATCH and exit 1.
 *
 * Output:
 *   RESULT role=mkfiles files=N bytes=B ok=1
 *   RESULT role=cache conns=N requests=R bytes=B ok=1
 *   RESULT role=webproxy conns=C requests=R bytes=B secs=T gbps=X rps=Y ok=1
 *     (bytes: file bytes received, headers not counted; gbps = bytes/secs/1e9)
 *
 * Env WEBCACHE_TIMEOUT=S: any role exits 1 after S seconds (default 300;
 * 0 disables).
 */
#include "common.h"

#include <dirent.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sys/sendfile.h>
#include <sys/stat.h>

#define CHUNK (256u * 1024u)
#define HDR_ROOM 64u
#define LINE_MAX_LEN 1024u
#define QUEUE_CAP 64u
#define MIN_FILE 1024u
#define MAX_FILE (4u * 1024u * 1024u)

static void pthread_check(int e, const char *what)
{
    if (e != 0) {
        errno = e;
        die(what);
    }
}

/* ---- file naming / content ------------------------------------------- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Size encoded in a mkfiles name "f<digits>-<size>.dat"; -1 if not one. */
static int64_t name_size(const char *name)
{
    const char *p = name;
    if (*p++ != 'f' || *p < '0' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p++ != '-' || *p < '0' || *p > '9')
        return -1;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > (1ull << 40))
            return -1;
        p++;
    }
    if (strcmp(p, ".dat") != 0)
        return -1;
    return (int64_t)v;
}

static void fill_file(unsigned char *buf, size_t len, const char *name)
{
    fill_pattern(buf, len, fnv1a(name));
}

static int do_mkfiles(int argc, char **argv)
{
    if (argc != 4)
        dief("usage: webcache mkfiles DIR N");
    const char *dir = argv[2];
    uint64_t n = parse_size(argv[3], "N");
    if (n == 0 || n > 1000)
        dief("N must be in 1..1000");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        die("mkdir");
    unsigned char *buf = xmalloc(MAX_FILE);
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        double f = n > 1 ? (double)i / (double)(n - 1) : 0.0;
        size_t size = (size_t)llround(MIN_FILE * pow((double)MAX_FILE / MIN_FILE, f));
        if (size > MAX_FILE)
            size = MAX_FILE;
        char name[64], path[4096];
        snprintf(name, sizeof name, "f%02" PRIu64 "-%zu.dat", i, size);
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
            dief("path too long");
        fill_file(buf, size, name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die("open");
        write_all(fd, buf, size);
        xclose(fd);
        total += size;
    }
    free(buf);
    printf("RESULT role=mkfiles files=%" PRIu64 " bytes=%" PRIu64 " ok=1\n", n, total);
    return 0;
}

/* ---- cache server ---------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    int q[QUEUE_CAP];
    unsigned head, len;
    int closed; /* no more connections will be pushed */
} g_q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
         PTHREAD_COND_INITIALIZER, {0}, 0, 0, 0};

static void q_push(int fd)
{
    pthread_mutex_lock(&g_q.mu);
    while (g_q.len == QUEUE_CAP)
        pthread_cond_wait(&g_q.not_full, &g_q.mu);
    g_q.q[(g_q.head + g_q.len) % QUEUE_CAP] = fd;
    g_q.len++;
    pthread_cond_signal(&g_q.not_empty);
    pthread_mutex_unlock(&g_q.mu);
}

static void q_close(void)
{
    pthread_mutex_lock(&g_q.mu);
    g_q.closed = 1;
    pthread_cond_broadcast(&g_q.not_empty);
    pthread_mutex_unlock(&g_q.mu);
}

/* Returns -1 once the queue is closed and drained. */
static int q_pop(void)
{
    pthread_mutex_lock(&g_q.mu);
    while (g_q.len == 0 && !g_q.closed)
        pthread_cond_wait(&g_q.not_empty, &g_q.mu);
    int fd = -1;
    if (g_q.len > 0) {
        fd = g_q.q[g_q.head];
        g_q.head = (g_q.head + 1) % QUEUE_CAP;
        g_q.len--;
        pthread_cond_signal(&g_q.not_full);
    }
    pthread_mutex_unlock(&g_q.mu);
    return fd;
}

struct worker {
    pthread_t th;
    int dirfd;
    int use_sendfile;
    int cur_fd; /* connection being served, -1 if none (under g_active_mu) */
    int stopping;
    uint64_t conns, requests, bytes;
};

static pthread_mutex_t g_active_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t g_stop;

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* Buffered line reader over a socket. */
struct linebuf {
    int fd;
    char buf[LINE_MAX_LEN * 4];
    size_t off, len;
};

/*
 * Read one '\n'-terminated line (terminator stripped, NUL-terminated) into
 * out.  Returns 1 on a line, 0 on clean EOF at a line boundary, -1 on EOF
 * in the middle of a line.  A line longer than LINE_MAX_LEN is fatal.
 */
static int read_line(struct linebuf *lb, char *out, int eof_ok_on_err)
{
    for (;;) {
        char *nl = memchr(lb->buf + lb->off, '\n', lb->len);
        if (nl) {
            size_t n = (size_t)(nl - (lb->buf + lb->off));
            memcpy(out, lb->buf + lb->off, n);
            out[n] = '\0';
            lb->off += n + 1;
            lb->len -= n + 1;
            return 1;
        }
        if (lb->len >= LINE_MAX_LEN)
            dief("protocol error: line longer than %u bytes", LINE_MAX_LEN);
        if (lb->off > 0) {
            memmove(lb->buf, lb->buf + lb->off, lb->len);
            lb->off = 0;
        }
        ssize_t r = read(lb->fd, lb->buf + lb->len, sizeof lb->buf - lb->len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (eof_ok_on_err && (errno == ECONNRESET || errno == EPIPE))
                return lb->len ? -1 : 0;
            die("read");
        }
        if (r == 0)
            return lb->len ? -1 : 0;
        lb->len += (size_t)r;
    }
}

static int valid_name(const char *name)
{
    return name[0] != '\0' && name[0] != '.' && strchr(name, '/') == NULL;
}

/* Serve one GET; returns file bytes sent. */
static uint64_t serve_get(struct worker *w, int cfd, const char *name,
                          unsigned char *buf)
{
    static const char notfound[] = "ERR notfound\n";
    static const char badreq[] = "ERR badrequest\n";
    if (!valid_name(name)) {
        write_all(cfd, badreq, sizeof badreq - 1);
        return 0;
    }
    int ffd = openat(w->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (ffd < 0) {
        if (errno != ENOENT)
            die("openat");
        write_all(cfd, notfound, sizeof notfound - 1);
        return 0;
    }
    struct stat st;
    if (fstat(ffd, &st) != 0)
        die("fstat");
    if (!S_ISREG(st.st_mode)) {
        xclose(ffd);
        write_all(cfd, notfound, sizeof notfound - 1);
        return 0;
    }
    uint64_t size = (uint64_t)st.st_size;
    char hdr[HDR_ROOM];
    int hl = snprintf(hdr, sizeof hdr, "OK %" PRIu64 "\n", size);
    uint64_t off = 0;
    if (w->use_sendfile) {
        write_all(cfd, hdr, (size_t)hl);
        off_t o = 0;
        while ((uint64_t)o < size) {
            ssize_t n = sendfile(cfd, ffd, &o, (size_t)(size - (uint64_t)o));
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                die("sendfile");
            }
            if (n == 0)
                dief("sendfile: file %s shrank", name);
        }
        off = size;
    } else {
        /* header and the first chunk in one write */
        unsigned char *data = buf + HDR_ROOM;
        int first = 1;
        while (off < size || first) {
            size_t want = size - off < CHUNK ? (size_t)(size - off) : CHUNK;
            size_t got = 0;
            while (got < want) {
                ssize_t n = pread(ffd, data + got, want - got, (off_t)(off + got));
                if (n < 0) {
                    if (errno == EINTR)
                        continue;
                    die("pread");
                }
                if (n == 0)
                    dief("file %s shrank", name);
                got += (size_t)n;
            }
            if (first) {
                memcpy(data - hl, hdr, (size_t)hl);
                write_all(cfd, data - hl, (size_t)hl + got);
                first = 0;
            } else {
                write_all(cfd, data, got);
            }
            off += got;
        }
    }
    xclose(ffd);
    return off;
}

static void *worker_main(void *p)
{
    struct worker *w = p;
    unsigned char *buf = xmalloc(HDR_ROOM + CHUNK);
    struct linebuf *lb = xmalloc(sizeof *lb);
    char line[LINE_MAX_LEN + 1];
    for (;;) {
        int cfd = q_pop();
        if (cfd < 0)
            break;
        pthread_mutex_lock(&g_active_mu);
        w->cur_fd = cfd;
        int stopping = w->stopping;
        pthread_mutex_unlock(&g_active_mu);
        lb->fd = cfd;
        lb->off = lb->len = 0;
        while (!stopping) {
            int r = read_line(lb, line, 1);
            if (r == 0)
                break;
            if (r < 0)
                dief("protocol error: connection closed in the middle of a request");
            if (strncmp(line, "GET ", 4) != 0)
                dief("protocol error: bad request line '%.64s'", line);
            w->bytes += serve_get(w, cfd, line + 4, buf);
            w->requests++;
        }
        pthread_mutex_lock(&g_active_mu);
        w->cur_fd = -1;
        pthread_mutex_unlock(&g_active_mu);
        xclose(cfd);
        w->conns++;
    }
    free(lb);
    free(buf);
    return NULL;
}

static const char *g_sock_path;

static void unlink_sock(void)
{
    if (g_sock_path)
        unlink(g_sock_path);
}

static int do_cache(int argc, char **argv)
{
    const char *pos[3];
    int npos = 0, use_sendfile = 0;
    uint64_t max_conns = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--sendfile") == 0)
            use_sendfile = 1;
        else if (strcmp(argv[i], "--max-conns") == 0 && i + 1 < argc)
            max_conns = parse_size(argv[++i], "--max-conns");
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            dief("unknown option %s", argv[i]);
        else if (npos < 3)
            pos[npos++] = argv[i];
        else
            npos = 4;
    }
    if (npos != 3)
        dief("usage: webcache cache PATH DIR NWORKERS [--sendfile] [--max-conns N]");
    const char *path = pos[0], *dir = pos[1];
    uint64_t nworkers = parse_size(pos[2], "NWORKERS");
    if (nworkers == 0 || nworkers > 1024)
        dief("NWORKERS must be in 1..1024");

    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        die("open(DIR)");

    /* SIGTERM/SIGINT interrupt the boss's accept() (no SA_RESTART); the
     * workers block them so that the boss is the one to see them. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        die("sigaction");
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_check(pthread_sigmask(SIG_BLOCK, &term, &old), "pthread_sigmask");

    struct worker *ws = calloc(nworkers, sizeof *ws);
    if (!ws)
        die("calloc");
    for (uint64_t i = 0; i < nworkers; i++) {
        ws[i].dirfd = dirfd;
        ws[i].use_sendfile = use_sendfile;
        ws[i].cur_fd = -1;
        pthread_check(pthread_create(&ws[i].th, NULL, worker_main, &ws[i]),
                      "pthread_create");
    }
    pthread_check(pthread_sigmask(SIG_SETMASK, &old, NULL), "pthread_sigmask");

    int lfd = listen_unix(path, SOCK_CLOEXEC);
    g_sock_path = path;
    g_cleanup = unlink_sock;

    uint64_t accepted = 0;
    while (!g_stop && (max_conns == 0 || accepted < max_conns)) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept");
        }
        accepted++;
        q_push(fd);
    }
    xclose(lfd);
    unlink_sock();
    g_sock_path = NULL;
    q_close();

    if (g_stop) {
        /* Wake workers blocked in read() on idle keep-alive connections. */
        pthread_mutex_lock(&g_active_mu);
        for (uint64_t i = 0; i < nworkers; i++) {
            ws[i].stopping = 1;
            if (ws[i].cur_fd >= 0)
                shutdown(ws[i].cur_fd, SHUT_RDWR);
        }
        pthread_mutex_unlock(&g_active_mu);
        /* drop connections still queued */
        for (;;) {
            int fd = q_pop();
            if (fd < 0)
                break;
            xclose(fd);
        }
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 2;
        for (uint64_t i = 0; i < nworkers; i++) {
            int e = pthread_timedjoin_np(ws[i].th, NULL, &dl);
            if (e == ETIMEDOUT)
                dief("worker %" PRIu64 " did not stop within 2 s after SIGTERM", i);
            pthread_check(e, "pthread_timedjoin_np");
        }
    } else {
        for (uint64_t i = 0; i < nworkers; i++)
            pthread_check(pthread_join(ws[i].th, NULL), "pthread_join");
    }
    uint64_t conns = 0, reqs = 0, bytes = 0;
    for (uint64_t i = 0; i < nworkers; i++) {
        conns += ws[i].conns;
        reqs += ws[i].requests;
        bytes += ws[i].bytes;
    }
    xclose(dirfd);
    free(ws);
    printf("RESULT role=cache conns=%" PRIu64 " requests=%" PRIu64 " bytes=%" PRIu64
           " ok=1\n", conns, reqs, bytes);
    return 0;
}

/* ---- webproxy client ------------------------------------------------- */

struct entry {
    const char *name;
    int64_t size;         /* -1: expect ERR notfound */
    unsigned char *data;  /* expected content */
};

static struct entry *g_ents;
static size_t g_nents;
static const char *g_path;
static uint64_t g_nreqs;
static pthread_barrier_t g_bar;

struct client {
    pthread_t th;
    unsigned idx;
    uint64_t requests, bytes;
};

/* Read exactly len body bytes (buffered bytes first) and compare with want. */
static void read_body(struct linebuf *lb, const unsigned char *want, size_t len,
                      unsigned char *scratch, const char *name)
{
    size_t off = 0;
    size_t take = lb->len < len ? lb->len : len;
    if (take) {
        if (memcmp(lb->buf + lb->off, want, take) != 0)
            dief("MISMATCH: content of %s differs within bytes 0..%zu", name, take);
        lb->off += take;
        lb->len -= take;
        off = take;
    }
    while (off < len) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        ssize_t r = read(lb->fd, scratch, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (r == 0)
            dief("MISMATCH: EOF after %zu of %zu body bytes of %s", off, len, name);
        if (memcmp(scratch, want + off, (size_t)r) != 0)
            dief("MISMATCH: content of %s differs within bytes %zu..%zu", name, off,
                 off + (size_t)r);
        off += (size_t)r;
    }
}

static void *client_main(void *p)
{
    struct client *c = p;
    struct linebuf *lb = xmalloc(sizeof *lb);
    unsigned char *scratch = xmalloc(CHUNK);
    char line[LINE_MAX_LEN + 1], req[LINE_MAX_LEN + 8];
    lb->fd = connect_unix(g_path);
    lb->off = lb->len = 0;
    int e = pthread_barrier_wait(&g_bar);
    if (e != 0 && e != PTHREAD_BARRIER_SERIAL_THREAD)
        pthread_check(e, "pthread_barrier_wait");
    for (uint64_t k = 0; k < g_nreqs; k++) {
        const struct entry *en = &g_ents[(c->idx + k) % g_nents];
        int rl = snprintf(req, sizeof req, "GET %s\n", en->name);
        write_all(lb->fd, req, (size_t)rl);
        int r = read_line(lb, line, 0);
        if (r <= 0)
            dief("MISMATCH: connection closed before the reply to GET %s", en->name);
        if (en->size < 0) {
            const char *want = valid_name(en->name) ? "ERR notfound" : "ERR badrequest";
            if (strcmp(line, want) != 0)
                dief("MISMATCH: GET %s: expected '%s', got '%.64s'", en->name, want,
                     line);
        } else {
            char want[64];
            snprintf(want, sizeof want, "OK %" PRId64, en->size);
            if (strcmp(line, want) != 0)
                dief("MISMATCH: GET %s: expected '%s', got '%.64s'", en->name, want,
                     line);
            read_body(lb, en->data, (size_t)en->size, scratch, en->name);
            c->bytes += (uint64_t)en->size;
        }
        c->requests++;
    }
    if (shutdown(lb->fd, SHUT_WR) != 0)
        die("shutdown");
    /* the cache must not send anything unsolicited */
    unsigned char extra[16];
    ssize_t r;
    while ((r = read(lb->fd, extra, sizeof extra)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        die("read");
    if (r > 0 || lb->len > 0)
        dief("MISMATCH: unexpected extra data from the cache");
    xclose(lb->fd);
    free(scratch);
    free(lb);
    return NULL;
}

static int do_webproxy(int argc, char **argv)
{
    if (argc < 6)
        dief("usage: webcache webproxy PATH NCONNS NREQS NAME...");
    g_path = argv[2];
    uint64_t nconns = parse_size(argv[3], "NCONNS");
    g_nreqs = parse_size(argv[4], "NREQS");
    if (nconns == 0 || nconns > 4096)
        dief("NCONNS must be in 1..4096");
    g_nents = (size_t)(argc - 5);
    g_ents = calloc(g_nents, sizeof *g_ents);
    if (!g_ents)
        die("calloc");
    for (size_t i = 0; i < g_nents; i++) {
        const char *name = argv[5 + i];
        if (strlen(name) > LINE_MAX_LEN - 8 || strchr(name, '\n'))
            dief("bad name '%s'", name);
        g_ents[i].name = name;
        g_ents[i].size = name_size(name);
        if (g_ents[i].size > (int64_t)MAX_FILE * 64)
            dief("file %s too large", name);
        if (g_ents[i].size >= 0) {
            /* share the expected content of repeated names */
            for (size_t j = 0; j < i; j++)
                if (strcmp(g_ents[j].name, name) == 0)
                    g_ents[i].data = g_ents[j].data;
            if (!g_ents[i].data) {
                g_ents[i].data = xmalloc((size_t)g_ents[i].size);
                fill_file(g_ents[i].data, (size_t)g_ents[i].size, name);
            }
        }
    }

    struct client *cs = calloc(nconns, sizeof *cs);
    if (!cs)
        die("calloc");
    pthread_check(pthread_barrier_init(&g_bar, NULL, (unsigned)nconns + 1),
                  "pthread_barrier_init");
    for (uint64_t i = 0; i < nconns; i++) {
        cs[i].idx = (unsigned)i;
        pthread_check(pthread_create(&cs[i].th, NULL, client_main, &cs[i]),
                      "pthread_create");
    }
    int e = pthread_barrier_wait(&g_bar);
    if (e != 0 && e != PTHREAD_BARRIER_SERIAL_THREAD)
        pthread_check(e, "pthread_barrier_wait");
    uint64_t t0 = now_ns();
    uint64_t reqs = 0, bytes = 0;
    for (uint64_t i = 0; i < nconns; i++) {
        pthread_check(pthread_join(cs[i].th, NULL), "pthread_join");
        reqs += cs[i].requests;
        bytes += cs[i].bytes;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    if (secs <= 0)
        secs = 1e-9;
    printf("RESULT role=webproxy conns=%" PRIu64 " requests=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f gbps=%.4f rps=%.1f ok=1\n",
           nconns, reqs, bytes, secs, (double)bytes / secs / 1e9, (double)reqs / secs);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    arm_timeout_env("WEBCACHE_TIMEOUT", 300);
    if (argc >= 2 && strcmp(argv[1], "mkfiles") == 0)
        return do_mkfiles(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "cache") == 0)
        return do_cache(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "webproxy") == 0)
        return do_webproxy(argc, argv);
    fprintf(stderr,
            "usage: %s mkfiles DIR N\n"
            "       %s cache PATH DIR NWORKERS [--sendfile] [--max-conns N]\n"
            "       %s webproxy PATH NCONNS NREQS NAME...\n",
            g_prog, g_prog, g_prog);
    return 1;
}
