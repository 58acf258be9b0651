/* Helpers for the loop-level tunnel tests: a stand-in master (echo, sink or
 * source) and a TCP proxy that can cut, reset, black-hole or refuse links,
 * all on one libuv loop on 127.0.0.1 with ephemeral ports. */
#ifndef CW_TEST_LOOP_UTIL_H
#define CW_TEST_LOOP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The test stream: byte `pos` of stream `salt`. */
uint8_t tl_byte(uint64_t pos, unsigned salt);
/* Check that `data` is bytes [pos, pos+len) of stream salt; returns the
 * first wrong position or UINT64_MAX. */
uint64_t tl_check(const uint8_t *data, size_t len, uint64_t pos, unsigned salt);

/* ---- the stand-in master ----------------------------------------------- */

typedef enum tm_mode {
    TM_ECHO,   /* send back what arrives; FIN after the peer's FIN */
    TM_SINK,   /* check and count what arrives (stream salt 1) */
    TM_SOURCE, /* send `source_len` bytes of stream salt 2, then FIN; count what arrives */
} tm_mode_t;

typedef struct tm_conn tm_conn_t;

typedef struct test_master {
    uv_loop_t *loop;
    uv_tcp_t server;
    int port;
    tm_mode_t mode;
    uint64_t source_len;
    bool paused; /* not reading any connection */
    tm_conn_t *conns;
    int accepted, closed; /* connections */
    int eofs;             /* EOFs (or resets) seen from the relay */
    uint64_t received;    /* bytes received, all connections */
    uint64_t bad_at;      /* first bad byte position (sink), or UINT64_MAX */
    uint64_t last_close_ms;
    size_t max_queue; /* largest write queue seen */
} test_master_t;

int tm_start(test_master_t *m, uv_loop_t *loop, tm_mode_t mode);
void tm_pause(test_master_t *m, bool pause);
void tm_stop(test_master_t *m);

/* ---- the fault proxy ------------------------------------------------------ */

typedef struct tp_pair tp_pair_t;

typedef struct test_proxy {
    uv_loop_t *loop;
    uv_tcp_t server;
    int port;
    struct sockaddr_in upstream;
    tp_pair_t *pairs;
    bool blackhole;       /* forward nothing (sockets stay open) */
    bool refuse;          /* new connections are reset at once */
    uint64_t forwarded;   /* bytes, both directions, all pairs */
    uint64_t cut_at;      /* cut every pair when `forwarded` reaches it (0: never) */
    bool cut_rst;         /* that cut resets (else FIN) */
    int cuts_left;        /* after a cut, plan the next one this many times: */
    uint64_t cut_gap_max; /* ... 1 to cut_gap_max bytes later, RST and FIN in turn */
    uint64_t seed;
    int cuts;
    int accepted;
    int open_pairs;
} test_proxy_t;

int tp_start(test_proxy_t *p, uv_loop_t *loop, int upstream_port);
/* Cut every current pair: RST (uv_tcp_close_reset) or an orderly close. */
void tp_cut(test_proxy_t *p, bool rst);
void tp_blackhole(test_proxy_t *p, bool on);
void tp_stop(test_proxy_t *p);

/* A bound 127.0.0.1 port nobody listens on. */
int tl_dead_port(void);

#endif
