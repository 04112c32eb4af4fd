/*
 * execbench - the cost of starting a program: N times fork(), execv() of
 * PROG in the child, waitpid() in the parent, one after the other.
 *
 *   execbench N PROG [ARG...]
 *
 * Every child must exit with status 0 (a failed exec exits 127).  Run with
 * and without LD_PRELOAD, it measures what the preload adds to a fork and
 * an exec (the driver and every child run under it).
 *
 * Output: RESULT n=N secs=T us_per_exec=X ok=1
 */
#include "common.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc < 3)
        dief("usage: execbench N PROG [ARG...]");
    uint64_t n = parse_size(argv[1], "N");
    if (n == 0)
        dief("N must be > 0");
    char **args = argv + 2;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            execv(args[0], args);
            _exit(127);
        }
        int st;
        while (waitpid(pid, &st, 0) != pid)
            if (errno != EINTR)
                die("waitpid");
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            dief("run %" PRIu64 " of %s: status 0x%x (exec failed?)", i, args[0], st);
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("RESULT n=%" PRIu64 " secs=%.6f us_per_exec=%.3f ok=1\n", n, secs,
           secs * 1e6 / (double)n);
    return 0;
}
