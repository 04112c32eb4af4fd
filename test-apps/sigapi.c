/*
 * sigapi - every way a program sets and reads back a signal disposition,
 * printed as a transcript to compare with and without LD_PRELOAD.
 *
 *   sigapi
 *
 * For every pair (old, new) of dispositions it installs `old`, then `new`
 * with sigaction(), and prints what sigaction reported as the old action,
 * what a query reports now, and which handler a raised signal runs.  Then
 * the same through signal(), bsd_signal(), sysv_signal(), sigset() and
 * siginterrupt(), and the "save the old handler, chain to it, restore it"
 * pattern of readline.  Handlers print as their names (DFL, IGN, HOLD, h1,
 * h2, s1), so the transcript is the same in every run of one program.
 * Ends with "RESULT steps=N ok=1".
 */
#include "common.h"

/* sigset() is obsolescent, and still what some programs call. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
/* An sa_sigaction handler stored in sa_handler, as the union does. */
#pragma GCC diagnostic ignored "-Wcast-function-type"

extern __sighandler_t sysv_signal(int, __sighandler_t);
extern __sighandler_t bsd_signal(int, __sighandler_t);

static volatile sig_atomic_t g_ran[4];
static volatile sig_atomic_t g_chain;
static int g_steps;

static void h1(int s) { (void)s; g_ran[1]++; }
static void h2(int s) { (void)s; g_ran[2]++; }
static void s1(int s, siginfo_t *si, void *ctx)
{
    (void)s; (void)ctx;
    g_ran[3] += si && si->si_signo == s ? 1 : 100;
}

static const char *name(void (*h)(int))
{
    if (h == SIG_DFL) return "DFL";
    if (h == SIG_IGN) return "IGN";
    if (h == SIG_ERR) return "ERR";
    if (h == SIG_HOLD) return "HOLD";
    if (h == h1) return "h1";
    if (h == h2) return "h2";
    if (h == (void (*)(int))s1) return "s1";
    return "other";
}

/* The flags a program can set: SA_RESTORER is glibc's own. */
static unsigned flags_of(const struct sigaction *a)
{
    return (unsigned)a->sa_flags & ~0x04000000u;
}

static void show(const char *what, const struct sigaction *a)
{
    printf(" %s=%s/%x/%s", what, name(a->sa_handler), flags_of(a),
           sigismember(&a->sa_mask, SIGUSR2) == 1 ? "m" : "-");
}

static void step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_steps++;
    printf("%3d ", g_steps);
    vprintf(fmt, ap);
    va_end(ap);
}

struct disp {
    const char *label;
    void (*h)(int);
    int flags;
    int masked; /* SIGUSR2 in sa_mask */
};

static const struct disp DISPS[] = {
    {"DFL", SIG_DFL, 0, 0},
    {"IGN", SIG_IGN, 0, 0},
    {"h1", h1, 0, 0},
    {"h1+RESTART", h1, SA_RESTART, 1},
    {"s1+SIGINFO", (void (*)(int))s1, SA_SIGINFO, 0},
    {"s1+SIGINFO+RESTART", (void (*)(int))s1, SA_SIGINFO | SA_RESTART, 1},
    {"h2+RESETHAND+NODEFER", h2, SA_RESETHAND | SA_NODEFER, 0},
    {"h2+ONSTACK", h2, SA_ONSTACK, 0},
};
#define NDISP (sizeof DISPS / sizeof DISPS[0])

static void set(int sig, const struct disp *d, struct sigaction *old)
{
    struct sigaction a;
    memset(&a, 0, sizeof a);
    sigemptyset(&a.sa_mask);
    if (d->masked) sigaddset(&a.sa_mask, SIGUSR2);
    a.sa_handler = d->h;
    a.sa_flags = d->flags;
    if (sigaction(sig, &a, old) != 0) die("sigaction");
}

static void ran_line(void)
{
    printf(" ran=%d,%d,%d", (int)g_ran[1], (int)g_ran[2], (int)g_ran[3]);
    memset((void *)g_ran, 0, sizeof g_ran);
}

/* Raises `sig` unless its disposition would end the process. */
static void fire(int sig)
{
    struct sigaction q;
    if (sigaction(sig, NULL, &q) != 0) die("sigaction query");
    if (q.sa_handler == SIG_DFL) {
        printf(" fire=skipped");
        return;
    }
    raise(sig);
    ran_line();
    if (sigaction(sig, NULL, &q) != 0) die("sigaction query");
    show("after", &q);
}

static void pairs(int sig)
{
    for (size_t i = 0; i < NDISP; i++) {
        for (size_t j = 0; j < NDISP; j++) {
            struct sigaction o, q;
            set(sig, &DISPS[i], NULL);
            set(sig, &DISPS[j], &o);
            if (sigaction(sig, NULL, &q) != 0) die("sigaction query");
            step("sig=%d %s->%s", sig == SIGUSR1 ? 1 : 2, DISPS[i].label, DISPS[j].label);
            show("old", &o);
            show("now", &q);
            fire(sig);
            printf("\n");
        }
    }
    struct sigaction d;
    memset(&d, 0, sizeof d);
    d.sa_handler = SIG_DFL;
    sigaction(sig, &d, NULL);
}

static void blocked(int sig)
{
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    printf(" blocked=%d", sigismember(&cur, sig));
}

static void query(int sig)
{
    struct sigaction q;
    if (sigaction(sig, NULL, &q) != 0) die("sigaction query");
    show("now", &q);
}

int main(int argc, char **argv)
{
    (void)argc;
    set_prog(argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rt = SIGRTMIN + 2;

    pairs(SIGUSR1);
    pairs(rt);

    /* signal(): BSD semantics, returns the previous handler. */
    step("signal h1 -> %s", name(signal(SIGUSR1, h1)));
    query(SIGUSR1); printf("\n");
    step("signal h2 -> %s", name(signal(SIGUSR1, h2)));
    fire(SIGUSR1); printf("\n");
    step("signal IGN -> %s", name(signal(SIGUSR1, SIG_IGN)));
    printf("\n");
    step("signal DFL -> %s", name(signal(SIGUSR1, SIG_DFL)));
    printf("\n");
    {
        errno = 0;
        void (*r)(int) = signal(0, h1);
        int e = errno;
        step("signal(0) -> %s errno=%d\n", name(r), e);
        errno = 0;
        r = signal(SIGKILL, h1);
        e = errno;
        step("signal(SIGKILL) -> %s errno=%d", name(r), e);
        query(SIGKILL);
        printf("\n");
    }
    step("bsd_signal h1 -> %s", name(bsd_signal(SIGUSR1, h1)));
    query(SIGUSR1); printf("\n");
    step("bsd_signal DFL -> %s", name(bsd_signal(SIGUSR1, SIG_DFL)));
    printf("\n");

    /* siginterrupt() changes SA_RESTART, and what later signal() calls set. */
    signal(SIGUSR1, h1);
    step("siginterrupt 1 -> %d", siginterrupt(SIGUSR1, 1));
    query(SIGUSR1); printf("\n");
    step("signal h2 after siginterrupt -> %s", name(signal(SIGUSR1, h2)));
    query(SIGUSR1); fire(SIGUSR1); printf("\n");
    step("siginterrupt 0 -> %d", siginterrupt(SIGUSR1, 0));
    query(SIGUSR1); printf("\n");
    step("signal DFL -> %s", name(signal(SIGUSR1, SIG_DFL)));
    printf("\n");

    /* sysv_signal(): one-shot, not blocked in its handler. */
    step("sysv_signal h1 -> %s", name(sysv_signal(SIGUSR1, h1)));
    query(SIGUSR1); fire(SIGUSR1); printf("\n");
    step("sysv_signal h2 -> %s", name(sysv_signal(SIGUSR1, h2)));
    printf("\n");
    step("sysv_signal DFL -> %s", name(sysv_signal(SIGUSR1, SIG_DFL)));
    printf("\n");

    /* sigset(): SIG_HOLD blocks, a handler unblocks. */
    step("sigset h1 -> %s", name(sigset(SIGUSR1, h1)));
    query(SIGUSR1); blocked(SIGUSR1); printf("\n");
    step("sigset HOLD -> %s", name(sigset(SIGUSR1, SIG_HOLD)));
    blocked(SIGUSR1); printf("\n");
    step("sigset HOLD again -> %s", name(sigset(SIGUSR1, SIG_HOLD)));
    blocked(SIGUSR1); printf("\n");
    step("sigset h2 -> %s", name(sigset(SIGUSR1, h2)));
    query(SIGUSR1); blocked(SIGUSR1); fire(SIGUSR1); printf("\n");
    step("sigset DFL -> %s", name(sigset(SIGUSR1, SIG_DFL)));
    blocked(SIGUSR1); printf("\n");

    /* readline's pattern: save the old handler, chain to it, restore it. */
    {
        struct sigaction a, old, back;
        memset(&a, 0, sizeof a);
        a.sa_handler = h1;
        sigaction(SIGWINCH, &a, NULL);
        a.sa_handler = h2;
        sigaction(SIGWINCH, &a, &old);
        step("chain saved=%s", name(old.sa_handler));
        if (old.sa_handler == h2) {
            printf(" BUG: the saved handler is the new one\n");
        } else {
            raise(SIGWINCH);
            if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) old.sa_handler(SIGWINCH);
            ran_line();
            sigaction(SIGWINCH, &old, &back);
            printf(" restored-from=%s", name(back.sa_handler));
            query(SIGWINCH);
            printf("\n");
        }
    }

    /* Errors. */
    {
        struct sigaction a, q;
        memset(&a, 0, sizeof a);
        a.sa_handler = h1;
        errno = 0;
        int r = sigaction(SIGKILL, &a, NULL);
        step("sigaction(SIGKILL) r=%d errno=%d", r, errno);
        errno = 0;
        r = sigaction(SIGKILL, NULL, &q);
        printf(" query r=%d", r);
        if (r == 0) show("now", &q);
        errno = 0;
        r = sigaction(65, &a, NULL);
        printf(" sig65 r=%d errno=%d\n", r, errno);
    }

    printf("RESULT steps=%d ok=1\n", g_steps);
    return 0;
}
