/*
 * pubsub - a publish/subscribe hub that passes payloads as memfds with
 * SCM_RIGHTS (ancillary data over AF_UNIX SOCK_STREAM).
 *
 *   pubsub hub PATH NSUBS NPUBS
 *   pubsub sub PATH EXPECTED_MSGS
 *   pubsub pub PATH ID NMSGS SIZE            (SIZE accepts k/m/g suffix)
 *
 * Every client sends one identification byte first: 'S' (subscriber) or
 * 'P' (publisher).  Then messages flow as a 24-byte little-endian header
 *     u32 magic "PSUB"  u16 type (1 data, 2 end)  u16 publisher id
 *     u32 seq           u32 payload length        u64 payload checksum
 * sent with ONE sendmsg() that also carries, for a data message, exactly
 * one memfd (SCM_RIGHTS) holding the payload.
 *
 * pub: for message seq = 0..NMSGS-1 creates a memfd, writes SIZE bytes (a
 * slice of a pattern seeded by ID, at an offset depending on seq), seals it
 * (shrink/grow/write/seal), sends header + fd, closes its copy.  Then
 * shutdown(SHUT_WR) and waits for the hub to close.
 *
 * hub: accepts until NSUBS subscribers and NPUBS publishers have identified
 * (publishers are not read before all subscribers are there, so nobody
 * misses a message), then poll()s the publishers; for every message it
 * receives header + fd and forwards both to EVERY subscriber (one sendmsg
 * each), then closes its copy of the fd.  When all publishers have hung up
 * it sends every subscriber an END header (seq = number of messages
 * forwarded) and waits for each subscriber to hang up.
 *
 * sub: receives header + fd until END; for each message checks the fd is a
 * sealed memfd of the announced size, mmaps it, verifies checksum and
 * content, and that per publisher the sequence numbers arrive as 0,1,2,...
 * (every message exactly once, in order).  At END the total must equal
 * EXPECTED_MSGS and the hub's count.  MSG_CTRUNC (ancillary data lost) and
 * a data header without exactly one fd are failures.
 *
 * Output:
 *   RESULT role=hub subs=S pubs=P msgs=M fwd=F ok=1
 *   RESULT role=sub msgs=M pubs=P bytes=B secs=T ok=1
 *   RESULT role=pub id=ID msgs=N bytes=B secs=T ok=1
 *
 * Every role exits 1 after PUBSUB_TIMEOUT seconds (env, default 60; 0
 * disables), so a lost wake-up shows up as a clean failure, not a hang.
 */
#include "common.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define PS_MAGIC 0x42555350u /* "PSUB" */
#define T_DATA 1
#define T_END 2
#define HDR_LEN 24
#define MAX_FDS 8
#define MAX_SIZE (256u << 20)
#define WANT_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

struct hdr {
    uint32_t magic;
    uint16_t type, pub;
    uint32_t seq, len;
    uint64_t cks;
};

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static void hdr_encode(unsigned char *b, const struct hdr *h)
{
    put_le32(b, h->magic);
    b[4] = (unsigned char)h->type;
    b[5] = (unsigned char)(h->type >> 8);
    b[6] = (unsigned char)h->pub;
    b[7] = (unsigned char)(h->pub >> 8);
    put_le32(b + 8, h->seq);
    put_le32(b + 12, h->len);
    put_le64(b + 16, h->cks);
}

static void hdr_decode(const unsigned char *b, struct hdr *h)
{
    h->magic = get_le32(b);
    h->type = (uint16_t)(b[4] | b[5] << 8);
    h->pub = (uint16_t)(b[6] | b[7] << 8);
    h->seq = get_le32(b + 8);
    h->len = get_le32(b + 12);
    h->cks = get_le64(b + 16);
}

static uint64_t cks_of(const void *p, size_t n)
{
    cks_t c;
    cks_init(&c);
    cks_update(&c, p, n);
    return cks_final(&c);
}

static void setup_common(void)
{
    ignore_sigpipe();
    arm_timeout_env("PUBSUB_TIMEOUT", 60);
    /* fds in flight count against RLIMIT_NOFILE (ETOOMANYREFS) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        xclose(fds[i]);
}

/*
 * Send a header plus (if fd >= 0) one fd in a single sendmsg.  A short send
 * (signal) completes the rest with write(); the fd went with the first byte.
 */
static void send_hdr_fd(int sock, const unsigned char *hb, int fd)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct iovec iov = {(void *)hb, HDR_LEN};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&u, 0, sizeof u);
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    for (;;) {
        n = sendmsg(sock, &m, 0);
        if (n >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == ETOOMANYREFS) { /* too many fds in flight: transient */
            struct timespec ts = {0, 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        die("sendmsg");
    }
    if (n == 0)
        dief("sendmsg: returned 0");
    if ((size_t)n < HDR_LEN)
        write_all(sock, hb + n, HDR_LEN - (size_t)n);
}

/*
 * Incremental receive of one header and the fds that came with it.
 * Returns 1 when the header is complete, 0 if more is needed (only when
 * once != 0), -1 on EOF at a header boundary.  EOF inside a header and
 * MSG_CTRUNC are fatal.
 */
struct rx {
    unsigned char hb[HDR_LEN];
    size_t have;
    int fds[MAX_FDS];
    int nfds;
};

static int recv_hdr(int sock, struct rx *rx, int once, const char *who)
{
    while (rx->have < HDR_LEN) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        } u;
        struct iovec iov = {rx->hb + rx->have, HDR_LEN - rx->have};
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recvmsg");
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                dief("%s: unexpected control message level %d type %d", who,
                     c->cmsg_level, c->cmsg_type);
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (rx->nfds >= MAX_FDS)
                    dief("%s: more than %d fds with one header", who, MAX_FDS);
                rx->fds[rx->nfds++] = fd;
            }
        }
        if (m.msg_flags & MSG_CTRUNC)
            dief("%s: MSG_CTRUNC: ancillary data (passed fds) truncated by recvmsg",
                 who);
        if (n == 0) {
            if (rx->have == 0 && rx->nfds == 0)
                return -1;
            dief("MISMATCH: %s: EOF inside a message header (%zu of %d bytes)", who,
                 rx->have, HDR_LEN);
        }
        rx->have += (size_t)n;
        if (once && rx->have < HDR_LEN)
            return 0;
    }
    return 1;
}

/* ---- pub ------------------------------------------------------------- */

static uint64_t pat_seed(unsigned id)
{
    return PATTERN_SEED ^ ((uint64_t)id * 0x9e3779b97f4a7c15ull);
}

static int do_pub(int argc, char **argv)
{
    if (argc != 6)
        dief("usage: pubsub pub PATH ID NMSGS SIZE");
    const char *path = argv[2];
    uint64_t id = parse_size(argv[3], "ID");
    uint64_t nmsgs = parse_size(argv[4], "NMSGS");
    uint64_t size = parse_size(argv[5], "SIZE");
    if (id > 65535)
        dief("ID must be in 0..65535");
    if (nmsgs > UINT32_MAX)
        dief("NMSGS too large");
    if (size > MAX_SIZE)
        dief("SIZE must be at most %u", MAX_SIZE);
    size_t plen = (size_t)size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, pat_seed((unsigned)id));

    int s = connect_unix(path);
    write_all(s, "P", 1);
    uint64_t t0 = now_ns();
    for (uint64_t seq = 0; seq < nmsgs; seq++) {
        const unsigned char *payload = pat + msg_offset(seq);
        int mfd = memfd_create("pubsub", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (mfd < 0)
            die("memfd_create");
        write_all(mfd, payload, (size_t)size);
        if (fcntl(mfd, F_ADD_SEALS, WANT_SEALS) != 0)
            die("fcntl(F_ADD_SEALS)");
        struct hdr h = {PS_MAGIC, T_DATA, (uint16_t)id, (uint32_t)seq,
                        (uint32_t)size, cks_of(payload, (size_t)size)};
        unsigned char hb[HDR_LEN];
        hdr_encode(hb, &h);
        send_hdr_fd(s, hb, mfd);
        xclose(mfd);
    }
    if (shutdown(s, SHUT_WR) != 0)
        die("shutdown");
    /* wait for the hub to have taken everything and hung up */
    unsigned char b;
    if (read_full(s, &b, 1) != 0)
        dief("unexpected data from the hub");
    double secs = (double)(now_ns() - t0) / 1e9;
    xclose(s);
    free(pat);
    printf("RESULT role=pub id=%" PRIu64 " msgs=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f ok=1\n", id, nmsgs, nmsgs * size, secs);
    return 0;
}

/* ---- sub ------------------------------------------------------------- */

struct pubstate {
    uint32_t next_seq;
    uint32_t plen; /* payload length the pattern was built for */
    unsigned char *pat;
};

static int do_sub(int argc, char **argv)
{
    if (argc != 4)
        dief("usage: pubsub sub PATH EXPECTED_MSGS");
    const char *path = argv[2];
    uint64_t expected = parse_size(argv[3], "EXPECTED_MSGS");
    struct pubstate *ps = calloc(65536, sizeof *ps);
    if (!ps)
        die("calloc");

    int s = connect_unix(path);
    write_all(s, "S", 1);
    uint64_t t0 = now_ns();
    uint64_t msgs = 0, bytes = 0, npubs = 0;
    char who[] = "sub";
    for (;;) {
        struct rx rx;
        memset(&rx, 0, sizeof rx);
        if (recv_hdr(s, &rx, 0, who) < 0)
            dief("MISMATCH: hub closed the connection without an END message "
                 "(after %" PRIu64 " messages)", msgs);
        struct hdr h;
        hdr_decode(rx.hb, &h);
        if (h.magic != PS_MAGIC)
            dief("MISMATCH: bad header magic %08" PRIx32, h.magic);
        if (h.type == T_END) {
            if (rx.nfds != 0)
                dief("MISMATCH: %d fds with the END message", rx.nfds);
            if (h.seq != msgs)
                dief("MISMATCH: hub forwarded %" PRIu32 " messages, received %" PRIu64,
                     h.seq, msgs);
            break;
        }
        if (h.type != T_DATA)
            dief("MISMATCH: bad message type %u", h.type);
        if (rx.nfds != 1)
            dief("MISMATCH: data message pub=%u seq=%" PRIu32 " came with %d fds "
                 "instead of 1 (ancillary data lost?)", h.pub, h.seq, rx.nfds);
        int fd = rx.fds[0];
        struct pubstate *p = &ps[h.pub];
        if (h.seq != p->next_seq)
            dief("MISMATCH: publisher %u: got seq %" PRIu32 ", expected %" PRIu32
                 " (lost, duplicated or reordered message)", h.pub, h.seq, p->next_seq);
        if (p->next_seq == 0 && !p->pat)
            npubs++;
        p->next_seq++;

        /* the fd must be a sealed memfd of the announced size */
        struct stat st;
        if (fstat(fd, &st) != 0)
            die("fstat(received fd)");
        if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != h.len)
            dief("MISMATCH: pub=%u seq=%" PRIu32 ": fd is not a regular file of %"
                 PRIu32 " bytes (mode %o size %lld)", h.pub, h.seq, h.len,
                 (unsigned)st.st_mode, (long long)st.st_size);
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0)
            dief("MISMATCH: pub=%u seq=%" PRIu32 ": received fd is not a memfd "
                 "(F_GET_SEALS: %s)", h.pub, h.seq, strerror(errno));
        if ((seals & WANT_SEALS) != WANT_SEALS)
            dief("MISMATCH: pub=%u seq=%" PRIu32 ": memfd seals %#x, expected %#x",
                 h.pub, h.seq, (unsigned)seals, (unsigned)WANT_SEALS);

        if (p->plen != h.len || !p->pat) {
            free(p->pat);
            p->plen = h.len;
            p->pat = xmalloc((size_t)h.len + PATTERN_SLACK);
            fill_pattern(p->pat, (size_t)h.len + PATTERN_SLACK, pat_seed(h.pub));
        }
        if (h.len > 0) {
            void *m = mmap(NULL, h.len, PROT_READ, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED)
                die("mmap(received memfd)");
            if (cks_of(m, h.len) != h.cks)
                dief("MISMATCH: pub=%u seq=%" PRIu32 ": payload checksum differs",
                     h.pub, h.seq);
            if (memcmp(m, p->pat + msg_offset(h.seq), h.len) != 0)
                dief("MISMATCH: pub=%u seq=%" PRIu32 ": payload content differs",
                     h.pub, h.seq);
            if (munmap(m, h.len) != 0)
                die("munmap");
        } else if (h.cks != cks_of("", 0)) {
            dief("MISMATCH: pub=%u seq=%" PRIu32 ": bad checksum of empty payload",
                 h.pub, h.seq);
        }
        xclose(fd);
        msgs++;
        bytes += h.len;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    unsigned char b;
    if (read_full(s, &b, 1) != 0)
        dief("MISMATCH: data after the END message");
    xclose(s);
    if (msgs != expected)
        dief("MISMATCH: received %" PRIu64 " messages, expected %" PRIu64, msgs,
             expected);
    for (unsigned i = 0; i < 65536; i++)
        free(ps[i].pat);
    free(ps);
    printf("RESULT role=sub msgs=%" PRIu64 " pubs=%" PRIu64 " bytes=%" PRIu64
           " secs=%.6f ok=1\n", msgs, npubs, bytes, secs);
    return 0;
}

/* ---- hub ------------------------------------------------------------- */

enum { C_PENDING, C_SUB, C_PUB, C_DONE };

struct conn {
    int fd;
    int kind;
    struct rx rx;
};

static const char *g_sock_path;

static void unlink_sock(void)
{
    if (g_sock_path)
        unlink(g_sock_path);
}

static int do_hub(int argc, char **argv)
{
    if (argc != 5)
        dief("usage: pubsub hub PATH NSUBS NPUBS");
    const char *path = argv[2];
    uint64_t nsubs = parse_size(argv[3], "NSUBS");
    uint64_t npubs = parse_size(argv[4], "NPUBS");
    if (nsubs > 1000 || npubs > 1000)
        dief("NSUBS and NPUBS must be at most 1000");
    size_t cap = (size_t)(nsubs + npubs);
    struct conn *cs = calloc(cap ? cap : 1, sizeof *cs);
    struct pollfd *pfd = calloc(cap + 1, sizeof *pfd);
    int *pidx = calloc(cap + 1, sizeof *pidx);
    int *subfds = calloc(nsubs ? nsubs : 1, sizeof *subfds);
    if (!cs || !pfd || !pidx || !subfds)
        die("calloc");

    int lfd = listen_unix(path, SOCK_CLOEXEC);
    g_sock_path = path;
    g_cleanup = unlink_sock;
    size_t nconns = 0;
    uint64_t have_subs = 0, have_pubs = 0, pubs_done = 0, msgs = 0;

    while (pubs_done < npubs || have_subs < nsubs) {
        nfds_t n = 0;
        if (lfd >= 0) {
            pfd[n] = (struct pollfd){lfd, POLLIN, 0};
            pidx[n++] = -1;
        }
        for (size_t i = 0; i < nconns; i++) {
            if (cs[i].kind == C_PENDING ||
                (cs[i].kind == C_PUB && have_subs == nsubs)) {
                pfd[n] = (struct pollfd){cs[i].fd, POLLIN, 0};
                pidx[n++] = (int)i;
            }
        }
        if (n == 0)
            dief("internal error: nothing to wait for");
        int r = poll(pfd, n, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        for (nfds_t k = 0; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            if (pfd[k].revents & POLLNVAL)
                dief("poll: POLLNVAL on fd %d", pfd[k].fd);
            if (pidx[k] < 0) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
                        continue;
                    die("accept");
                }
                if (nconns == cap)
                    dief("unexpected extra connection (want %" PRIu64 " subs + %"
                         PRIu64 " pubs)", nsubs, npubs);
                memset(&cs[nconns], 0, sizeof cs[nconns]);
                cs[nconns].fd = fd;
                cs[nconns].kind = C_PENDING;
                nconns++;
                if (nconns == cap) { /* everyone is here */
                    xclose(lfd);
                    lfd = -1;
                    unlink_sock();
                    g_sock_path = NULL;
                }
                continue;
            }
            struct conn *c = &cs[pidx[k]];
            if (c->kind == C_PENDING) {
                unsigned char id;
                size_t got = read_full(c->fd, &id, 1);
                if (got == 0)
                    dief("client hung up before identifying itself");
                if (id == 'S') {
                    if (have_subs == nsubs)
                        dief("more than %" PRIu64 " subscribers", nsubs);
                    subfds[have_subs++] = c->fd;
                    c->kind = C_SUB;
                } else if (id == 'P') {
                    if (have_pubs == npubs)
                        dief("more than %" PRIu64 " publishers", npubs);
                    have_pubs++;
                    c->kind = C_PUB;
                } else {
                    dief("protocol error: bad identification byte 0x%02x", id);
                }
                continue;
            }
            if (c->kind != C_PUB)
                continue;
            int rr = recv_hdr(c->fd, &c->rx, 1, "hub");
            if (rr == 0)
                continue;
            if (rr < 0) { /* publisher finished */
                xclose(c->fd);
                c->kind = C_DONE;
                pubs_done++;
                continue;
            }
            struct hdr h;
            hdr_decode(c->rx.hb, &h);
            if (h.magic != PS_MAGIC || h.type != T_DATA)
                dief("protocol error: bad header from a publisher (magic %08" PRIx32
                     " type %u)", h.magic, h.type);
            if (c->rx.nfds != 1)
                dief("MISMATCH: message pub=%u seq=%" PRIu32 " came with %d fds "
                     "instead of 1 (ancillary data lost?)", h.pub, h.seq, c->rx.nfds);
            for (uint64_t i = 0; i < nsubs; i++)
                send_hdr_fd(subfds[i], c->rx.hb, c->rx.fds[0]);
            close_fds(c->rx.fds, c->rx.nfds);
            memset(&c->rx, 0, sizeof c->rx);
            msgs++;
        }
    }
    if (lfd >= 0) {
        xclose(lfd);
        unlink_sock();
        g_sock_path = NULL;
    }

    struct hdr end = {PS_MAGIC, T_END, 0, (uint32_t)msgs, 0, 0};
    unsigned char eb[HDR_LEN];
    hdr_encode(eb, &end);
    for (uint64_t i = 0; i < nsubs; i++) {
        send_hdr_fd(subfds[i], eb, -1);
        if (shutdown(subfds[i], SHUT_WR) != 0)
            die("shutdown");
    }
    /* wait for every subscriber to have seen END and hung up */
    for (uint64_t i = 0; i < nsubs; i++) {
        unsigned char b;
        if (read_full(subfds[i], &b, 1) != 0)
            dief("protocol error: data from a subscriber");
        xclose(subfds[i]);
    }
    free(cs);
    free(pfd);
    free(pidx);
    free(subfds);
    printf("RESULT role=hub subs=%" PRIu64 " pubs=%" PRIu64 " msgs=%" PRIu64
           " fwd=%" PRIu64 " ok=1\n", nsubs, npubs, msgs, msgs * nsubs);
    return 0;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    setup_common();
    if (argc >= 2 && strcmp(argv[1], "hub") == 0)
        return do_hub(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "sub") == 0)
        return do_sub(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "pub") == 0)
        return do_pub(argc, argv);
    fprintf(stderr,
            "usage: %s hub PATH NSUBS NPUBS\n"
            "       %s sub PATH EXPECTED_MSGS\n"
            "       %s pub PATH ID NMSGS SIZE\n",
            g_prog, g_prog, g_prog);
    return 1;
}
