/*
 * seqfuzz - random differential harness for AF_UNIX SOCK_STREAM.
 *
 *   seqfuzz run SEED FIRST COUNT   run sequences FIRST .. FIRST+COUNT-1 of SEED
 *   seqfuzz print SEED SEQ         print the operations of one sequence (a script)
 *   seqfuzz script FILE|-          run one sequence given as a script (see below)
 *
 * For each sequence a fresh connection is made: the driver process creates a
 * listening socket and forks a server (accepts, role "S") and a client
 * (connects, role "C").  Both run the same list of operations, generated from
 * (SEED, sequence number) before the fork; each operation is performed by one
 * side while the other one waits.  The sides are sequenced with pipe barriers
 * (the acting side hands over with one byte whenever the actor changes), so no
 * two operations ever overlap and, with a plain kernel socket, every logged
 * result is deterministic.  One transcript line per operation:
 *
 *     <index> <side> <operation as in a script> = <result>
 *
 * The transcript (stdout) must be byte-identical with and without an
 * LD_PRELOAD shim that claims to be transparent; the caller compares.
 *
 * Operations (script syntax; LEN in bytes, LIST = comma-separated iovec
 * lengths, FLAGS = 0 or MSG_* names joined with '|', EVENTS = 0 or poll
 * names joined with '|'):
 *     write LEN | send LEN FLAGS | writev LIST | sendmsg LIST FLAGS
 *     fill                non-blocking 64 KiB sends until EAGAIN
 *     read LEN | recv LEN FLAGS | readv LIST | recvmsg LIST FLAGS
 *     drain               MSG_DONTWAIT 64 KiB reads until one returns <= 0
 *     nonblock 0|1        fcntl(F_SETFL) O_NONBLOCK      fionbio 0|1  ioctl
 *     poll EVENTS | select EVENTS (IN: read set, OUT: write set)
 *     epoll EVENTS        a temporary epoll: add, epoll_wait(0), close
 *     ep_set EVENTS       ADD or MOD on this side's persistent epoll (with
 *                         ET / ONESHOT among the events)
 *     ep_wait | ep_del    epoll_wait(0) on it, EPOLL_CTL_DEL
 *     fionread | outq | soerror     FIONREAD, SIOCOUTQ, getsockopt(SO_ERROR)
 *     shutdown RD|WR|RDWR | close
 *     exit | kill         the side's process ends (_exit(0), SIGKILL) with the
 *                         connection open; the driver tells the other side
 *                         once the process is gone (waitpid)
 * A script is one operation per line (or separated by ';'), each prefixed with
 * the side: "C write 10; S recv 10 PEEK".  Every timeout is 0: no wait ever
 * depends on timing.
 *
 * WHAT IS NORMALIZED, AND WHY.  Results that legitimately depend on how much
 * a connection buffers are not logged exactly, because the kernel counts its
 * send buffer in skb truesize (wmem_default 212992 bytes: 278 one-byte writes
 * fill it, a 1000-byte write costs 2304) while an accelerator may use a ring
 * of another size (tsss: 256 KiB of payload).  The harness keeps an abstract
 * model of each direction, computed from the operation list only (so that it
 * is the same in every run):
 *   KNOWN    the exact number of unread bytes is known, and a conservative
 *            estimate of the kernel's truesize for them (est_rec());
 *   UNKNOWN  some bytes are unread, how many depends on the buffer size;
 *   FULL     a "fill" ended with EAGAIN: the kernel takes nothing more (not
 *            even one byte) until the reader reads, and reports the socket
 *            not writable; this is what the harness expects of any stack.
 * - A write is logged exactly while KNOWN and the estimate stays under SAFE
 *   (180 KiB: under the kernel's 208 KiB and a 256 KiB ring, so both take it
 *   whole).  Past that (only in non-blocking mode) it is logged as ">0" if
 *   the buffer was under SAFE before (both take some bytes), otherwise as
 *   "~" (some bytes or EAGAIN); the direction becomes UNKNOWN.  In FULL,
 *   writes are exact (EAGAIN).  EPIPE cases are always exact.
 * - "fill" logs the number of successful writes before EAGAIN as ">0", "~"
 *   or exactly (0 when FULL), with the same rule.
 * - A read from an UNKNOWN/FULL direction is only generated as "drain",
 *   which logs "all" instead of the byte count; the byte count of reads,
 *   FIONREAD and drains is exact in KNOWN.  (A script may still read from
 *   an UNKNOWN direction: the count is then logged as ">0".)
 * - POLLOUT (and select's write set, EPOLLOUT) is requested only when it is
 *   comparable: KNOWN with an estimate under 48 KiB (the kernel reports
 *   writable up to 53248 bytes of truesize, a 256 KiB ring up to 128 KiB of
 *   data) or FULL (neither is writable).  Otherwise the OUT bits are dropped
 *   from the request and the line says "(OUT not compared)".  The persistent
 *   epoll registration never includes OUT.
 * - SIOCOUTQ is logged as 0 or ">0" (the kernel counts truesize).
 * Everything else - return values, errno names, bytes read (a hash plus a
 * check against the expected stream), revents, SIGPIPEs, msg_flags - is
 * exact.  The data written is a pseudo-random stream per direction,
 * restarted ("epoch") by every drain that emptied it, so that bytes after
 * a buffer-size dependent phase are the same in every run.
 *
 * Assumption (checked on every run): once a write has returned and the
 * barrier has passed, every byte it took is visible to the reader, so a read
 * returns min(len, unread) and a drain ends with EAGAIN (or EOF) only after
 * all of them.  Self-checks: "BAD@k" (a byte differs from the stream),
 * "MODEL!" (a result the model is certain of differs: a write not taken
 * whole, a read not returning min(len, unread), a write taken in FULL),
 * "left=N" (a drain did not see every byte the peer wrote before the
 * barrier).  None of them ever appears on a plain kernel socket (the test
 * checks it); under a shim they show where it differs.
 *
 * The generator only issues calls that cannot block on a plain socket
 * (blocking reads need unread bytes or EOF, WAITALL needs enough of them,
 * blocking writes must fit); a sequence that still hangs is killed after
 * 10 s and its transcript ends with "TIMEOUT" (lines logged after the kill
 * are dropped: a call that fails because its peer was killed says nothing
 * about the shim).  Exit status: 0 if every
 * sequence ran to its end, 1 otherwise (timeout, a side died unexpectedly,
 * setup failure).
 *
 * Environment: SEQFUZZ_SKIP=kind,kind...  do not generate these kinds (an
 * exploration aid to look past a known divergence; the test does not use it);
 * SEQFUZZ_TIMEOUT=seconds  per sequence (default 10); SEQFUZZ_RAW=1  also
 * print the exact value of every normalized result, as "~{-1 EAGAIN}" (to
 * debug; such transcripts are not comparable).
 */
#include "common.h"
#include <linux/sockios.h>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#define MAXOPS 128
#define MAXIOV 8
#define MAXLEN (400u * 1024u)
#define BUFSZ (512u * 1024u)
#define FILLCHUNK 65536u
#define DRAINCHUNK 65536u
#define SAFE (180u * 1024u)    /* estimated truesize under which writes are exact */
#define POLL_SAFE (48u * 1024u) /* ... under which POLLOUT is comparable */
#define LOGCAP (1u << 20)
#define SEQ_TIMEOUT 10
#define SOCK "s"
#define EPDATA 0x5eed5eedull

/* ---- operations ---------------------------------------------------------- */

enum kind {
    K_WRITE, K_SEND, K_WRITEV, K_SENDMSG, K_FILL,
    K_READ, K_RECV, K_READV, K_RECVMSG, K_DRAIN,
    K_NONBLOCK, K_FIONBIO, K_POLL, K_SELECT, K_EPOLL, K_EPSET, K_EPWAIT, K_EPDEL,
    K_FIONREAD, K_OUTQ, K_SOERROR, K_SHUTDOWN, K_CLOSE, K_EXIT, K_KILL, NKIND
};
static const char *const g_kname[NKIND] = {
    "write", "send", "writev", "sendmsg", "fill",
    "read", "recv", "readv", "recvmsg", "drain",
    "nonblock", "fionbio", "poll", "select", "epoll", "ep_set", "ep_wait", "ep_del",
    "fionread", "outq", "soerror", "shutdown", "close", "exit", "kill",
};

/* how a result is logged */
enum norm {
    N_EXACT,
    N_POS,  /* ">0" if positive (a count that depends on buffer sizes but is surely > 0) */
    N_SOME, /* "~" if positive or EAGAIN */
};

struct op {
    int side; /* 0: C (client), 1: S (server) */
    int kind;
    int niov;
    int flags;       /* MSG_* / SHUT_* / 0|1 */
    unsigned events; /* poll / epoll events */
    size_t len;      /* total length */
    size_t iov[MAXIOV];
    /* set by model_op() */
    int norm;
    int out_ok;   /* OUT readiness comparable */
    long expect;  /* result the model is sure of (-2: none) */
    int mayblock; /* could block forever on a plain socket */
};

static struct op g_ops[MAXOPS];
static int g_nops;

static int is_write(int k) { return k == K_WRITE || k == K_SEND || k == K_WRITEV || k == K_SENDMSG; }
static int is_read(int k) { return k == K_READ || k == K_RECV || k == K_READV || k == K_RECVMSG; }
static int has_list(int k) { return k == K_WRITEV || k == K_SENDMSG || k == K_READV || k == K_RECVMSG; }
static int has_flags(int k) { return k == K_SEND || k == K_SENDMSG || k == K_RECV || k == K_RECVMSG; }
static int has_events(int k) { return k == K_POLL || k == K_SELECT || k == K_EPOLL || k == K_EPSET; }

/* ---- names ----------------------------------------------------------------- */

struct name { unsigned bit; const char *name; };
static const struct name g_msgf[] = {
    {MSG_PEEK, "PEEK"}, {MSG_DONTWAIT, "DONTWAIT"}, {MSG_WAITALL, "WAITALL"}, {MSG_NOSIGNAL, "NOSIGNAL"},
};
static const struct name g_evf[] = {
    {POLLIN, "IN"},         {POLLPRI, "PRI"},       {POLLOUT, "OUT"},       {POLLERR, "ERR"},
    {POLLHUP, "HUP"},       {POLLNVAL, "NVAL"},     {POLLRDNORM, "RDNORM"}, {POLLRDBAND, "RDBAND"},
    {POLLWRNORM, "WRNORM"}, {POLLWRBAND, "WRBAND"}, {POLLRDHUP, "RDHUP"},   {EPOLLET, "ET"},
    {EPOLLONESHOT, "ONESHOT"},
};
#define NNAMES(t) (sizeof t / sizeof t[0])
#define OUTBITS ((unsigned)(POLLOUT | POLLWRNORM | POLLWRBAND))

static void bits_str(char *o, size_t cap, unsigned v, const struct name *t, size_t n)
{
    size_t k = 0;
    o[0] = 0;
    if (v == 0) {
        snprintf(o, cap, "0");
        return;
    }
    for (size_t j = 0; j < n; j++) {
        if (v & t[j].bit) {
            k += (size_t)snprintf(o + k, cap - k, "%s%s", k ? "|" : "", t[j].name);
            v &= ~t[j].bit;
        }
    }
    if (v)
        snprintf(o + k, cap - k, "%s0x%x", k ? "|" : "", v);
}

static const char *evs(unsigned v)
{
    static char b[4][160];
    static int i;
    i = (i + 1) & 3;
    bits_str(b[i], sizeof b[i], v, g_evf, NNAMES(g_evf));
    return b[i];
}

static int parse_bits(const char *s, const struct name *t, size_t n, unsigned *out)
{
    *out = 0;
    if (strcmp(s, "0") == 0)
        return 0;
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", s);
    for (char *save = NULL, *w = strtok_r(tmp, "|", &save); w; w = strtok_r(NULL, "|", &save)) {
        size_t j;
        for (j = 0; j < n; j++)
            if (strcmp(w, t[j].name) == 0)
                break;
        if (j == n)
            return -1;
        *out |= t[j].bit;
    }
    return 0;
}

static const char *shutname(int how)
{
    return how == SHUT_RD ? "RD" : how == SHUT_WR ? "WR" : "RDWR";
}

/* The operation in script syntax (without the side). */
static void op_str(const struct op *o, char *b, size_t cap)
{
    size_t k = (size_t)snprintf(b, cap, "%s", g_kname[o->kind]);
    if (has_list(o->kind)) {
        for (int i = 0; i < o->niov; i++)
            k += (size_t)snprintf(b + k, cap - k, "%c%zu", i ? ',' : ' ', o->iov[i]);
    } else if (is_write(o->kind) || is_read(o->kind)) {
        k += (size_t)snprintf(b + k, cap - k, " %zu", o->len);
    }
    if (has_flags(o->kind)) {
        char f[96];
        bits_str(f, sizeof f, (unsigned)o->flags, g_msgf, NNAMES(g_msgf));
        k += (size_t)snprintf(b + k, cap - k, " %s", f);
    }
    if (has_events(o->kind))
        k += (size_t)snprintf(b + k, cap - k, " %s", evs(o->events));
    if (o->kind == K_NONBLOCK || o->kind == K_FIONBIO)
        k += (size_t)snprintf(b + k, cap - k, " %d", o->flags);
    if (o->kind == K_SHUTDOWN)
        snprintf(b + k, cap - k, " %s", shutname(o->flags));
}

/* Parses "C write 10"; returns 0 or -1. */
static int op_parse(char *line, struct op *o)
{
    memset(o, 0, sizeof *o);
    char *save = NULL;
    char *w = strtok_r(line, " \t", &save);
    if (!w)
        return -1;
    if (strcmp(w, "C") == 0)
        o->side = 0;
    else if (strcmp(w, "S") == 0)
        o->side = 1;
    else
        return -1;
    if (!(w = strtok_r(NULL, " \t", &save)))
        return -1;
    for (o->kind = 0; o->kind < NKIND; o->kind++)
        if (strcmp(w, g_kname[o->kind]) == 0)
            break;
    if (o->kind == NKIND)
        return -1;
    char *a1 = strtok_r(NULL, " \t", &save), *a2 = strtok_r(NULL, " \t", &save);
    int k = o->kind;
    if (has_list(k)) {
        if (!a1)
            return -1;
        o->len = 0;
        for (char *s2 = NULL, *x = strtok_r(a1, ",", &s2); x; x = strtok_r(NULL, ",", &s2)) {
            if (o->niov == MAXIOV)
                return -1;
            o->iov[o->niov] = (size_t)strtoul(x, NULL, 10);
            o->len += o->iov[o->niov++];
        }
    } else if (is_write(k) || is_read(k)) {
        if (!a1)
            return -1;
        o->len = (size_t)strtoul(a1, NULL, 10);
    }
    if (o->len > MAXLEN)
        return -1;
    if (has_flags(k)) {
        unsigned f;
        if (!a2 || parse_bits(a2, g_msgf, NNAMES(g_msgf), &f) != 0)
            return -1;
        o->flags = (int)f;
    }
    if (has_events(k)) {
        if (!a1 || parse_bits(a1, g_evf, NNAMES(g_evf), &o->events) != 0)
            return -1;
    }
    if (k == K_NONBLOCK || k == K_FIONBIO) {
        if (!a1)
            return -1;
        o->flags = atoi(a1) != 0;
    }
    if (k == K_SHUTDOWN) {
        if (!a1)
            return -1;
        o->flags = strcmp(a1, "RD") == 0 ? SHUT_RD : strcmp(a1, "WR") == 0 ? SHUT_WR
                   : strcmp(a1, "RDWR") == 0 ? SHUT_RDWR : -1;
        if (o->flags < 0)
            return -1;
    }
    return 0;
}

/* ---- the abstract model ----------------------------------------------------- */

enum { ST_KNOWN, ST_UNKNOWN, ST_FULL };

struct dirm {
    int st;
    uint64_t pend;              /* unread bytes (KNOWN) */
    int head, nrec;             /* queue of unread writes: truesize estimate */
    uint32_t len[MAXOPS], left[MAXOPS];
};

struct sidem {
    int closed, exited, shut_rd, shut_wr, nonblock;
};

struct model {
    struct sidem s[2];
    struct dirm d[2]; /* d[i]: the direction written by side i */
};

/*
 * Conservative estimate of the kernel's truesize for one write of n bytes
 * (measured on 6.18, x86-64: 1 B -> 768, 1000 -> 2304, 2000 -> 4352,
 * 5000 -> 6400, 65536 -> 67072, 200000 -> 204288).
 */
static uint64_t est_rec(uint64_t n)
{
    return n < 4096 ? 2 * n + 1024 : n + n / 16 + 4096;
}

static uint64_t est(const struct dirm *d)
{
    uint64_t e = 0;
    for (int i = d->head; i < d->nrec; i++)
        e += est_rec(d->len[i]);
    return e;
}

static void dir_reset(struct dirm *d)
{
    d->st = ST_KNOWN;
    d->pend = 0;
    d->head = d->nrec = 0;
}

static void dir_consume(struct dirm *d, uint64_t c)
{
    d->pend -= c;
    while (c > 0 && d->head < d->nrec) {
        uint64_t t = c < d->left[d->head] ? c : d->left[d->head];
        d->left[d->head] -= (uint32_t)t;
        c -= t;
        if (d->left[d->head] == 0)
            d->head++;
    }
}

static int gone(const struct sidem *s) { return s->closed || s->exited; }

static int eof_in(const struct model *m, int x)
{
    return m->s[1 - x].shut_wr || gone(&m->s[1 - x]) || m->s[x].shut_rd;
}

static int epipe_out(const struct model *m, int x)
{
    return m->s[x].shut_wr || m->s[1 - x].shut_rd || gone(&m->s[1 - x]);
}

static int out_ok(const struct model *m, int x)
{
    const struct dirm *d = &m->d[x];
    return (d->st == ST_KNOWN && est(d) <= POLL_SAFE) || d->st == ST_FULL;
}

/* Classifies o (norm, expect, out_ok, mayblock) and applies it to m. */
static void model_op(struct model *m, struct op *o)
{
    int x = o->side, y = 1 - x;
    struct sidem *me = &m->s[x];
    o->norm = N_EXACT;
    o->expect = -2;
    o->mayblock = 0;
    o->out_ok = out_ok(m, x);
    if (o->kind == K_EXIT || o->kind == K_KILL)
        me->exited = 1;
    if (me->closed)
        return; /* EBADF, whatever it is */
    int nb = me->nonblock || (has_flags(o->kind) && (o->flags & MSG_DONTWAIT));
    if (is_write(o->kind) || o->kind == K_FILL) {
        struct dirm *d = &m->d[x];
        if (o->kind == K_FILL)
            nb = 1; /* always MSG_DONTWAIT */
        if (epipe_out(m, x))
            return; /* EPIPE */
        if (o->kind != K_FILL && o->len == 0) {
            o->expect = 0;
            return;
        }
        if (d->st == ST_FULL) {
            o->mayblock = !nb;
            if (o->kind != K_FILL)
                o->expect = -1;
            return;
        }
        if (o->kind != K_FILL && d->st == ST_KNOWN && est(d) + est_rec(o->len) <= SAFE) {
            o->expect = (long)o->len;
            d->pend += o->len;
            d->len[d->nrec] = (uint32_t)o->len;
            d->left[d->nrec] = (uint32_t)o->len;
            d->nrec++;
            return;
        }
        o->mayblock = !nb;
        o->norm = d->st == ST_KNOWN && est(d) <= SAFE ? N_POS : N_SOME;
        d->st = o->kind == K_FILL ? ST_FULL : ST_UNKNOWN;
        return;
    }
    if (is_read(o->kind) || o->kind == K_DRAIN) {
        struct dirm *d = &m->d[y];
        if (o->kind == K_DRAIN) {
            if (d->st != ST_KNOWN)
                o->norm = N_POS;
            else
                o->expect = (long)d->pend;
            dir_reset(d);
            return;
        }
        int peek = o->flags & MSG_PEEK, waitall = o->flags & MSG_WAITALL;
        int zero_ok = o->len == 0 && (o->kind == K_READ || o->kind == K_READV);
        if (d->st != ST_KNOWN) {
            /* only from a script: unread bytes > 0, count unknown */
            o->norm = N_POS;
            if (!peek)
                d->st = ST_UNKNOWN;
            return;
        }
        if (!nb && !zero_ok && !eof_in(m, x)) {
            if (d->pend == 0 || (waitall && !peek && d->pend < o->len))
                o->mayblock = 1;
        }
        if (zero_ok) {
            o->expect = 0;
        } else if (d->pend > 0) {
            uint64_t c = o->len < d->pend ? o->len : d->pend;
            o->expect = (long)c;
            if (!peek)
                dir_consume(d, c);
        }
        return;
    }
    switch (o->kind) {
    case K_NONBLOCK:
    case K_FIONBIO:
        me->nonblock = o->flags;
        break;
    case K_FIONREAD:
        if (m->d[y].st != ST_KNOWN)
            o->norm = N_POS;
        break;
    case K_SHUTDOWN:
        if (o->flags == SHUT_RD || o->flags == SHUT_RDWR)
            me->shut_rd = 1;
        if (o->flags == SHUT_WR || o->flags == SHUT_RDWR)
            me->shut_wr = 1;
        break;
    case K_EXIT:
    case K_KILL:
    case K_CLOSE:
        me->closed = 1;
        /* the kernel drops what the peer wrote and we did not read */
        dir_reset(&m->d[y]);
        break;
    default:
        break;
    }
}

/* ---- generation ------------------------------------------------------------------- */

static uint64_t g_rng;
static unsigned g_skip; /* bit mask of kinds not to generate */

static uint64_t rnd(uint64_t n)
{
    return xorshift64(&g_rng) % n;
}

static size_t rand_size(void)
{
    unsigned p = (unsigned)rnd(100);
    if (p < 3)
        return 0;
    if (p < 43)
        return 1 + rnd(64);
    if (p < 68)
        return 65 + rnd(4096 - 64);
    if (p < 86)
        return 4097 + rnd(65536 - 4096);
    return 65537 + rnd(MAXLEN - 65536);
}

static void split_iov(struct op *o)
{
    o->niov = 1 + (int)rnd(MAXIOV);
    size_t left = o->len;
    for (int i = 0; i < o->niov - 1; i++) {
        size_t v = rnd(4) == 0 || left == 0 ? 0 : rnd(left + 1);
        o->iov[i] = v;
        left -= v;
    }
    o->iov[o->niov - 1] = left;
}

static unsigned rand_events(int with_out)
{
    unsigned e = 0;
    if (rnd(10) < 7)
        e |= POLLIN;
    if (with_out && rnd(10) < 5)
        e |= POLLOUT;
    if (rnd(10) < 4)
        e |= POLLRDHUP;
    if (rnd(10) == 0)
        e |= POLLPRI;
    if (rnd(10) == 0)
        e |= POLLRDNORM;
    if (with_out && rnd(10) == 0)
        e |= POLLWRNORM;
    return e;
}

static int rand_msgflags(int rd)
{
    int f = 0;
    if (rnd(10) < 3)
        f |= MSG_DONTWAIT;
    if (rd) {
        if (rnd(10) < 3)
            f |= MSG_PEEK;
        if (rnd(10) < 2)
            f |= MSG_WAITALL;
    } else if (rnd(10) < 3) {
        f |= MSG_NOSIGNAL;
    }
    return f;
}

/* One operation of side x that cannot block on a plain socket; late: in
 * the last two thirds of the sequence (where closes and exits go). */
static struct op gen_one(struct model *m, int x, int late)
{
    const struct sidem *me = &m->s[x];
    const struct dirm *din = &m->d[1 - x];
    for (int tries = 0;; tries++) {
        struct op o;
        memset(&o, 0, sizeof o);
        o.side = x;
        if (me->closed) {
            static const int k[] = {K_READ, K_POLL, K_NONBLOCK, K_EXIT};
            o.kind = k[rnd(4)];
        } else {
            /* weights */
            int w[NKIND] = {0};
            w[K_WRITE] = 9; w[K_SEND] = 8; w[K_WRITEV] = 5; w[K_SENDMSG] = 5;
            w[K_FILL] = 3;
            w[K_READ] = 8; w[K_RECV] = 9; w[K_READV] = 4; w[K_RECVMSG] = 4;
            w[K_DRAIN] = din->st != ST_KNOWN ? 14 : din->pend ? 4 : 1;
            if (din->st != ST_KNOWN)
                w[K_READ] = w[K_RECV] = w[K_READV] = w[K_RECVMSG] = 0;
            w[K_NONBLOCK] = 4; w[K_FIONBIO] = 1;
            w[K_POLL] = 7; w[K_SELECT] = 2; w[K_EPOLL] = 3;
            w[K_EPSET] = 3; w[K_EPWAIT] = 5; w[K_EPDEL] = 1;
            w[K_FIONREAD] = 3; w[K_OUTQ] = 2; w[K_SOERROR] = 1;
            w[K_SHUTDOWN] = 2;
            w[K_CLOSE] = w[K_EXIT] = w[K_KILL] = late;
            if (epipe_out(m, x)) /* every write fails alike: fewer of them */
                w[K_WRITE] = w[K_SEND] = w[K_WRITEV] = w[K_SENDMSG] = 2;
            int tot = 0;
            for (int k = 0; k < NKIND; k++) {
                if (g_skip & (1u << k))
                    w[k] = 0;
                tot += w[k];
            }
            int r = (int)rnd((uint64_t)tot);
            for (o.kind = 0; r >= w[o.kind]; o.kind++)
                r -= w[o.kind];
        }
        int k = o.kind;
        if (is_write(k) || is_read(k)) {
            o.len = rand_size();
            if (is_read(k) && me->closed)
                o.len = 1 + rnd(64);
            if (has_list(k))
                split_iov(&o);
            if (has_flags(k))
                o.flags = rand_msgflags(is_read(k));
            /* a blocking write that might not fit: shrink it to what fits */
            if (is_write(k) && !me->closed && !epipe_out(m, x) && !me->nonblock &&
                !(o.flags & MSG_DONTWAIT) && m->d[x].st == ST_KNOWN) {
                uint64_t e = est(&m->d[x]);
                while (o.len > 0 && e + est_rec(o.len) > SAFE)
                    o.len /= 2;
                if (has_list(k))
                    split_iov(&o);
            }
        } else if (has_events(k)) {
            o.events = rand_events(k != K_EPSET);
            if (k == K_EPSET) {
                unsigned r = (unsigned)rnd(10);
                o.events |= r < 4 ? 0 : r < 8 ? EPOLLET : r < 9 ? EPOLLONESHOT
                                                          : EPOLLET | EPOLLONESHOT;
            }
        } else if (k == K_NONBLOCK || k == K_FIONBIO) {
            o.flags = rnd(5) ? !me->nonblock : me->nonblock;
        } else if (k == K_SHUTDOWN) {
            o.flags = (int)rnd(3);
        }
        struct model t = *m;
        model_op(&t, &o);
        if (o.mayblock) {
            if (tries > 10000)
                dief("generator stuck");
            continue;
        }
        *m = t;
        return o;
    }
}

static void gen_seq(uint64_t seed, uint64_t seq)
{
    g_rng = splitmix64(splitmix64(seed) ^ (seq * 0x9e3779b97f4a7c15ull)) | 1;
    struct model m;
    memset(&m, 0, sizeof m);
    g_nops = 0;
    int n = 3 + (int)rnd(50);
    if (rnd(10) < 3) {
        /* warm start: one byte each way first (an accelerator switches) */
        static const char *const warm[] = {"C write 1", "S read 1", "S write 1", "C read 1"};
        for (int i = 0; i < 4; i++) {
            char l[32];
            snprintf(l, sizeof l, "%s", warm[i]);
            op_parse(l, &g_ops[g_nops]);
            model_op(&m, &g_ops[g_nops]);
            g_nops++;
        }
    }
    int x = (int)rnd(2);
    while (g_nops < n + 4 && g_nops < MAXOPS) {
        if (rnd(100) < 45)
            x = 1 - x;
        if (m.s[x].exited || (m.s[x].closed && rnd(10) < 7))
            x = 1 - x;
        if (m.s[x].exited)
            break; /* both have exited */
        g_ops[g_nops] = gen_one(&m, x, g_nops * 3 > n);
        g_nops++;
    }
}

/* Runs model_op over a parsed script (classification only). */
static void classify_all(void)
{
    struct model m;
    memset(&m, 0, sizeof m);
    for (int i = 0; i < g_nops; i++)
        model_op(&m, &g_ops[i]);
}

/* ---- shared state, logging ---------------------------------------------------------- */

struct shared {
    uint64_t wr[2], rd[2]; /* bytes written / read in the current epoch, per direction */
    uint32_t epoch[2];
    size_t loglen;
    char log[LOGCAP];
};

static struct shared *g_sh;
static uint64_t g_key;     /* per sequence */
static int g_side = -1;    /* 0 C, 1 S */
static int g_fd = -1, g_ep = -1, g_epreg;
static int g_to_peer = -1, g_from_peer = -1;
static volatile sig_atomic_t g_sigpipes;
static unsigned char *g_wbuf, *g_rbuf;

__attribute__((format(printf, 1, 2))) static void L(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    size_t len = (size_t)n < sizeof line - 2 ? (size_t)n : sizeof line - 2;
    line[len++] = '\n';
    if (g_sh->loglen + len <= LOGCAP) {
        memcpy(g_sh->log + g_sh->loglen, line, len);
        g_sh->loglen += len;
    }
}

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    char msg[256];
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    L("   %c FAIL %s (%s)", "CS"[g_side], msg, errname(e));
    _exit(1);
}

/* ---- data ----------------------------------------------------------------------- */

static uint64_t dkey(int d)
{
    return splitmix64(g_key ^ ((uint64_t)(d + 1) << 8) ^ ((uint64_t)g_sh->epoch[d] << 32));
}

static void fill_stream(unsigned char *b, int d, uint64_t off, size_t n)
{
    uint64_t k = dkey(d), v = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t o = off + i;
        if (i == 0 || (o & 7) == 0)
            v = splitmix64(k + (o >> 3));
        b[i] = (unsigned char)(v >> ((o & 7) * 8));
    }
}

/* Index of the first byte that differs from the stream, or -1. */
static long check_stream(const unsigned char *b, int d, uint64_t off, size_t n)
{
    uint64_t k = dkey(d), v = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t o = off + i;
        if (i == 0 || (o & 7) == 0)
            v = splitmix64(k + (o >> 3));
        if (b[i] != (unsigned char)(v >> ((o & 7) * 8)))
            return (long)i;
    }
    return -1;
}

static uint32_t fnv(const unsigned char *b, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

/* ---- barriers --------------------------------------------------------------------- */

static void sig_peer(void)
{
    if (barrier_signal(g_to_peer) != 0)
        fail("barrier write");
}

static void wait_peer(void)
{
    if (barrier_wait(g_from_peer) != 0)
        fail("barrier read");
}

/* ---- execution ---------------------------------------------------------------------- */

static int g_raw; /* SEQFUZZ_RAW: show normalized values too (debugging) */

/* A count logged under norm n. */
static const char *normed(int n, long r, int e)
{
    static char b[4][80];
    static int i;
    const char *v;
    if (n == N_POS && r > 0)
        v = ">0";
    else if (n == N_SOME && (r > 0 || (r < 0 && e == EAGAIN)))
        v = "~";
    else
        return rv(r, e);
    if (!g_raw)
        return v;
    i = (i + 1) & 3;
    snprintf(b[i], sizeof b[i], "%s{%s}", v, rv(r, e));
    return b[i];
}

static void model_note(char *b, size_t cap, const struct op *o, long r)
{
    if (o->norm == N_EXACT && o->expect != -2 && r != o->expect)
        snprintf(b, cap, " MODEL!(expected %ld)", o->expect);
    else
        b[0] = 0;
}

static size_t make_iov(const struct op *o, unsigned char *base, struct iovec *iov)
{
    size_t off = 0;
    for (int i = 0; i < o->niov; i++) {
        iov[i].iov_base = base + off;
        iov[i].iov_len = o->iov[i];
        off += o->iov[i];
    }
    return (size_t)o->niov;
}

static void ex_write(const char *txt, const struct op *o)
{
    int d = g_side;
    fill_stream(g_wbuf, d, g_sh->wr[d], o->len);
    struct iovec iov[MAXIOV];
    struct msghdr mh;
    int sp = g_sigpipes;
    long r;
    switch (o->kind) {
    case K_WRITE:
        r = write(g_fd, g_wbuf, o->len);
        break;
    case K_SEND:
        r = send(g_fd, g_wbuf, o->len, o->flags);
        break;
    case K_WRITEV:
        r = writev(g_fd, iov, (int)make_iov(o, g_wbuf, iov));
        break;
    default:
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = make_iov(o, g_wbuf, iov);
        r = sendmsg(g_fd, &mh, o->flags);
        break;
    }
    int e = errno;
    if (r > 0)
        g_sh->wr[d] += (uint64_t)r;
    char note[64];
    model_note(note, sizeof note, o, r);
    L("%s = %s%s%s", txt, normed(o->norm, r, e), g_sigpipes != sp ? " SIGPIPE" : "", note);
}

static void ex_fill(const char *txt, const struct op *o)
{
    int d = g_side, sp = g_sigpipes;
    long n = 0, r;
    int e;
    for (;;) {
        fill_stream(g_wbuf, d, g_sh->wr[d], FILLCHUNK);
        r = send(g_fd, g_wbuf, FILLCHUNK, MSG_DONTWAIT);
        e = errno;
        if (r <= 0)
            break;
        g_sh->wr[d] += (uint64_t)r;
        if (++n > 400)
            break;
    }
    /* N_SOME: any number of writes, 0 included */
    char cnt[48];
    if (o->norm == N_SOME)
        snprintf(cnt, sizeof cnt, g_raw ? "~{%ld}" : "~", n);
    else
        snprintf(cnt, sizeof cnt, "%s", normed(o->norm, n, 0));
    L("%s = %s writes, then %s%s", txt, cnt, r > 0 ? "no EAGAIN" : rv(r, e),
      g_sigpipes != sp ? " SIGPIPE" : "");
}

/* Checks r bytes read from direction d at the current read offset. */
static void read_check(char *b, size_t cap, long r, int peek)
{
    int d = 1 - g_side;
    b[0] = 0;
    if (r <= 0)
        return;
    long bad = check_stream(g_rbuf, d, g_sh->rd[d], (size_t)r);
    if (!peek)
        g_sh->rd[d] += (uint64_t)r;
    if (bad >= 0)
        snprintf(b, cap, " BAD@%ld", bad);
}

static void ex_read(const char *txt, const struct op *o)
{
    struct iovec iov[MAXIOV];
    struct msghdr mh;
    struct sockaddr_un a;
    memset(&mh, 0, sizeof mh);
    long r;
    switch (o->kind) {
    case K_READ:
        r = read(g_fd, g_rbuf, o->len);
        break;
    case K_RECV:
        r = recv(g_fd, g_rbuf, o->len, o->flags);
        break;
    case K_READV:
        r = readv(g_fd, iov, (int)make_iov(o, g_rbuf, iov));
        break;
    default:
        memset(&a, 0, sizeof a);
        mh.msg_name = &a;
        mh.msg_namelen = sizeof a;
        mh.msg_iov = iov;
        mh.msg_iovlen = make_iov(o, g_rbuf, iov);
        mh.msg_flags = 0x7f7f;
        r = recvmsg(g_fd, &mh, o->flags);
        break;
    }
    int e = errno;
    char chk[48], note[64], extra[200];
    read_check(chk, sizeof chk, r, (o->flags & MSG_PEEK) != 0);
    model_note(note, sizeof note, o, r);
    extra[0] = 0;
    if (o->kind == K_RECVMSG && r >= 0) {
        size_t pl = mh.msg_namelen > offsetof(struct sockaddr_un, sun_path)
                        ? mh.msg_namelen - offsetof(struct sockaddr_un, sun_path) : 0;
        if (pl > 16)
            pl = 16;
        char path[40];
        size_t k = 0;
        for (size_t i = 0; i < pl; i++) {
            unsigned char c = (unsigned char)a.sun_path[i];
            if (c >= 0x21 && c < 0x7f)
                path[k++] = (char)c;
            else
                k += (size_t)snprintf(path + k, 5, "\\x%02x", c);
        }
        path[k] = 0;
        snprintf(extra, sizeof extra, " msg_flags=0x%x namelen=%u path=\"%s\"", (unsigned)mh.msg_flags,
                 (unsigned)mh.msg_namelen, path);
    }
    if (r > 0 && o->norm == N_EXACT)
        L("%s = %ld h=%08x%s%s%s", txt, r, fnv(g_rbuf, (size_t)r), chk, extra, note);
    else
        L("%s = %s%s%s%s", txt, normed(o->norm, r, e), chk, extra, note);
}

static void ex_drain(const char *txt, const struct op *o)
{
    int d = 1 - g_side;
    uint64_t total = 0;
    long r;
    int e;
    char chk[48] = "";
    for (;;) {
        r = recv(g_fd, g_rbuf, DRAINCHUNK, MSG_DONTWAIT);
        e = errno;
        if (r <= 0)
            break;
        char c[48];
        read_check(c, sizeof c, r, 0);
        if (c[0] && !chk[0])
            snprintf(chk, sizeof chk, "%s", c);
        total += (uint64_t)r;
    }
    char left[48] = "";
    if (g_sh->rd[d] != g_sh->wr[d]) {
        snprintf(left, sizeof left, " left=%" PRIu64, g_sh->wr[d] - g_sh->rd[d]);
    } else {
        /* emptied: a new epoch of the stream */
        g_sh->rd[d] = g_sh->wr[d] = 0;
        g_sh->epoch[d]++;
    }
    char tot[32], note[64];
    if (o->norm == N_EXACT)
        snprintf(tot, sizeof tot, "%" PRIu64, total);
    else
        snprintf(tot, sizeof tot, g_raw ? "%s{%" PRIu64 "}" : "%s", total > 0 ? "all" : "0", total);
    model_note(note, sizeof note, o, (long)total);
    L("%s = %s bytes, then %s%s%s%s", txt, tot, rv(r, e), chk, left, note);
}

static void ex_poll(const char *txt, const struct op *o)
{
    unsigned ev = o->events;
    const char *nc = "";
    if (!o->out_ok && (ev & OUTBITS)) {
        ev &= ~OUTBITS;
        nc = " (OUT not compared)";
    }
    if (o->kind == K_POLL) {
        struct pollfd p = {g_fd, (short)ev, 0};
        long r = poll(&p, 1, 0);
        int e = errno;
        L("%s = %s revents=%s%s", txt, rv(r, e), evs((unsigned)(unsigned short)p.revents), nc);
    } else if (o->kind == K_SELECT) {
        fd_set rs, ws;
        FD_ZERO(&rs);
        FD_ZERO(&ws);
        int fd = g_fd < 0 || g_fd >= FD_SETSIZE ? 0 : g_fd;
        if (ev & POLLIN)
            FD_SET(fd, &rs);
        if (ev & POLLOUT)
            FD_SET(fd, &ws);
        struct timeval tv = {0, 0};
        long r = select(fd + 1, &rs, &ws, NULL, &tv);
        int e = errno;
        L("%s = %s r=%d w=%d%s", txt, rv(r, e), FD_ISSET(fd, &rs) != 0, FD_ISSET(fd, &ws) != 0, nc);
    } else {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
            fail("epoll_create1");
        struct epoll_event e1 = {.events = ev, .data.u64 = EPDATA}, out[4];
        memset(out, 0, sizeof out);
        long a = epoll_ctl(ep, EPOLL_CTL_ADD, g_fd, &e1);
        int ea = errno;
        long r = epoll_wait(ep, out, 4, 0);
        int e = errno;
        close(ep);
        L("%s = add %s, wait %s events=%s%s%s", txt, rv(a, ea), rv(r, e), evs(r > 0 ? out[0].events : 0),
          r > 0 && out[0].data.u64 != EPDATA ? " BAD-DATA" : "", nc);
    }
}

static void ex_ep(const char *txt, const struct op *o)
{
    if (o->kind == K_EPSET) {
        struct epoll_event e1 = {.events = o->events, .data.u64 = EPDATA};
        int op = g_epreg ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        long r = epoll_ctl(g_ep, op, g_fd, &e1);
        int e = errno;
        if (r == 0)
            g_epreg = 1;
        L("%s = %s %s", txt, op == EPOLL_CTL_ADD ? "ADD" : "MOD", rv(r, e));
    } else if (o->kind == K_EPDEL) {
        struct epoll_event e1 = {0, {0}};
        long r = epoll_ctl(g_ep, EPOLL_CTL_DEL, g_fd, &e1);
        int e = errno;
        if (r == 0)
            g_epreg = 0;
        L("%s = %s", txt, rv(r, e));
    } else {
        struct epoll_event out[4];
        memset(out, 0, sizeof out);
        long r = epoll_wait(g_ep, out, 4, 0);
        int e = errno;
        L("%s = %s events=%s%s", txt, rv(r, e), evs(r > 0 ? out[0].events : 0),
          r > 0 && out[0].data.u64 != EPDATA ? " BAD-DATA" : "");
    }
}

static void exec_op(int i, const struct op *o)
{
    char t[400], txt[460];
    op_str(o, t, sizeof t);
    snprintf(txt, sizeof txt, "%3d %c %s", i, "CS"[o->side], t);
    long r;
    int e;
    switch (o->kind) {
    case K_WRITE: case K_SEND: case K_WRITEV: case K_SENDMSG:
        ex_write(txt, o);
        break;
    case K_FILL:
        ex_fill(txt, o);
        break;
    case K_READ: case K_RECV: case K_READV: case K_RECVMSG:
        ex_read(txt, o);
        break;
    case K_DRAIN:
        ex_drain(txt, o);
        break;
    case K_NONBLOCK: {
        int fl = fcntl(g_fd, F_GETFL);
        e = errno;
        if (fl < 0) {
            L("%s = F_GETFL %s", txt, rv(fl, e));
            break;
        }
        r = fcntl(g_fd, F_SETFL, o->flags ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
        e = errno;
        L("%s = %s now=%d", txt, rv(r, e), (fcntl(g_fd, F_GETFL) & O_NONBLOCK) != 0);
        break;
    }
    case K_FIONBIO: {
        int v = o->flags;
        r = ioctl(g_fd, FIONBIO, &v);
        e = errno;
        L("%s = %s now=%d", txt, rv(r, e), (fcntl(g_fd, F_GETFL) & O_NONBLOCK) != 0);
        break;
    }
    case K_POLL: case K_SELECT: case K_EPOLL:
        ex_poll(txt, o);
        break;
    case K_EPSET: case K_EPWAIT: case K_EPDEL:
        ex_ep(txt, o);
        break;
    case K_FIONREAD:
    case K_OUTQ: {
        int n = -7;
        r = ioctl(g_fd, o->kind == K_FIONREAD ? FIONREAD : SIOCOUTQ, &n);
        e = errno;
        char nb[32];
        if (r == 0 && n > 0 && (o->kind == K_OUTQ || o->norm == N_POS))
            snprintf(nb, sizeof nb, g_raw ? ">0{%d}" : ">0", n);
        else
            snprintf(nb, sizeof nb, "%d", n);
        L("%s = %s n=%s", txt, rv(r, e), nb);
        break;
    }
    case K_SOERROR: {
        int v = -7;
        socklen_t l = sizeof v;
        r = getsockopt(g_fd, SOL_SOCKET, SO_ERROR, &v, &l);
        e = errno;
        L("%s = %s err=%s", txt, rv(r, e), v >= 0 ? errname(v) : "?");
        break;
    }
    case K_SHUTDOWN:
        r = shutdown(g_fd, o->flags);
        e = errno;
        L("%s = %s", txt, rv(r, e));
        break;
    case K_CLOSE:
        r = close(g_fd);
        e = errno;
        if (r == 0)
            g_epreg = 0; /* the kernel removes a closed file from every epoll */
        L("%s = %s", txt, rv(r, e));
        break;
    case K_EXIT:
        L("%s", txt);
        _exit(0);
    case K_KILL:
        L("%s", txt);
        raise(SIGKILL);
        _exit(1);
    default:
        fail("bad op kind %d", o->kind);
    }
}

static int exits(int side)
{
    for (int i = 0; i < g_nops; i++)
        if (g_ops[i].side == side && (g_ops[i].kind == K_EXIT || g_ops[i].kind == K_KILL))
            return 1;
    return 0;
}

static void on_sigpipe(int s)
{
    (void)s;
    g_sigpipes++;
}

/* Runs this side's part of the sequence. */
__attribute__((noreturn)) static void run_side(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        fail("epoll_create1");
    g_epreg = 0;
    int prev = -1;
    for (int i = 0; i < g_nops; i++) {
        const struct op *o = &g_ops[i];
        if (o->side == g_side) {
            if (prev >= 0 && prev != g_side)
                wait_peer(); /* the peer handed over (or the driver: it exited) */
            exec_op(i, o);
        } else if (prev == g_side) {
            sig_peer();
        }
        prev = o->side;
    }
    /* nobody ends (closing the connection) before the other side is done */
    if (prev == g_side) {
        if (!exits(1 - g_side))
            sig_peer();
    } else if (prev >= 0) {
        wait_peer();
    }
    _exit(0);
}

/* ---- driver ---------------------------------------------------------------------- */

static unsigned g_timeout = SEQ_TIMEOUT;
static volatile sig_atomic_t g_alarm;
static void on_alarm(int s)
{
    (void)s;
    g_alarm = 1;
}

static const char *status_str(int st)
{
    static char b[64];
    if (WIFEXITED(st))
        snprintf(b, sizeof b, "exit %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(b, sizeof b, "signal %d", WTERMSIG(st));
    else
        snprintf(b, sizeof b, "status 0x%x", st);
    return b;
}

/* Runs g_ops on a fresh connection; prints the transcript. 0 if it ran to its end. */
static int run_seq(const char *title, uint64_t key)
{
    memset(g_sh, 0, offsetof(struct shared, log));
    g_key = key;
    int p2c[2], p2s[2];
    if (pipe(p2c) != 0 || pipe(p2s) != 0)
        die("pipe");
    int lfd = listen_unix(SOCK, 0);
    pid_t pid[2];
    for (int side = 1; side >= 0; side--) {
        fflush(stdout);
        pid[side] = fork();
        if (pid[side] < 0)
            die("fork");
        if (pid[side] == 0) {
            g_side = side;
            g_from_peer = side ? p2s[0] : p2c[0];
            g_to_peer = side ? p2c[1] : p2s[1];
            close(side ? p2s[1] : p2c[1]);
            close(side ? p2c[0] : p2s[0]);
            signal(SIGALRM, SIG_DFL);
            if (side == 1) {
                do
                    g_fd = accept(lfd, NULL, NULL);
                while (g_fd < 0 && errno == EINTR);
                if (g_fd < 0)
                    fail("accept");
                close(lfd);
                sig_peer(); /* accepted: the client may start */
            } else {
                close(lfd);
                struct sockaddr_un sa;
                fill_sockaddr(&sa, SOCK);
                g_fd = socket(AF_UNIX, SOCK_STREAM, 0);
                if (g_fd < 0 || connect(g_fd, (struct sockaddr *)&sa, sizeof sa) != 0)
                    fail("connect");
                wait_peer();
            }
            run_side();
        }
    }
    close(lfd);
    close(p2c[0]);
    close(p2s[0]);
    int to[2] = {p2c[1], p2s[1]};
    int st[2] = {0, 0}, alive[2] = {1, 1}, rc = 0, timeout = 0;
    size_t loglen = 0;
    g_alarm = 0;
    alarm(g_timeout);
    while (alive[0] || alive[1]) {
        int s;
        pid_t w = waitpid(-1, &s, 0);
        if (w < 0) {
            if (errno == EINTR && g_alarm) {
                /* what a side logs after this (a call that fails because
                 * its peer is killed) is an artefact of the kill */
                loglen = g_sh->loglen;
                timeout = 1;
                for (int i = 0; i < 2; i++)
                    if (alive[i])
                        kill(pid[i], SIGKILL);
                g_alarm = 0;
                continue;
            }
            if (errno == EINTR)
                continue;
            die("waitpid");
        }
        int i = w == pid[0] ? 0 : w == pid[1] ? 1 : -1;
        if (i < 0)
            continue;
        alive[i] = 0;
        st[i] = s;
        /* The process is gone for good (its descriptors closed): tell the
         * other side, which waits for it if it exited as scripted.  If it
         * died otherwise, the other side may wait for ever: end it. */
        if (alive[1 - i] && !timeout) {
            if (exits(i) || (WIFEXITED(s) && WEXITSTATUS(s) == 0)) {
                char c = 'E';
                if (write(to[1 - i], &c, 1) != 1)
                    (void)0;
            } else {
                kill(pid[1 - i], SIGKILL);
            }
        }
    }
    alarm(0);
    unlink(SOCK);
    close(p2c[1]);
    close(p2s[1]);
    printf("== %s ==\n", title);
    fflush(stdout);
    out_all(g_sh->log, timeout ? loglen : g_sh->loglen);
    if (timeout) {
        printf("TIMEOUT\n");
        rc = 1;
    }
    for (int i = 0; i < 2; i++) {
        int ok = (WIFEXITED(st[i]) && WEXITSTATUS(st[i]) == 0) ||
                 (exits(i) && WIFSIGNALED(st[i]) && WTERMSIG(st[i]) == SIGKILL);
        if (!ok && !timeout) {
            printf("%c process ended: %s\n", "CS"[i], status_str(st[i]));
            rc = 1;
        }
    }
    fflush(stdout);
    return rc;
}

static char g_dir[256];
static pid_t g_main_pid;
static void rm_dir(void)
{
    if (g_dir[0] && getpid() == g_main_pid) {
        unlink(SOCK);
        rmdir(g_dir);
    }
}

static void setup(void)
{
    void *m = mmap(NULL, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("mmap");
    g_sh = m;
    g_wbuf = xmalloc(BUFSZ);
    g_rbuf = xmalloc(BUFSZ);
    memset(g_rbuf, 0, BUFSZ);
    memset(g_wbuf, 0, BUFSZ);
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/seqfuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir))
        die("mkdtemp");
    if (chdir(g_dir) != 0)
        die("chdir");
    g_main_pid = getpid();
    g_cleanup = rm_dir;
    atexit(rm_dir);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    int64_t to = env_i64("SEQFUZZ_TIMEOUT");
    if (to > 0)
        g_timeout = (unsigned)to;
    g_raw = getenv("SEQFUZZ_RAW") != NULL;
    const char *skip = getenv("SEQFUZZ_SKIP");
    if (skip && *skip) {
        char tmp2[512];
        snprintf(tmp2, sizeof tmp2, "%s", skip);
        for (char *s = NULL, *w = strtok_r(tmp2, ",", &s); w; w = strtok_r(NULL, ",", &s)) {
            int k;
            for (k = 0; k < NKIND; k++)
                if (strcmp(w, g_kname[k]) == 0)
                    break;
            if (k == NKIND)
                dief("SEQFUZZ_SKIP: unknown kind '%s'", w);
            g_skip |= 1u << k;
        }
    }
}

static uint64_t num(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end)
        dief("invalid %s '%s'", what, s);
    return (uint64_t)v;
}

static void print_ops(void)
{
    for (int i = 0; i < g_nops; i++) {
        char t[400];
        op_str(&g_ops[i], t, sizeof t);
        printf("%c %s\n", "CS"[g_ops[i].side], t);
    }
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc == 5 && strcmp(argv[1], "run") == 0) {
        uint64_t seed = num(argv[2], "seed"), first = num(argv[3], "first"), count = num(argv[4], "count");
        setup();
        int rc = 0;
        for (uint64_t s = first; s < first + count; s++) {
            gen_seq(seed, s);
            char title[96];
            snprintf(title, sizeof title, "seed %" PRIu64 " seq %" PRIu64 " (%d ops)", seed, s, g_nops);
            rc |= run_seq(title, splitmix64(seed ^ s));
        }
        return rc;
    }
    if (argc == 4 && strcmp(argv[1], "print") == 0) {
        setup();
        gen_seq(num(argv[2], "seed"), num(argv[3], "seq"));
        print_ops();
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "script") == 0) {
        FILE *f = strcmp(argv[2], "-") == 0 ? stdin : fopen(argv[2], "r");
        if (!f)
            die(argv[2]);
        static char text[1 << 16];
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        setup();
        g_nops = 0;
        for (char *s = NULL, *l = strtok_r(text, ";\n", &s); l; l = strtok_r(NULL, ";\n", &s)) {
            while (*l == ' ' || *l == '\t')
                l++;
            if (!*l || *l == '#')
                continue;
            char copy[512];
            snprintf(copy, sizeof copy, "%s", l);
            if (g_nops == MAXOPS)
                dief("too many operations (max %d)", MAXOPS);
            if (op_parse(copy, &g_ops[g_nops]) != 0)
                dief("cannot parse operation '%s'", l);
            g_nops++;
        }
        classify_all();
        return run_seq("script", splitmix64(0));
    }
    dief("usage: seqfuzz run SEED FIRST COUNT | print SEED SEQ | script FILE|-");
}
