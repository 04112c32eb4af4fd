/*
 * pingpong - AF_UNIX SOCK_STREAM round-trip latency test with self-check.
 *
 *   pingpong server PATH
 *   pingpong client PATH MSGSIZE ITERS             (sizes accept k/m/g suffix)
 *
 * The client sends a 4-byte little-endian message size first, then does
 * ITERS/10 warm-up round trips (not counted) followed by ITERS measured
 * round trips of MSGSIZE bytes.  The server reads exactly one message and
 * writes it back, until EOF.  Message content differs per iteration
 * (pattern slice at a rotating offset, iteration index xor-ed into the
 * first 8 bytes) and the echoed message is compared byte by byte.
 *
 * Env CORRUPT_AT=I (client): corrupt the message of iteration I (0-based,
 * counting warm-up iterations too) on the way out -> must fail with
 * MISMATCH.
 *
 * Output:
 *   RESULT role=server size=S iters=N ok=1
 *   RESULT role=client size=S iters=N rtt_med_us=X rtt_p99_us=Y rtt_min_us=Z ok=1
 */
#include "common.h"

#define MAX_MSG (64u << 20)

static int do_server(int argc, char **argv)
{
    if (argc != 3)
        dief("usage: pingpong server PATH");
    const char *path = argv[2];
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

    unsigned char hdr[4];
    size_t got = read_full(fd, hdr, 4);
    if (got == 0) { /* client connected and left: nothing to do */
        xclose(fd);
        printf("RESULT role=server size=0 iters=0 ok=1\n");
        return 0;
    }
    if (got != 4)
        dief("EOF inside size header");
    uint32_t size = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 |
                    (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    if (size == 0 || size > MAX_MSG)
        dief("invalid message size %u", size);
    unsigned char *buf = xmalloc(size);
    uint64_t iters = 0;
    for (;;) {
        size_t n = read_full(fd, buf, size);
        if (n == 0)
            break;
        if (n != size)
            dief("EOF in the middle of message %" PRIu64 " (%zu of %u bytes)",
                 iters, n, size);
        write_all(fd, buf, size);
        iters++;
    }
    xclose(fd);
    free(buf);
    printf("RESULT role=server size=%u iters=%" PRIu64 " ok=1\n", size, iters);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int do_client(int argc, char **argv)
{
    if (argc != 5)
        dief("usage: pingpong client PATH MSGSIZE ITERS");
    const char *path = argv[2];
    uint64_t size64 = parse_size(argv[3], "MSGSIZE");
    uint64_t iters = parse_size(argv[4], "ITERS");
    if (size64 == 0 || size64 > MAX_MSG)
        dief("MSGSIZE must be in 1..%u", MAX_MSG);
    if (iters == 0 || iters > 100000000)
        dief("ITERS must be in 1..100000000");
    size_t size = (size_t)size64;
    uint64_t warm = iters / 10;
    uint64_t all = warm + iters;
    int64_t corrupt_at = env_i64("CORRUPT_AT");

    size_t plen = size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, PATTERN_SEED ^ 0x5050);
    unsigned char *sbuf = xmalloc(size);  /* expected content */
    unsigned char *cbuf = xmalloc(size);  /* corrupted copy */
    unsigned char *rbuf = xmalloc(size);
    uint64_t *rtt = xmalloc(iters * sizeof *rtt);

    int fd = connect_unix(path);
    unsigned char hdr[4] = {(unsigned char)size, (unsigned char)(size >> 8),
                            (unsigned char)(size >> 16),
                            (unsigned char)(size >> 24)};
    write_all(fd, hdr, 4);

    for (uint64_t i = 0; i < all; i++) {
        memcpy(sbuf, pat + msg_offset(i), size);
        for (size_t j = 0; j < 8 && j < size; j++)
            sbuf[j] ^= (unsigned char)(i >> (8 * j));
        const unsigned char *out = sbuf;
        if (corrupt_at >= 0 && (uint64_t)corrupt_at == i) {
            memcpy(cbuf, sbuf, size);
            cbuf[size / 2] ^= 0x5a;
            out = cbuf;
        }
        uint64_t t0 = now_ns();
        write_all(fd, out, size);
        size_t n = read_full(fd, rbuf, size);
        uint64_t t1 = now_ns();
        if (n != size)
            dief("unexpected EOF from server at iteration %" PRIu64
                 " (%zu of %zu bytes)", i, n, size);
        if (memcmp(rbuf, sbuf, size) != 0) {
            size_t j = 0;
            while (rbuf[j] == sbuf[j])
                j++;
            fprintf(stderr,
                    "%s: MISMATCH at iteration %" PRIu64 " byte %zu: "
                    "expected 0x%02x got 0x%02x\n",
                    g_prog, i, j, sbuf[j], rbuf[j]);
            return 1;
        }
        if (i >= warm)
            rtt[i - warm] = t1 - t0;
    }
    if (shutdown(fd, SHUT_WR) != 0)
        die("shutdown");
    unsigned char extra;
    if (read_full(fd, &extra, 1) != 0)
        dief("MISMATCH: unexpected extra data from server");
    xclose(fd);

    qsort(rtt, iters, sizeof *rtt, cmp_u64);
    double med = iters % 2 ? (double)rtt[iters / 2]
                           : ((double)rtt[iters / 2 - 1] + rtt[iters / 2]) / 2;
    uint64_t p99i = (iters * 99 + 99) / 100; /* ceil(0.99 n), 1-based */
    if (p99i < 1)
        p99i = 1;
    printf("RESULT role=client size=%zu iters=%" PRIu64
           " rtt_med_us=%.3f rtt_p99_us=%.3f rtt_min_us=%.3f ok=1\n",
           size, iters, med / 1e3, (double)rtt[p99i - 1] / 1e3,
           (double)rtt[0] / 1e3);
    free(pat);
    free(sbuf);
    free(cbuf);
    free(rbuf);
    free(rtt);
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
    fprintf(stderr, "usage: %s server PATH\n"
                    "       %s client PATH MSGSIZE ITERS\n",
            g_prog, g_prog);
    return 1;
}
