/* Child processes: spawn, signal process groups, reap (see proc.h). */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#ifdef __FreeBSD__
#include <sys/procctl.h>
#endif

#include "cw_config.h"
#include "log.h"

static uv_signal_t proc_sigchld;
static bool proc_ready;
static cw_proc_t *proc_list; /* spawned and not yet reaped */

/* Reap every exited child and report the ones we know. */
static void proc_on_sigchld(uv_signal_t *h, int signum)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        cw_proc_t **pp = &proc_list;
        while (*pp && (*pp)->pid != pid)
            pp = &(*pp)->next;
        cw_proc_t *p = *pp;
        if (p == NULL)
            continue;
        *pp = p->next;
        p->next = NULL;
        p->exited = true;
        if (WIFSIGNALED(status)) {
            p->term_signal = WTERMSIG(status);
            p->exit_status = 0;
        } else {
            p->exit_status = WEXITSTATUS(status);
            p->term_signal = 0;
        }
        if (p->released) {
            free(p);
            continue;
        }
        if (p->on_exit)
            p->on_exit(p, p->exit_status, p->term_signal);
    }
}

int cw_proc_init(uv_loop_t *loop)
{
    if (proc_ready)
        return 0;
    int rc = uv_signal_init(loop, &proc_sigchld);
    if (rc < 0)
        return rc;
    rc = uv_signal_start(&proc_sigchld, proc_on_sigchld, SIGCHLD);
    if (rc < 0)
        return rc;
    proc_ready = true;
    return 0;
}

void cw_proc_shutdown(void)
{
    if (!proc_ready)
        return;
    proc_ready = false;
    uv_close((uv_handle_t *)&proc_sigchld, NULL);
}

cw_proc_t *cw_proc_new(cw_proc_exit_cb cb, void *data)
{
    cw_proc_t *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->on_exit = cb;
    p->data = data;
    p->fd_in = p->fd_out = p->fd_err = -1;
    return p;
}

/* What the child reports through the error pipe when it cannot exec. */
typedef struct child_error {
    int stage; /* 1 chdir, 2 exec, 3 terminal set-up, 4 stdio */
    int err;
} child_error_t;

/* Write a failure report and leave (async-signal-safe only). */
static void child_fail(int fd, int stage)
{
    child_error_t e = {stage, errno};
    ssize_t r = write(fd, &e, sizeof e);
    (void)r;
    _exit(127);
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child_setup(const cw_proc_options_t *o, int errfd, int in_fd, int out_fd, int err_fd,
                        const char *pty_slave)
{
    /* Builds get default signal handling, whatever we ignore or catch. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (pty_slave) {
        if (setsid() < 0)
            child_fail(errfd, 3);
        int t = open(pty_slave, O_RDWR);
        if (t < 0)
            child_fail(errfd, 3);
#ifdef TIOCSCTTY
        ioctl(t, TIOCSCTTY, 0);
#endif
        in_fd = out_fd = err_fd = t;
    } else {
        setpgid(0, 0);
    }
    /* If the worker itself is killed, take the leader along.  Elsewhere
     * (macOS) there is no such call: a leader outlives a worker killed
     * with SIGKILL (every other exit path kills the groups itself). */
#if defined(__linux__) && defined(PR_SET_PDEATHSIG)
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#elif defined(__FreeBSD__) && defined(PROC_PDEATHSIG_CTL)
    int sig = SIGKILL;
    procctl(P_PID, 0, PROC_PDEATHSIG_CTL, &sig);
#endif
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        child_fail(errfd, 4);
    if (o->cwd && chdir(o->cwd) < 0)
        child_fail(errfd, 1);
    /* No descriptor of ours leaks into the build (the error pipe is
     * close-on-exec and stays usable until exec). */
    for (int fd = 3; fd < 1024; fd++)
        if (fd != errfd)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    extern char **environ;
    environ = (char **)o->envp;
    execvp(o->argv[0], o->argv);
    child_fail(errfd, 2);
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* A child's output pipe holds up to 1 MiB (Linux; the default is 64 KiB): a child
 * that writes faster than the master takes its output then waits less often, and the
 * worker takes the output in fewer, larger reads (fewer wake-ups).  The kernel
 * allocates pipe pages as they are written, so a quiet child costs nothing more.
 * Best effort: above the per-user pipe quota the kernel refuses and the pipe stays
 * as it is. */
static void grow_pipe(int fd)
{
#ifdef F_SETPIPE_SZ
    (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20);
#else
    (void)fd;
#endif
}

/* pipe2(fds, O_CLOEXEC), or pipe + FD_CLOEXEC where there is no pipe2
 * (macOS).  Only the loop thread forks, so nothing can inherit the pipe
 * between the two calls. */
static int pipe_cloexec(int fds[2])
{
#if CW_HAVE_PIPE2
    return pipe2(fds, O_CLOEXEC);
#else
    if (pipe(fds) < 0)
        return -1;
    if (fcntl(fds[0], F_SETFD, FD_CLOEXEC) < 0 || fcntl(fds[1], F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        fds[0] = fds[1] = -1;
        errno = e;
        return -1;
    }
    return 0;
#endif
}

/* A pseudo-terminal master, close-on-exec, and its slave's name. */
static int open_pty_master(char *slave, size_t slavelen)
{
#if defined(__linux__) || defined(__FreeBSD__)
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
#else
    /* POSIX allows only O_RDWR and O_NOCTTY here (macOS refuses more) */
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m >= 0 && fcntl(m, F_SETFD, FD_CLOEXEC) < 0) {
        close(m);
        m = -1;
    }
#endif
    if (m < 0)
        return -1;
    if (grantpt(m) < 0 || unlockpt(m) < 0)
        goto fail;
#if CW_HAVE_PTSNAME_R
    if (ptsname_r(m, slave, slavelen) != 0)
        goto fail;
#else
    /* ptsname's static buffer is safe here: only the loop thread uses it */
    const char *name = ptsname(m);
    if (name == NULL || strlen(name) >= slavelen) {
        if (name != NULL)
            errno = ENAMETOOLONG;
        goto fail;
    }
    strcpy(slave, name);
#endif
    return m;
fail:;
    int e = errno;
    close(m);
    errno = e;
    return -1;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int cw_proc_spawn(cw_proc_t *p, const cw_proc_options_t *o, char *err, size_t errlen)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, er[2] = {-1, -1}, ep[2] = {-1, -1};
    int master = -1, devnull = -1;
    char slave[128];
    int rc = 0;

    if (pipe_cloexec(ep) < 0)
        goto sys_fail;
    if (o->use_pty) {
        master = open_pty_master(slave, sizeof slave);
        if (master < 0)
            goto sys_fail;
        /* open the slave once in the parent to set a sane window size */
        int s = open(slave, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (s >= 0) {
            struct winsize ws = {.ws_row = 24, .ws_col = 80};
            ioctl(s, TIOCSWINSZ, &ws);
            close(s);
        }
    } else {
        if (pipe_cloexec(out) < 0 || pipe_cloexec(er) < 0)
            goto sys_fail;
        grow_pipe(out[0]);
        grow_pipe(er[0]);
        if (o->want_stdin) {
            if (pipe_cloexec(in) < 0)
                goto sys_fail;
        } else {
            devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (devnull < 0)
                goto sys_fail;
        }
    }

    pid_t pid = fork();
    if (pid < 0)
        goto sys_fail;
    if (pid == 0) {
        if (o->use_pty)
            child_setup(o, ep[1], -1, -1, -1, slave);
        else
            child_setup(o, ep[1], o->want_stdin ? in[0] : devnull, out[1], er[1], NULL);
    }
    /* parent */
    if (!o->use_pty)
        setpgid(pid, pid); /* no race with an early killpg */
    close_fd(&ep[1]);
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&er[1]);
    close_fd(&devnull);

    child_error_t ce;
    ssize_t n;
    do
        n = read(ep[0], &ce, sizeof ce);
    while (n < 0 && errno == EINTR);
    close_fd(&ep[0]);
    if (n == (ssize_t)sizeof ce) {
        /* the child failed before exec and exits 127: reap it now */
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        switch (ce.stage) {
        case 1:
            snprintf(err, errlen, "cannot change to directory '%s': %s", o->cwd, strerror(ce.err));
            break;
        case 2:
            snprintf(err, errlen, "cannot run '%s': %s", o->argv[0], strerror(ce.err));
            break;
        default:
            snprintf(err, errlen, "cannot set up the child process: %s", strerror(ce.err));
            break;
        }
        close_fd(&master);
        close_fd(&in[1]);
        close_fd(&out[0]);
        close_fd(&er[0]);
        return -ce.err;
    }

    p->pid = pid;
    p->pgid = pid;
    p->exited = false;
    if (o->use_pty) {
        p->fd_out = master;
        p->fd_in = -1;
        p->fd_err = -1;
        set_nonblock(master);
    } else {
        p->fd_out = out[0];
        p->fd_err = er[0];
        p->fd_in = in[1];
        set_nonblock(out[0]);
        set_nonblock(er[0]);
        if (in[1] >= 0)
            set_nonblock(in[1]);
    }
    p->next = proc_list;
    proc_list = p;
    return 0;

sys_fail:
    rc = -errno;
    snprintf(err, errlen, "cannot start a process: %s", strerror(errno));
    close_fd(&ep[0]);
    close_fd(&ep[1]);
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&er[0]);
    close_fd(&er[1]);
    close_fd(&master);
    close_fd(&devnull);
    return rc;
}

int cw_proc_signal(cw_proc_t *p, int sig)
{
    if (p->pgid > 0 && killpg(p->pgid, sig) == 0)
        return 0;
    if (!p->exited && p->pid > 0 && kill(p->pid, sig) == 0)
        return 0;
    return -ESRCH;
}

bool cw_proc_group_alive(const cw_proc_t *p)
{
    if (p->pgid > 0 && killpg(p->pgid, 0) == 0)
        return true;
    return !p->exited;
}

void cw_proc_kill_all(int sig)
{
    for (cw_proc_t *p = proc_list; p; p = p->next)
        cw_proc_signal(p, sig);
}

void cw_proc_release(cw_proc_t *p)
{
    if (p == NULL)
        return;
    if (p->exited || p->pid <= 0) {
        free(p);
        return;
    }
    /* still in proc_list: freed when reaped */
    p->released = true;
    p->on_exit = NULL;
}

unsigned cw_proc_live_count(void)
{
    unsigned n = 0;
    for (cw_proc_t *p = proc_list; p; p = p->next)
        n++;
    return n;
}
