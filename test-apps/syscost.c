/*
 * syscost: the cost of one write() to /dev/null, the cheapest real
 * syscall, in ns (best of 5 rounds of N calls). Run with and without
 * LD_PRELOAD it measures what the preload adds to every call on an fd it
 * does not accelerate.
 *
 *   syscost N
 * Output: RESULT calls=N ns_per_call=X ok=1
 */
#include "common.h"

int main(int argc, char **argv)
{
    set_prog(argv[0]);
    if (argc != 2) {
        fprintf(stderr, "usage: syscost N\n");
        return 2;
    }
    long n = (long)parse_size(argv[1], "N");
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0)
        die("open /dev/null");
    char b[64] = {0};
    double best = 1e18;
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++)
            if (write(fd, b, sizeof b) != (ssize_t)sizeof b)
                die("write");
        double ns = (double)(now_ns() - t0) / (double)n;
        if (ns < best)
            best = ns;
    }
    printf("RESULT calls=%ld ns_per_call=%.2f ok=1\n", n, best);
    return 0;
}
