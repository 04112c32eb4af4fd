/*
 * shmring - the hardware limit for moving a byte stream between two
 * processes through shared memory: a naive single-producer single-consumer
 * ring, both sides spinning, no doorbells, no syscalls.
 *
 *   shmring MSGSIZE TOTALBYTES [RINGSIZE]       (sizes accept k/m/g suffix)
 *
 * One mmap(MAP_SHARED|MAP_ANONYMOUS) region, then fork: the child is the
 * producer, the parent the consumer.  The ring (default 256 KiB, tsss's
 * default TSSS_RING_SIZE, a power of two) has free-running 64-bit byte
 * indices, `head` (written by the producer) and `tail` (written by the
 * consumer), each on its own 128-byte line.
 *
 * Producer, per message of MSGSIZE bytes (the same pattern slices at
 * rotating offsets as the stream app): load `tail` (acquire), spinning
 * until the message fits; copy it in (split at the wrap); store `head`
 * (release).  One index load and one store per message.
 * Consumer: load `head` (acquire), spinning until it moves; copy every
 * byte between `tail` and `head` out into a 1 MiB buffer (as the stream
 * app's server reads into one), feed it to the stream checksum of
 * common.h, store `tail` (release); until TOTALBYTES (rounded up to whole
 * messages) have arrived.  The checksum is compared with the expected
 * one (computed after the timed part): MISMATCH on any difference.
 * Spin loops use the CPU's pause hint (x86) and nothing else.
 *
 * Timing: from the producer's first copy to the consumer's last byte
 * (CLOCK_MONOTONIC, shared by both processes).
 *   gbps = bytes/secs/1e9, mmsgs = messages/secs/1e6
 *
 * Env SHMRING_TIMEOUT (default 120 s): both sides exit 1 after that long;
 * the producer also dies with the consumer (PR_SET_PDEATHSIG), and the
 * consumer notices a producer that exited early.
 * Env CORRUPT_AT=N: flip the byte at stream offset N on the way in ->
 * must fail with MISMATCH.
 *
 * Output:
 *   RESULT role=limit size=S bytes=B ring=R secs=T gbps=X mmsgs=Y ok=1
 */
#include "common.h"

#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#define RDBUF (1u << 20)
#define LINE 128

struct ctl {
    _Alignas(LINE) _Atomic uint64_t head;    /* producer's */
    _Alignas(LINE) _Atomic uint64_t tail;    /* consumer's */
    _Alignas(LINE) _Atomic uint64_t t_start; /* producer's first copy */
    _Atomic int ready;                       /* producer set up */
    _Atomic int go;                          /* consumer set up */
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void produce(struct ctl *c, unsigned char *ring, uint64_t cap,
                    uint64_t size, uint64_t nmsgs, int64_t corrupt_at)
{
    uint64_t mask = cap - 1;
    size_t plen = (size_t)size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, PATTERN_SEED);
    unsigned char *tmp = xmalloc((size_t)size);
    uint64_t corrupt_msg = corrupt_at >= 0 ? (uint64_t)corrupt_at / size : UINT64_MAX;

    atomic_store_explicit(&c->ready, 1, memory_order_release);
    while (!atomic_load_explicit(&c->go, memory_order_acquire))
        cpu_relax();
    atomic_store_explicit(&c->t_start, now_ns(), memory_order_release);
    uint64_t head = 0;
    for (uint64_t k = 0; k < nmsgs; k++) {
        const unsigned char *src = pat + msg_offset(k);
        if (k == corrupt_msg) {
            memcpy(tmp, src, (size_t)size);
            tmp[(uint64_t)corrupt_at % size] ^= 0x5a;
            src = tmp;
        }
        while (head + size - atomic_load_explicit(&c->tail, memory_order_acquire) > cap)
            cpu_relax();
        uint64_t off = head & mask, first = cap - off;
        if (first >= size) {
            memcpy(ring + off, src, (size_t)size);
        } else {
            memcpy(ring + off, src, (size_t)first);
            memcpy(ring, src + first, (size_t)(size - first));
        }
        head += size;
        atomic_store_explicit(&c->head, head, memory_order_release);
    }
    free(pat);
    free(tmp);
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc != 3 && argc != 4)
        dief("usage: shmring MSGSIZE TOTALBYTES [RINGSIZE]");
    uint64_t size = parse_size(argv[1], "MSGSIZE");
    uint64_t total = parse_size(argv[2], "TOTALBYTES");
    uint64_t cap = argc == 4 ? parse_size(argv[3], "RINGSIZE") : 256u << 10;
    if (cap < 4096 || cap > (1ull << 30) || (cap & (cap - 1)))
        dief("RINGSIZE must be a power of two from 4K to 1G");
    if (size == 0 || size > cap)
        dief("MSGSIZE must be in 1..RINGSIZE");
    uint64_t nmsgs = (total + size - 1) / size;
    uint64_t bytes = nmsgs * size;
    int64_t corrupt_at = env_i64("CORRUPT_AT");
    arm_timeout_env("SHMRING_TIMEOUT", 120);

    size_t hdr = 4096;
    unsigned char *base = mmap(NULL, hdr + cap, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        die("mmap");
    struct ctl *c = (struct ctl *)base;
    unsigned char *ring = base + hdr;

    memset(ring, 0, (size_t)cap); /* fault the ring in before the clock starts */

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
            die("prctl(PR_SET_PDEATHSIG)");
        if (getppid() != parent)
            _exit(1);
        arm_timeout_env("SHMRING_TIMEOUT", 120);
        produce(c, ring, cap, size, nmsgs, corrupt_at);
        _exit(0);
    }

    unsigned char *buf = xmalloc(RDBUF);
    memset(buf, 0, RDBUF); /* fault it in before the clock starts */
    cks_t ck;
    cks_init(&ck);
    uint64_t mask = cap - 1, tail = 0, spins = 0;
    int child_gone = 0, status = 0;
    while (!atomic_load_explicit(&c->ready, memory_order_acquire))
        cpu_relax();
    atomic_store_explicit(&c->go, 1, memory_order_release);
    while (tail < bytes) {
        uint64_t head = atomic_load_explicit(&c->head, memory_order_acquire);
        if (head == tail) {
            cpu_relax();
            if (++spins >= (1u << 22)) { /* now and then: is the producer alive? */
                spins = 0;
                if (child_gone)
                    dief("producer exited after %" PRIu64 " of %" PRIu64
                         " bytes (status 0x%x)", tail, bytes, status);
                if (waitpid(pid, &status, WNOHANG) == pid)
                    child_gone = 1; /* one more look at head first */
            }
            continue;
        }
        if (head - tail > cap)
            dief("MISMATCH: head %" PRIu64 " - tail %" PRIu64 " exceeds the ring",
                 head, tail);
        uint64_t n = head - tail;
        if (n > RDBUF)
            n = RDBUF;
        uint64_t off = tail & mask, first = cap - off;
        if (first >= n) {
            memcpy(buf, ring + off, (size_t)n);
        } else {
            memcpy(buf, ring + off, (size_t)first);
            memcpy(buf + first, ring, (size_t)(n - first));
        }
        tail += n;
        atomic_store_explicit(&c->tail, tail, memory_order_release);
        cks_update(&ck, buf, (size_t)n);
    }
    uint64_t t_end = now_ns();
    uint64_t t_start = atomic_load_explicit(&c->t_start, memory_order_acquire);
    if (!child_gone && waitpid(pid, &status, 0) != pid)
        die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        dief("producer failed (status 0x%x)", status);

    /* expected checksum, outside the timed part */
    size_t plen = (size_t)size + PATTERN_SLACK;
    unsigned char *pat = xmalloc(plen);
    fill_pattern(pat, plen, PATTERN_SEED);
    cks_t want;
    cks_init(&want);
    for (uint64_t k = 0; k < nmsgs; k++)
        cks_update(&want, pat + msg_offset(k), (size_t)size);
    uint64_t w = cks_final(&want), got = cks_final(&ck);
    if (w != got || ck.total != bytes) {
        fprintf(stderr, "%s: MISMATCH: sent %" PRIu64 " bytes checksum %016" PRIx64
                ", received %" PRIu64 " bytes checksum %016" PRIx64 "\n",
                g_prog, bytes, w, ck.total, got);
        return 1;
    }
    double secs = (double)(t_end - t_start) / 1e9;
    if (secs <= 0)
        secs = 1e-9;
    printf("RESULT role=limit size=%" PRIu64 " bytes=%" PRIu64 " ring=%" PRIu64
           " secs=%.6f gbps=%.4f mmsgs=%.4f ok=1\n",
           size, bytes, cap, secs, (double)bytes / secs / 1e9,
           (double)nmsgs / secs / 1e6);
    free(buf);
    free(pat);
    return 0;
}
