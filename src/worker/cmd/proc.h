/* Child processes: spawn in a new process group (or a new session with a
 * controlling PTY), signal the whole group, reap on SIGCHLD.
 *
 * We fork/exec ourselves instead of using uv_spawn because the child needs a
 * controlling terminal for usePTY (TIOCSCTTY), every signal disposition reset
 * (we ignore SIGPIPE; builds must not inherit that), and its parent-death
 * signal set.  SIGCHLD is watched with a uv_signal_t and every exited child
 * is reaped with waitpid(-1, WNOHANG).
 *
 * Ownership: the caller allocates a cw_proc_t with cw_proc_new and gives it
 * to cw_proc_spawn.  After the exit callback the caller frees it with
 * cw_proc_release.  A caller that gives up on a child that has not exited
 * calls cw_proc_release too: the registry keeps the object until the child
 * is reaped, then frees it.
 */
#ifndef CW_PROC_H
#define CW_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct cw_proc cw_proc_t;

/* The child ended: exit_status is its exit code (when term_signal is 0), or
 * term_signal the signal that ended it. */
typedef void (*cw_proc_exit_cb)(cw_proc_t *p, int exit_status, int term_signal);

struct cw_proc {
    pid_t pid;
    pid_t pgid;
    bool exited;
    int exit_status;
    int term_signal;
    cw_proc_exit_cb on_exit;
    void *data;
    /* Parent ends, non-blocking, close-on-exec; -1 when absent.  With a PTY,
     * fd_out is the PTY master (stdout and stderr together) and fd_err is
     * -1.  The caller owns and closes them. */
    int fd_in;
    int fd_out;
    int fd_err;
    bool released;
    cw_proc_t *next;
};

typedef struct cw_proc_options {
    char *const *argv; /* argv[0] is looked up in the child's PATH */
    char *const *envp;
    const char *cwd;
    bool use_pty;
    bool want_stdin; /* a pipe for stdin; otherwise /dev/null (no PTY) */
} cw_proc_options_t;

/* Install the SIGCHLD watcher. */
int cw_proc_init(uv_loop_t *loop);
/* Close the SIGCHLD watcher (at exit). */
void cw_proc_shutdown(void);

cw_proc_t *cw_proc_new(cw_proc_exit_cb cb, void *data);
/* Start the child.  Returns 0, or a negative errno with what failed in err
 * ("cannot run 'make': No such file or directory", "cannot change to
 * directory ...").  On failure nothing is left running and no fd is open. */
int cw_proc_spawn(cw_proc_t *p, const cw_proc_options_t *o, char *err, size_t errlen);
/* Signal the child's process group (falling back to the child alone).
 * Returns 0, or -ESRCH when nothing was there to signal. */
int cw_proc_signal(cw_proc_t *p, int sig);
/* True while some process of the group still exists. */
bool cw_proc_group_alive(const cw_proc_t *p);
/* Signal every process group we started that may still be alive. */
void cw_proc_kill_all(int sig);
/* The caller is done with p (see ownership above). */
void cw_proc_release(cw_proc_t *p);
/* Number of children started and not yet reaped. */
unsigned cw_proc_live_count(void);

#endif
