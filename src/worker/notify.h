/* systemd service notification (sd_notify protocol) without libsystemd.
 *
 * Under a Type=notify unit, systemd passes NOTIFY_SOCKET (an AF_UNIX
 * datagram socket: a path, or '@' for an abstract name) and, with
 * WatchdogSec=, WATCHDOG_USEC (and WATCHDOG_PID).  cw_notify_init() reads
 * them once and removes them from the environment, so build steps neither
 * see them nor can talk to systemd in the worker's name.  Every other
 * function is a no-op returning 0 when the process was not started by
 * systemd.  Sending never blocks (a full socket drops the message, as
 * sd_notify does).  Plain C, no libuv: usable from main() and tests.
 */
#ifndef CW_WORKER_NOTIFY_H
#define CW_WORKER_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the environment
 * and unset them.  Returns 0 (also when they are absent), or -EINVAL when
 * NOTIFY_SOCKET is malformed (notifications are then off).
 * Calling it again re-reads the (now usually empty) environment. */
int cw_notify_init(void);

/* Send raw state assignments, e.g. "READY=1\nSTATUS=attached".  0 when sent
 * or when notifications are off, a negative errno when sending failed. */
int cw_notify(const char *state);
/* READY=1: start-up finished (the worker is connecting). */
int cw_notify_ready(void);
/* STATUS=<text> (printf format; line breaks become spaces), shown by
 * `systemctl status`. */
int cw_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* WATCHDOG=1: the event loop is alive. */
int cw_notify_watchdog(void);
/* STOPPING=1: shutting down (draining commands). */
int cw_notify_stopping(void);

/* How often to send WATCHDOG=1: half of WATCHDOG_USEC, in ms (at least 1);
 * 0 when no watchdog applies to this process (unset, malformed, or
 * WATCHDOG_PID names another process). */
uint64_t cw_notify_watchdog_interval_ms(void);

#endif
