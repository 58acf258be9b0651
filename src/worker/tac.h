/* The pieces of the buildbot.tac reader (tac.c) that `cworker
 * create-worker` reuses for the stock script's option values.  The tac
 * import itself is cw_opts_parse_tac() in config.h. */
#ifndef CW_WORKER_TAC_H
#define CW_WORKER_TAC_H

#include <stdbool.h>

/* Parse a Python int literal (decimal, 0o, 0x, 0b, underscores, and the
 * Python 2 leading-zero octal, which sets *legacy).  Advances *ps; 0 or -1. */
int py_int(const char **ps, const char *end, long long *out, bool *legacy);
/* Parse a Twisted client endpoint string ("tcp:host=H:port=P",
 * "tcp:H:P", "tls:..."); *host is a heap copy, *tls for "tls:".  0 or -1. */
int twisted_endpoint(const char *s, char **host, int *port, bool *tls);
/* "host:port", bracketing IPv6 addresses; heap string or NULL. */
char *join_hostport(const char *host, long long port);

#endif
