/*
 * stream - one-way AF_UNIX SOCK_STREAM throughput test with self-check.
 *
 *   stream server PATH [-n CONNS]
 *   stream client PATH MSGSIZE TOTALBYTES          (sizes accept k/m/g suffix)
 *
 * The client write()s messages of exactly MSGSIZE bytes (slices of a
 * deterministic xorshift64 pattern buffer at rotating offsets) until
 * TOTALBYTES (rounded up to whole messages) are sent, then shutdown(SHUT_WR).
 * The server reads to EOF (1 MiB read buffer), computing the fast
 * position-dependent checksum of common.h over the whole stream, and
 * replies with 24 bytes: LE u64 byte count, LE u64 checksum, LE u64
 * nanoseconds from accept() to EOF.  The client recomputes the expected
 * checksum (outside the timed section) and compares.
 *
 * Timing: secs = max(server time accept->EOF, client time first write ->
 * shutdown).  The receiver-side time is the accurate one (the sender can
 * finish while data still sits in socket buffers / rings); taking the max
 * is conservative.  gbps = bytes/secs/1e9, mmsgs = messages/secs/1e6.
 *
 * Env CORRUPT_AT=N (client): flip the byte at stream offset N while sending
 * (the expected checksum is of the uncorrupted stream) -> must fail with
 * MISMATCH.  Used to prove the checker works.
 *
 * Output:
 *   RESULT role=server conns=N bytes=B ok=1
 *   RESULT role=client size=S bytes=B secs=T gbps=X mmsgs=Y ssecs=T1 csecs=T2 ok=1
 */
#include "common.h"

#include <pthread.h>

#define RDBUF (1u << 20)
#define REPLY_LEN 24

struct conn_arg {
    int fd;
    uint64_t t_accept;
    uint64_t bytes;
    pthread_t th;
};

static void *serve_conn(void *p)
{
    struct conn_arg *ca = p;
    unsigned char *buf = xmalloc(RDBUF);
    cks_t c;
    cks_init(&c);
    uint64_t t1 = 0;
    for (;;) {
        ssize_t n = read(ca->fd, buf, RDBUF);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read");
        }
        if (n == 0) {
            t1 = now_ns();
            break;
        }
        cks_update(&c, buf, (size_t)n);
    }
    unsigned char rep[REPLY_LEN];
    put_le64(rep, c.total);
    put_le64(rep + 8, cks_final(&c));
    put_le64(rep + 16, t1 - ca->t_accept);
    write_all(ca->fd, rep, sizeof rep);
    xclose(ca->fd);
    ca->bytes = c.total;
    free(buf);
    return NULL;
}

static int do_server(int argc, char **argv)
{
    if (argc != 3 && !(argc == 5 && strcmp(argv[3], "-n") == 0))
        dief("usage: stream server PATH [-n CONNS]");
    const char *path = argv[2];
    uint64_t nconns = argc == 5 ? parse_size(argv[4], "CONNS") : 1;
    if (nconns == 0 || nconns > 100000)
        dief("invalid CONNS");
    int lfd = listen_unix(path, 0);
    struct conn_arg *cas = calloc(nconns, sizeof *cas);
    if (!cas)
        die("calloc");
    for (uint64_t i = 0; i < nconns; i++) {
        int fd;
        for (;;) {
            fd = accept(lfd, NULL, NULL);
            if (fd >= 0)
                break;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept");
        }
        cas[i].fd = fd;
        cas[i].t_accept = now_ns();
        int e = pthread_create(&cas[i].th, NULL, serve_conn, &cas[i]);
        if (e != 0) {
            errno = e;
            die("pthread_create");
        }
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < nconns; i++) {
        int e = pthread_join(cas[i].th, NULL);
        if (e != 0) {
            errno = e;
            die("pthread_join");
        }
        total += cas[i].bytes;
    }
    xclose(lfd);
    if (unlink(path) != 0 && errno != ENOENT)
        die("unlink");
    free(cas);
    printf("RESULT role=server conns=%" PRIu64 " bytes=%" PRIu64 " ok=1\n",
           nconns, total);
    return 0;
}

static int do_client(int argc, char **argv)
{
    if (argc != 5)
        dief("usage: stream client PATH MSGSIZE TOTALBYTES");
    const char *path = argv[2];
    uint64_t size = parse_size(argv[3], "MSGSIZE");
    uint64_t total = parse_size(argv[4], "TOTALBYTES");
    if (size == 0 || size > (1ull << 30))
        dief("MSGSIZE must be in 1..1G");
    uint64_t nmsgs = (total + size - 1) / size;
    uint64_t bytes = nmsgs * size;
    int64_t corrupt_at = env_i64("CORRUPT_AT");

    size_t plen = (size_t)size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, PATTERN_SEED);
    unsigned char *tmp = NULL;
    uint64_t corrupt_msg = UINT64_MAX;
    if (corrupt_at >= 0 && (uint64_t)corrupt_at < bytes) {
        corrupt_msg = (uint64_t)corrupt_at / size;
        tmp = xmalloc((size_t)size);
    }

    int fd = connect_unix(path);

    uint64_t t0 = now_ns();
    for (uint64_t k = 0; k < nmsgs; k++) {
        const unsigned char *src = pat + msg_offset(k);
        if (k == corrupt_msg) {
            memcpy(tmp, src, (size_t)size);
            tmp[(uint64_t)corrupt_at % size] ^= 0x5a;
            src = tmp;
        }
        write_all(fd, src, (size_t)size);
    }
    if (shutdown(fd, SHUT_WR) != 0)
        die("shutdown");
    uint64_t t1 = now_ns();

    /* expected checksum of the (uncorrupted) stream, outside timing */
    cks_t c;
    cks_init(&c);
    for (uint64_t k = 0; k < nmsgs; k++)
        cks_update(&c, pat + msg_offset(k), (size_t)size);
    uint64_t want = cks_final(&c);

    unsigned char rep[REPLY_LEN];
    size_t got = read_full(fd, rep, sizeof rep);
    if (got != sizeof rep)
        dief("short reply from server (%zu of %d bytes)", got, REPLY_LEN);
    unsigned char extra;
    size_t more = read_full(fd, &extra, 1);
    if (more != 0)
        dief("unexpected extra data after server reply");
    xclose(fd);

    uint64_t rbytes = get_le64(rep), rsum = get_le64(rep + 8);
    uint64_t rns = get_le64(rep + 16);
    if (rbytes != bytes || rsum != want) {
        fprintf(stderr,
                "%s: MISMATCH: sent %" PRIu64 " bytes checksum %016" PRIx64
                ", server got %" PRIu64 " bytes checksum %016" PRIx64 "\n",
                g_prog, bytes, want, rbytes, rsum);
        return 1;
    }
    double ssecs = (double)rns / 1e9, csecs = (double)(t1 - t0) / 1e9;
    double secs = ssecs > csecs ? ssecs : csecs;
    if (secs <= 0)
        secs = 1e-9;
    printf("RESULT role=client size=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f gbps=%.4f mmsgs=%.4f ssecs=%.6f csecs=%.6f ok=1\n",
           size, bytes, secs, (double)bytes / secs / 1e9,
           (double)nmsgs / secs / 1e6, ssecs, csecs);
    free(pat);
    free(tmp);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return do_server(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return do_client(argc, argv);
    fprintf(stderr, "usage: %s server PATH [-n CONNS]\n"
                    "       %s client PATH MSGSIZE TOTALBYTES\n",
            g_prog, g_prog);
    return 1;
}
