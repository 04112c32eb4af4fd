/*
 * mtwrite: many writers on one connection.
 *
 *   mtwrite server PATH WRITERS RECS   read records to EOF, verify them
 *   mtwrite client PATH PROCS THREADS RECS
 *       connect once, fork PROCS processes (sharing the connection), each
 *       running THREADS threads that write RECS 64-byte records each.
 *
 * A record is written with one write() (the kernel and tsss both keep a
 * small write whole against other writers); it carries the writer id, a
 * sequence number and a checksum. The server checks every record is intact,
 * and that each writer's records arrive complete and in order.
 * Output: RESULT role=... records=N ok=1; MISMATCH on any error.
 */
#include "common.h"
#include <pthread.h>
#include <sys/wait.h>

#define REC 64

struct rec {
    uint32_t writer, seq;
    unsigned char pad[REC - 16];
    uint64_t sum;
};

static uint64_t rec_sum(const struct rec *r)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)r;
    for (size_t i = 0; i < offsetof(struct rec, sum); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int g_fd;
static long g_recs;

struct job {
    uint32_t writer;
};

static void *writer(void *arg)
{
    uint32_t w = ((struct job *)arg)->writer;
    for (long k = 0; k < g_recs; k++) {
        struct rec r;
        r.writer = w;
        r.seq = (uint32_t)k;
        for (size_t i = 0; i < sizeof r.pad; i++)
            r.pad[i] = (unsigned char)(w * 31 + k + i);
        r.sum = rec_sum(&r);
        if (write(g_fd, &r, sizeof r) != (ssize_t)sizeof r)
            die("write (a record must go whole)");
    }
    return NULL;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc == 5 && strcmp(argv[1], "server") == 0) {
        long writers = atol(argv[3]), recs = atol(argv[4]);
        int l = listen_unix(argv[2], 0);
        int fd = accept(l, NULL, NULL);
        if (fd < 0)
            die("accept");
        uint32_t *next = calloc((size_t)writers, sizeof *next);
        long total = 0;
        struct rec r;
        size_t got;
        while ((got = read_full(fd, &r, sizeof r)) == sizeof r) {
            if (r.sum != rec_sum(&r) || r.writer >= (uint32_t)writers)
                dief("MISMATCH: record %ld corrupt (writer %u seq %u)", total, r.writer, r.seq);
            if (r.seq != next[r.writer])
                dief("MISMATCH: writer %u: seq %u, expected %u", r.writer, r.seq, next[r.writer]);
            next[r.writer]++;
            total++;
        }
        if (got != 0)
            dief("MISMATCH: %zu stray bytes at the end", got);
        if (total != writers * recs)
            dief("MISMATCH: %ld records, expected %ld", total, writers * recs);
        printf("RESULT role=server records=%ld ok=1\n", total);
        unlink(argv[2]);
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "client") == 0) {
        long procs = atol(argv[3]), threads = atol(argv[4]);
        g_recs = atol(argv[5]);
        g_fd = connect_unix(argv[2]);
        for (long p = 0; p < procs; p++) {
            pid_t k = fork();
            if (k < 0)
                die("fork");
            if (k == 0) {
                pthread_t t[64];
                struct job j[64];
                for (long i = 0; i < threads && i < 64; i++) {
                    j[i].writer = (uint32_t)(p * threads + i);
                    if (pthread_create(&t[i], NULL, writer, &j[i]) != 0)
                        die("pthread_create");
                }
                for (long i = 0; i < threads && i < 64; i++)
                    pthread_join(t[i], NULL);
                _exit(0);
            }
        }
        int ok = 1;
        for (long p = 0; p < procs; p++) {
            int st;
            if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
                ok = 0;
        }
        xclose(g_fd);
        if (!ok)
            dief("a writer process failed");
        printf("RESULT role=client records=%ld ok=1\n", procs * threads * g_recs);
        return 0;
    }
    fprintf(stderr, "usage: mtwrite server PATH WRITERS RECS | client PATH PROCS THREADS RECS\n");
    return 2;
}
