/*
 * shmhog - holds SysV shared-memory segments until none can be created any
 * more (kernel.shmmni), then waits to be killed.
 *
 *   shmhog [FREE]
 *
 * Creates one-page IPC_PRIVATE segments (mode 0600), attaching each and
 * marking it for removal (IPC_RMID) at once: an attached segment marked for
 * removal still counts against kernel.shmmni, but the kernel frees it when
 * this process exits, however it exits, so nothing can leak.  At the first
 * shmget() failure, which must be ENOSPC (the segment limit), it releases
 * FREE (default 0) of them again, so that exactly FREE more segments can be
 * created, prints
 *   RESULT role=shmhog held=N free=FREE shmmni=M errno=ENOSPC ok=1
 * on stdout (M: /proc/sys/kernel/shmmni as this process sees it) and sleeps
 * until a signal ends it.  Run it in a private IPC namespace (unshare --ipc)
 * to exhaust that namespace only, not the whole machine.
 */
#include "common.h"

#include <sys/ipc.h>
#include <sys/shm.h>

static long read_shmmni(void)
{
    FILE *f = fopen("/proc/sys/kernel/shmmni", "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc > 2)
        dief("usage: shmhog [FREE]");
    uint64_t nfree = argc == 2 ? parse_size(argv[1], "FREE") : 0;
    void **held = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) {
            if (errno != ENOSPC)
                die("shmget");
            break;
        }
        void *p = shmat(id, NULL, SHM_RDONLY);
        int e = errno;
        if (shmctl(id, IPC_RMID, NULL) != 0)
            die("shmctl(IPC_RMID)");
        if (p == (void *)-1) {
            errno = e;
            die("shmat");
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            held = realloc(held, cap * sizeof *held);
            if (!held)
                die("realloc");
        }
        held[n++] = p;
    }
    if (nfree > n)
        dief("cannot free %" PRIu64 " of %zu segments", nfree, n);
    for (uint64_t i = 0; i < nfree; i++)
        if (shmdt(held[--n]) != 0)
            die("shmdt");
    printf("RESULT role=shmhog held=%zu free=%" PRIu64
           " shmmni=%ld errno=ENOSPC ok=1\n", n, nfree, read_shmmni());
    fflush(stdout);
    for (;;)
        pause();
}
