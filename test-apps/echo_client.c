/*
 * echo_client - many concurrent pipelined connections to an echo server,
 * verifying every echoed byte.
 *
 *   echo_client PATH CONNS MSGS MSGSIZE            (sizes accept k/m/g suffix)
 *
 * Opens CONNS connections (blocking connect, then O_NONBLOCK), and drives
 * them all with poll().  Each connection sends MSGS messages of MSGSIZE
 * bytes (one write() per message, or per remaining part of it), keeping at
 * most 64 KiB sent-but-not-yet-echoed, and compares everything that comes
 * back against the expected per-connection byte stream (a slice of a
 * xorshift64 pattern at a per-connection offset).  A connection is closed as
 * soon as all its bytes came back.  Fails if no progress is made for 60 s.
 *
 * Env CORRUPT_AT=N: flip the byte at stream offset N of connection 0 on the
 * way out -> must fail with MISMATCH.
 *
 * Output:
 *   RESULT role=echo_client conns=C bytes=B secs=T ok=1
 * (bytes = total bytes echoed back and verified, over all connections)
 */
#include "common.h"

#include <poll.h>

#define PLEN (1u << 20)          /* pattern period (power of two) */
#define WINDOW (64u << 10)       /* max outstanding bytes per connection */
#define RDBUF (64u << 10)
#define STALL_MS 60000

struct econn {
    uint64_t sent, recvd;
};

static unsigned char *g_pat; /* 2 * PLEN bytes, second half = first half */

static const unsigned char *expected(uint64_t conn, uint64_t off)
{
    return g_pat + ((off + conn * 7919u) & (PLEN - 1));
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    ignore_sigpipe();
    if (argc != 5)
        dief("usage: echo_client PATH CONNS MSGS MSGSIZE");
    const char *path = argv[1];
    uint64_t nconns = parse_size(argv[2], "CONNS");
    uint64_t msgs = parse_size(argv[3], "MSGS");
    uint64_t msgsize = parse_size(argv[4], "MSGSIZE");
    if (nconns == 0 || nconns > 60000)
        dief("CONNS must be in 1..60000");
    if (msgsize == 0 || msgsize > (1ull << 30))
        dief("MSGSIZE must be in 1..1G");
    if (msgs > UINT64_MAX / msgsize)
        dief("MSGS * MSGSIZE overflows");
    uint64_t total = msgs * msgsize;
    int64_t corrupt_at = env_i64("CORRUPT_AT");

    g_pat = xmalloc(2 * PLEN);
    fill_pattern(g_pat, PLEN, PATTERN_SEED ^ 0xec40);
    memcpy(g_pat + PLEN, g_pat, PLEN);
    unsigned char *rbuf = xmalloc(RDBUF);
    unsigned char *tmp = xmalloc(PLEN);

    struct pollfd *pfd = calloc(nconns, sizeof *pfd);
    struct econn *cs = calloc(nconns, sizeof *cs);
    if (!pfd || !cs)
        die("calloc");
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < nconns; i++) {
        pfd[i].fd = connect_unix(path);
        set_nonblock(pfd[i].fd);
    }

    uint64_t done = 0, bytes = 0;
    for (uint64_t i = 0; i < nconns; i++) {
        if (total == 0) {
            xclose(pfd[i].fd);
            pfd[i].fd = -1;
            done++;
        }
    }
    while (done < nconns) {
        for (uint64_t i = 0; i < nconns; i++) {
            if (pfd[i].fd < 0)
                continue;
            struct econn *c = &cs[i];
            pfd[i].events = POLLIN;
            if (c->sent < total && c->sent - c->recvd < WINDOW)
                pfd[i].events |= POLLOUT;
        }
        int n = poll(pfd, (nfds_t)nconns, STALL_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (n == 0)
            dief("no progress for %d ms (%" PRIu64 " of %" PRIu64
                 " connections done)", STALL_MS, done, nconns);
        for (uint64_t i = 0; i < nconns; i++) {
            int fd = pfd[i].fd;
            short re = pfd[i].revents;
            if (fd < 0 || re == 0)
                continue;
            struct econn *c = &cs[i];
            if (re & POLLNVAL)
                dief("poll: POLLNVAL on connection %" PRIu64, i);
            /* send while window allows and the socket accepts data */
            if (re & (POLLOUT | POLLERR)) {
                while (c->sent < total && c->sent - c->recvd < WINDOW) {
                    uint64_t len = msgsize - c->sent % msgsize;
                    if (len > WINDOW - (c->sent - c->recvd))
                        len = WINDOW - (c->sent - c->recvd);
                    const unsigned char *src = expected(i, c->sent);
                    if (i == 0 && corrupt_at >= 0 &&
                        (uint64_t)corrupt_at >= c->sent &&
                        (uint64_t)corrupt_at < c->sent + len) {
                        memcpy(tmp, src, (size_t)len);
                        tmp[(uint64_t)corrupt_at - c->sent] ^= 0x5a;
                        src = tmp;
                    }
                    ssize_t w = write(fd, src, (size_t)len);
                    if (w < 0) {
                        if (errno == EINTR)
                            continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                            break;
                        die("write");
                    }
                    c->sent += (uint64_t)w;
                }
            }
            /* receive and verify */
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                for (int k = 0; k < 16 && c->recvd < total; k++) {
                    ssize_t r = read(fd, rbuf, RDBUF);
                    if (r < 0) {
                        if (errno == EINTR)
                            continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                            break;
                        die("read");
                    }
                    if (r == 0)
                        dief("unexpected EOF on connection %" PRIu64
                             " after %" PRIu64 " of %" PRIu64 " bytes",
                             i, c->recvd, total);
                    if (c->recvd + (uint64_t)r > c->sent) {
                        fprintf(stderr,
                                "%s: MISMATCH: connection %" PRIu64
                                " received %" PRIu64 " bytes but only %" PRIu64
                                " were sent\n",
                                g_prog, i, c->recvd + (uint64_t)r, c->sent);
                        return 1;
                    }
                    const unsigned char *exp = expected(i, c->recvd);
                    if (memcmp(rbuf, exp, (size_t)r) != 0) {
                        size_t j = 0;
                        while (rbuf[j] == exp[j])
                            j++;
                        fprintf(stderr,
                                "%s: MISMATCH: connection %" PRIu64
                                " stream offset %" PRIu64
                                ": expected 0x%02x got 0x%02x\n",
                                g_prog, i, c->recvd + j, exp[j], rbuf[j]);
                        return 1;
                    }
                    c->recvd += (uint64_t)r;
                    bytes += (uint64_t)r;
                }
                if (c->recvd == total) {
                    xclose(fd);
                    pfd[i].fd = -1;
                    done++;
                }
            }
        }
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("RESULT role=echo_client conns=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f ok=1\n", nconns, bytes, secs);
    free(pfd);
    free(cs);
    free(g_pat);
    free(rbuf);
    free(tmp);
    return 0;
}
