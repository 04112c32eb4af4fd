/*
 * shmpeek - what may this process do with a SysV shared-memory segment?
 *
 *   shmpeek SHMID [stat]
 *
 * Prints, one line each, the outcome of
 *   stat:      shmctl(IPC_STAT)
 *   attach_ro: shmat(SHM_RDONLY)
 *   attach_rw: shmat(0)
 * as "<what>: ok ..." or "<what>: errno=<NAME>", then
 *   RESULT role=shmpeek uid=U ok=1
 * With "stat" only the IPC_STAT line is printed (nothing is attached).
 * A successful attach is detached at once; nothing is read or written.
 * "stat: ok" shows mode (octal, without SHM_DEST), uid (owner), cuid
 * (creator), dest (1 if marked for removal) and size.
 */
#include "common.h"

#include <sys/ipc.h>
#include <sys/shm.h>

static void attach(int id, int flags, const char *what)
{
    void *p = shmat(id, NULL, flags);
    if (p == (void *)-1) {
        printf("%s: errno=%s\n", what, strerrorname_np(errno));
        return;
    }
    printf("%s: ok\n", what);
    if (shmdt(p) != 0)
        die("shmdt");
}

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "stat") != 0))
        dief("usage: shmpeek SHMID [stat]");
    char *end;
    long v = strtol(argv[1], &end, 10);
    if (*end || v < 0 || v > INT32_MAX)
        dief("bad SHMID %s", argv[1]);
    int id = (int)v;
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) != 0)
        printf("stat: errno=%s\n", strerrorname_np(errno));
    else
        printf("stat: ok mode=%o uid=%u cuid=%u dest=%d size=%zu nattch=%lu\n",
               (unsigned)ds.shm_perm.mode & 0777u, (unsigned)ds.shm_perm.uid,
               (unsigned)ds.shm_perm.cuid, (ds.shm_perm.mode & SHM_DEST) != 0,
               (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch);
    if (argc == 2) {
        attach(id, SHM_RDONLY, "attach_ro");
        attach(id, 0, "attach_rw");
    }
    printf("RESULT role=shmpeek uid=%u ok=1\n", (unsigned)geteuid());
    return 0;
}
