/* The master end of the protocol (see master.h). */
#include "master.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cworker/output.h"
#include "log.h"

static void mw_detach(cw_mworker_t *w, const char *why);
static void mw_start_attach(cw_mworker_t *w);

void cw_master_options_default(cw_master_options_t *o)
{
    memset(o, 0, sizeof *o);
    o->keepalive_ms = 3600 * 1000;
    cw_conn_options_default(&o->conn);
    o->conn.handshake_timeout = 5000; /* what the stock master allows */
    o->dup_timeout_ms = 10000;
    o->backlog = 4096;
    o->faults.drop_after = -1;
    o->faults.stall_after = -1;
}

/* ---- fault specs ---- */

static int hex_decode(const char *hex, uint8_t **out, size_t *outlen)
{
    size_t n = strlen(hex);
    if (n % 2)
        return -EINVAL;
    uint8_t *p = malloc(n / 2 + 1);
    if (p == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(p);
            return -EINVAL;
        }
        p[i] = (uint8_t)v;
    }
    *out = p;
    *outlen = n / 2;
    return 0;
}

int cw_master_faults_parse(cw_master_faults_t *f, const char *spec)
{
    char *copy = strdup(spec);
    if (copy == NULL)
        return -ENOMEM;
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        const char *val = eq ? eq + 1 : "";
        if (eq)
            *eq = '\0';
        if (strcmp(tok, "drop_after") == 0)
            f->drop_after = strtol(val, NULL, 10);
        else if (strcmp(tok, "stall_after") == 0)
            f->stall_after = strtol(val, NULL, 10);
        else if (strcmp(tok, "stall_ms") == 0)
            f->stall_ms = strtoull(val, NULL, 10);
        else if (strcmp(tok, "exception_op") == 0)
            f->exception_op = strdup(val);
        else if (strcmp(tok, "send_hex") == 0)
            rc = hex_decode(val, &f->send_msg, &f->send_msg_len);
        else if (strcmp(tok, "raw_hex") == 0)
            rc = hex_decode(val, &f->send_raw, &f->send_raw_len);
        else if (strcmp(tok, "oversize") == 0)
            f->oversize = cw_clamp_size(strtoll(val, NULL, 10), SIZE_MAX);
        else if (strcmp(tok, "skip_attach") == 0)
            f->skip_attach = true;
        else
            rc = -EINVAL;
    }
    free(copy);
    return rc;
}

void cw_master_faults_free(cw_master_faults_t *f)
{
    free(f->exception_op);
    free(f->send_msg);
    free(f->send_raw);
    f->exception_op = NULL;
    f->send_msg = f->send_raw = NULL;
}

/* ---- accounts ---- */

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

/* FNV-1a of a name: the slot where its account is looked for first. */
static size_t name_hash(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 32));
}

/* The index of the account called name, or SIZE_MAX. */
static size_t account_find(const cw_master_t *m, const char *name, size_t len)
{
    if (m->hash_cap == 0)
        return SIZE_MAX;
    for (size_t i = name_hash(name, len) & (m->hash_cap - 1);; i = (i + 1) & (m->hash_cap - 1)) {
        uint32_t slot = m->account_hash[i];
        if (slot == 0)
            return SIZE_MAX;
        const cw_master_account_t *a = &m->accounts[slot - 1];
        if (a->name_len == len && memcmp(a->name, name, len) == 0)
            return slot - 1;
    }
}

/* Put account i into the table (which has room). */
static void account_hash_put(cw_master_t *m, size_t i)
{
    const cw_master_account_t *a = &m->accounts[i];
    size_t j = name_hash(a->name, a->name_len) & (m->hash_cap - 1);
    while (m->account_hash[j] != 0)
        j = (j + 1) & (m->hash_cap - 1);
    m->account_hash[j] = (uint32_t)(i + 1);
}

int cw_master_add_account(cw_master_t *m, const char *name, const char *password)
{
    size_t len = strlen(name);
    size_t found = account_find(m, name, len);
    if (found != SIZE_MAX) {
        /* the same name again: the last password counts */
        sha256(password, strlen(password), m->accounts[found].pw_digest);
        return 0;
    }
    if (m->naccounts >= UINT32_MAX - 1)
        return -ENOMEM;
    if (2 * (m->naccounts + 1) >= m->hash_cap) {
        size_t cap = m->hash_cap ? 2 * m->hash_cap : 64;
        uint32_t *t = calloc(cap, sizeof *t);
        if (t == NULL)
            return -ENOMEM;
        free(m->account_hash);
        m->account_hash = t;
        m->hash_cap = cap;
        for (size_t i = 0; i < m->naccounts; i++)
            account_hash_put(m, i);
    }
    cw_master_account_t *a = realloc(m->accounts, (m->naccounts + 1) * sizeof *a);
    if (a == NULL)
        return -ENOMEM;
    m->accounts = a;
    a = &m->accounts[m->naccounts];
    memset(a, 0, sizeof *a);
    a->name = strdup(name);
    if (a->name == NULL)
        return -ENOMEM;
    a->name_len = len;
    sha256(password, strlen(password), a->pw_digest);
    account_hash_put(m, m->naccounts++);
    return 0;
}

/* The password check: the name is looked up in the hash table (its probes
 * depend on the table, not on the password), then the password's digest is
 * compared in constant time with the account's, or with a dummy digest when
 * there is no such account, so neither the password nor the account's
 * existence shows in the timing.  Returns the account's index or SIZE_MAX. */
static size_t master_check_password(cw_master_t *m, const char *user, size_t ulen, const char *pw,
                                    size_t pwlen)
{
    static const uint8_t dummy[32];
    uint8_t d[32];
    sha256(pw, pwlen, d);
    size_t i = account_find(m, user, ulen);
    const uint8_t *want = i != SIZE_MAX ? m->accounts[i].pw_digest : dummy;
    bool pw_ok = CRYPTO_memcmp(want, d, 32) == 0;
    return i != SIZE_MAX && pw_ok ? i : SIZE_MAX;
}

cw_mworker_t *cw_master_find(cw_master_t *m, const char *name)
{
    size_t i = account_find(m, name, strlen(name));
    if (i == SIZE_MAX)
        return NULL;
    cw_mworker_t *w = m->accounts[i].active;
    return w && w->state == CW_MW_ATTACHED ? w : NULL;
}

/* ---- remotes ---- */

static void remote_unlink(cw_remote_t *r)
{
    cw_mworker_t *w = r->w;
    if (r->prev)
        r->prev->next = r->next;
    else
        w->remotes = r->next;
    if (r->next)
        r->next->prev = r->prev;
}

/* Report the end of a remote and free it. */
static void remote_finish(cw_remote_t *r, const char *failure, bool lost)
{
    if (r->done)
        return;
    r->done = true;
    remote_unlink(r);
    cw_conn_forget(&r->w->conn, r);
    if (r->cb->on_complete)
        r->cb->on_complete(r, r->has_rc, r->rc, failure, lost);
    free(r);
}

static cw_remote_t *remote_find(cw_mworker_t *w, cw_str_t id)
{
    for (cw_remote_t *r = w->remotes; r; r = r->next)
        if (cw_str_eq(id, r->id))
            return r;
    return NULL;
}

static void start_command_answered(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_remote_t *r = ctx;
    if (resp == NULL)
        return; /* the link is gone: mw_detach finishes it */
    if (resp->u.response.is_exception) {
        cw_str_t s = {"start_command refused", 21};
        cw_obj_str(&resp->u.response.result, &s);
        char *text = cw_str_dup(s);
        remote_finish(r, text ? text : "start_command refused", false);
        free(text);
        return;
    }
    r->started = true;
}

cw_remote_t *cw_remote_start(cw_mworker_t *w, const char *command_name, const uint8_t *packed_args,
                             size_t args_len, const cw_remote_callbacks_t *cb, void *data)
{
    if (w->state != CW_MW_ATTACHED)
        return NULL;
    cw_remote_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->w = w;
    r->cb = cb;
    r->data = data;
    /* ids are unique for the life of the master, like the stock master's */
    snprintf(r->id, sizeof r->id, "%llu", (unsigned long long)w->m->next_command_id++);
    /* registered before sending: updates may precede the answer */
    r->next = w->remotes;
    if (w->remotes)
        w->remotes->prev = r;
    w->remotes = r;

    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&w->conn);
    if (cw_pack_start_command_begin(&pk, r->id, command_name, NULL) < 0 ||
        cw_buf_append(&b, packed_args, args_len) < 0 || cw_pack_request_end(&pk, seq) < 0 ||
        cw_conn_request(&w->conn, seq, &b, start_command_answered, r) < 0) {
        cw_buf_free(&b);
        remote_unlink(r);
        free(r);
        return NULL;
    }
    cw_debug("worker %s: command %s %s started", w->name, r->id, command_name);
    return r;
}

static void ignore_answer(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
}

int cw_remote_interrupt(cw_remote_t *r, const char *why)
{
    cw_conn_t *c = &r->w->conn;
    if (!cw_conn_is_open(c))
        return CW_ECLOSED;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(c);
    if (cw_pack_interrupt_command(&pk, seq, r->id, why) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    return cw_conn_request(c, seq, &b, ignore_answer, NULL);
}

int cw_remote_respond(cw_remote_t *r, int64_t seq)
{
    return cw_conn_respond_nil(&r->w->conn, seq);
}

int cw_remote_respond_error(cw_remote_t *r, int64_t seq, const char *text)
{
    return cw_conn_respond_error(&r->w->conn, seq, text);
}

int cw_remote_respond_data(cw_remote_t *r, int64_t seq, const uint8_t *data, size_t len)
{
    cw_buf_t b = CW_BUF_INIT;
    if (cw_buf_reserve(&b, len + 64) < 0)
        return -ENOMEM;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    if (cw_pack_response_begin(&pk, seq) < 0 || cw_pack_bin(&pk, data, len) < 0) {
        cw_buf_free(&b);
        return -ENOMEM;
    }
    return cw_conn_send(&r->w->conn, &b);
}

uint8_t *cw_remote_take_message(cw_remote_t *r, const uint8_t *data, size_t len)
{
    return cw_conn_take_message(&r->w->conn, data, len);
}

int cw_remote_send_packed(cw_remote_t *r, cw_buf_t *msg)
{
    return cw_conn_send(&r->w->conn, msg);
}

/* ---- worker requests ---- */

static void mw_on_update(cw_mworker_t *w, const cw_msg_t *m, cw_remote_t *r)
{
    const msgpack_object *args = &m->u.update.args;
    for (uint32_t i = 0; i < args->via.array.size; i++) {
        const msgpack_object *pair = &args->via.array.ptr[i];
        cw_str_t key;
        cw_obj_str(&pair->via.array.ptr[0], &key);
        const msgpack_object *val = &pair->via.array.ptr[1];
        if (cw_str_eq(key, "rc") && !r->has_rc) {
            int64_t rc;
            if (cw_obj_int(val, &rc)) {
                r->has_rc = true;
                r->rc = rc;
            }
        }
        if (r->cb->on_update)
            r->cb->on_update(r, key, val);
        if (r->done)
            return;
    }
}

static void mw_on_request(cw_conn_t *c, const cw_msg_t *m)
{
    cw_mworker_t *w = c->data;
    cw_master_faults_t *f = &w->m->opt.faults;
    if (m->op == CW_OP_UNKNOWN) {
        cw_conn_respond_unknown(c, m);
        return;
    }
    if (w->state != CW_MW_ATTACHED) {
        cw_conn_respond_error(c, m->seq, "Worker not authenticated.");
        return;
    }
    if (f->exception_op && strcmp(f->exception_op, cw_op_name(m->op)) == 0) {
        cw_conn_respond_error(c, m->seq, "injected fault: exception");
        return;
    }
    cw_str_t id = m->u.cmd.command_id; /* first member of every worker op */
    cw_remote_t *r = remote_find(w, id);
    if (r == NULL) {
        cw_conn_respond_error(c, m->seq, "'unknown \"command_id\"'");
        return;
    }
    switch (m->op) {
    case CW_OP_UPDATE:
        cw_conn_respond_nil(c, m->seq);
        mw_on_update(w, m, r);
        break;
    case CW_OP_COMPLETE: {
        cw_conn_respond_nil(c, m->seq);
        char *failure = m->u.complete.failed ? cw_str_dup(m->u.complete.failure) : NULL;
        remote_finish(r, failure, false);
        free(failure);
        break;
    }
    default:
        if (r->cb->on_transfer)
            r->cb->on_transfer(r, m);
        else
            cw_conn_respond_error(c, m->seq, "no transfer expected for this command");
        break;
    }
}

/* ---- attach sequence ---- */

static void mw_timer_keepalive(uv_timer_t *t);

static void mw_attached(cw_mworker_t *w)
{
    w->state = CW_MW_ATTACHED;
    w->m->nattached++;
    cw_info("worker '%s' attached from %s", w->name, w->conn.peer);
    if (w->m->opt.keepalive_ms)
        uv_timer_start(&w->timer, mw_timer_keepalive, w->m->opt.keepalive_ms,
                       w->m->opt.keepalive_ms);
    cw_master_faults_t *f = &w->m->opt.faults;
    if (f->send_raw)
        cw_conn_send_raw(&w->conn, f->send_raw, f->send_raw_len);
    if (f->send_msg) {
        cw_buf_t b = CW_BUF_INIT;
        cw_buf_append(&b, f->send_msg, f->send_msg_len);
        cw_conn_send(&w->conn, &b);
    }
    if (f->oversize) {
        cw_buf_t b = CW_BUF_INIT;
        if (cw_buf_reserve(&b, f->oversize) == 0) {
            memset(b.data, 0xc0, f->oversize);
            b.len = f->oversize;
            cw_conn_send(&w->conn, &b);
        }
    }
    if (w->m->cb->on_attach)
        w->m->cb->on_attach(w->m, w);
}

static void settings_answered(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_mworker_t *w = ctx;
    if (resp == NULL)
        return;
    if (resp->u.response.is_exception)
        cw_warn("worker '%s' refused set_worker_settings", w->name);
    mw_attached(w);
}

static void info_answered(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_mworker_t *w = ctx;
    if (resp == NULL)
        return;
    if (resp->u.response.is_exception || resp->u.response.result.type != MSGPACK_OBJECT_MAP) {
        cw_conn_close(c, CW_EPROTO, CW_WS_CLOSE_POLICY, "get_worker_info failed");
        return;
    }
    /* keep a private copy: the message's storage is reused */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_object(&pk, resp->u.response.result);
    /* the packer's buffer starts at 8 KiB: keep only what it holds */
    w->info_buf = realloc(sb.data, sb.size ? sb.size : 1);
    if (w->info_buf == NULL)
        w->info_buf = (uint8_t *)sb.data;
    w->info_len = sb.size;
    w->info_zone = msgpack_zone_new(2 * w->info_len + 256);
    size_t off = 0;
    if (w->info_zone && msgpack_unpack((const char *)w->info_buf, w->info_len, &off, w->info_zone,
                                       &w->info) == MSGPACK_UNPACK_SUCCESS)
        w->has_info = true;
    const msgpack_object *bd = cw_mworker_info(w, "basedir");
    cw_str_t s;
    if (bd && cw_obj_str(bd, &s))
        w->basedir = cw_str_dup(s);

    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer p2;
    cw_pack_init(&p2, &b);
    int64_t seq = cw_conn_next_seq(c);
    cw_pack_set_worker_settings(&p2, seq, 65536, 5, 4096, CW_DEFAULT_NEWLINE_RE);
    cw_conn_request(c, seq, &b, settings_answered, w);
}

static void print_answered(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_mworker_t *w = ctx;
    if (resp == NULL)
        return;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(c);
    cw_pack_simple(&pk, seq, CW_OP_GET_WORKER_INFO);
    cw_conn_request(c, seq, &b, info_answered, w);
}

static void mw_start_attach(cw_mworker_t *w)
{
    if (w->state == CW_MW_DUP_WAIT)
        w->m->ndup_wait--;
    w->state = CW_MW_ATTACHING;
    if (w->m->accounts) /* NULL once cw_master_close ran */
        w->m->accounts[w->account].active = w;
    if (w->m->opt.faults.skip_attach) {
        w->state = CW_MW_ATTACHED;
        mw_attached(w);
        return;
    }
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&w->conn);
    cw_pack_print(&pk, seq, "attached");
    cw_conn_request(&w->conn, seq, &b, print_answered, w);
}

static void mw_timer_keepalive(uv_timer_t *t)
{
    cw_mworker_t *w = t->data;
    if (!cw_conn_is_open(&w->conn))
        return;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&w->conn);
    cw_pack_simple(&pk, seq, CW_OP_KEEPALIVE);
    cw_conn_request(&w->conn, seq, &b, ignore_answer, NULL);
}

/* ---- duplicate logins (stock behaviour, reference §4.5) ---- */

static void dup_timeout(uv_timer_t *t)
{
    cw_mworker_t *w = t->data; /* the new connection */
    cw_mworker_t *old = w->dup_of;
    w->dup_of = NULL;
    if (old) {
        cw_info("worker '%s': old connection did not answer; replacing it", w->name);
        cw_conn_close(&old->conn, CW_ETIMEOUT, 0, "replaced by a new connection");
    }
    mw_start_attach(w);
}

static void dup_ping_answered(cw_conn_t *c, void *ctx, const cw_msg_t *resp)
{
    cw_mworker_t *old = c->data;
    cw_mworker_t *w = ctx;
    (void)old;
    if (w->state != CW_MW_DUP_WAIT)
        return;
    uv_timer_stop(&w->timer);
    w->m->ndup_wait--;
    w->state = CW_MW_CONNECTING;
    if (resp == NULL) {
        /* the old one is gone: the new one goes on */
        w->dup_of = NULL;
        mw_start_attach(w);
        return;
    }
    cw_info("worker '%s': already attached; refusing the new connection", w->name);
    w->dup_of = NULL;
    cw_conn_close(&w->conn, CW_EAUTH, CW_WS_CLOSE_POLICY, "duplicate connection");
}

static void mw_on_open(cw_conn_t *c)
{
    cw_mworker_t *w = c->data;
    /* the account's attaching or attached connection (O(1), not a walk) */
    cw_mworker_t *old = w->m->accounts ? w->m->accounts[w->account].active : NULL;
    if (old == w || (old && old->state != CW_MW_ATTACHED && old->state != CW_MW_ATTACHING))
        old = NULL;
    if (old == NULL) {
        mw_start_attach(w);
        return;
    }
    w->state = CW_MW_DUP_WAIT;
    w->m->ndup_wait++;
    w->dup_of = old;
    cw_buf_t b = CW_BUF_INIT;
    msgpack_packer pk;
    cw_pack_init(&pk, &b);
    int64_t seq = cw_conn_next_seq(&old->conn);
    cw_pack_print(&pk, seq, "master got a duplicate connection");
    cw_conn_request(&old->conn, seq, &b, dup_ping_answered, w);
    uv_timer_start(&w->timer, dup_timeout, w->m->opt.dup_timeout_ms, 0);
}

static int mw_on_auth(cw_conn_t *c, const cw_http_upgrade_req_t *req)
{
    cw_mworker_t *w = c->data;
    size_t acc =
        master_check_password(w->m, req->user, req->user_len, req->password, req->password_len);
    if (acc == SIZE_MAX) {
        cw_warn("refused worker '%.*s' from %s: bad name or password",
                (int)(req->user_len > 64 ? 64 : req->user_len), req->user, c->peer);
        return 401;
    }
    w->account = acc;
    w->name = strndup(req->user, req->user_len);
    return w->name ? 0 : 503;
}

static void mw_stall_end(uv_timer_t *t)
{
    cw_mworker_t *w = t->data;
    cw_conn_pause_reading(&w->conn, false);
    if (w->state == CW_MW_ATTACHED && w->m->opt.keepalive_ms)
        uv_timer_start(&w->timer, mw_timer_keepalive, w->m->opt.keepalive_ms,
                       w->m->opt.keepalive_ms);
}

static bool mw_on_message_seen(cw_conn_t *c, const cw_msg_t *msg)
{
    cw_mworker_t *w = c->data;
    cw_master_faults_t *f = &w->m->opt.faults;
    w->msgs_seen++;
    if (f->drop_after >= 0 && w->msgs_seen > f->drop_after) {
        cw_info("fault injection: dropping the link to '%s' after %ld messages", w->name,
                f->drop_after);
        cw_conn_close(c, CW_ETIMEOUT, 0, "fault injection: link dropped");
        return false;
    }
    if (f->stall_after >= 0 && w->msgs_seen == f->stall_after + 1) {
        cw_info("fault injection: stalling '%s' for %llu ms", w->name,
                (unsigned long long)f->stall_ms);
        cw_conn_pause_reading(c, true);
        uv_timer_stop(&w->timer);
        uv_timer_start(&w->timer, mw_stall_end, f->stall_ms, 0);
    }
    return true;
}

static void mw_on_drain(cw_conn_t *c)
{
}

static void mw_timer_closed(uv_handle_t *h)
{
    cw_mworker_t *w = h->data;
    if (w->info_zone)
        msgpack_zone_free(w->info_zone);
    free(w->info_buf);
    free(w->basedir);
    free(w->name);
    free(w);
}

static void mw_on_close(cw_conn_t *c, int err, const char *why)
{
    cw_mworker_t *w = c->data;
    mw_detach(w, why);
}

static const cw_conn_callbacks_t master_conn_callbacks = {
    .on_open = mw_on_open,
    .on_request = mw_on_request,
    .on_drain = mw_on_drain,
    .on_close = mw_on_close,
    .on_auth = mw_on_auth,
    .on_message_seen = mw_on_message_seen,
};

/* The connection is gone: finish its remotes, tell the user, free. */
static void mw_detach(cw_mworker_t *w, const char *why)
{
    cw_master_t *m = w->m;
    bool was_attached = w->state == CW_MW_ATTACHED;
    if (was_attached)
        m->nattached--;
    if (w->state == CW_MW_DUP_WAIT)
        m->ndup_wait--;
    if (w->name && m->accounts && m->accounts[w->account].active == w)
        m->accounts[w->account].active = NULL;
    w->state = CW_MW_GONE;
    if (w->dup_of) {
        /* our duplicate-login ping to the older connection must not call us */
        cw_conn_forget(&w->dup_of->conn, w);
        w->dup_of = NULL;
    }
    while (w->remotes)
        remote_finish(w->remotes, why && *why ? why : "connection lost", true);
    /* a newer connection may be waiting for this one (rare: no walk
     * of every connection unless one waits) */
    for (cw_mworker_t *o = m->ndup_wait ? m->workers : NULL; o; o = o->next)
        if (o->dup_of == w) {
            o->dup_of = NULL;
            uv_timer_stop(&o->timer);
            mw_start_attach(o);
        }
    if (was_attached) {
        cw_info("worker '%s' detached: %s", w->name, why);
        if (m->cb->on_detach)
            m->cb->on_detach(m, w, why);
    } else if (w->name) {
        cw_debug("connection of '%s' closed before attaching: %s", w->name, why);
    }
    if (w->prev)
        w->prev->next = w->next;
    else
        m->workers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    m->nconns--;
    uv_close((uv_handle_t *)&w->timer, mw_timer_closed);
}

static void master_on_connection(uv_stream_t *server, int status)
{
    cw_master_t *m = server->data;
    if (status < 0) {
        cw_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    cw_mworker_t *w = calloc(1, sizeof *w);
    if (w == NULL)
        return;
    w->m = m;
    cw_conn_init(&w->conn, m->loop, CW_CONN_SERVER, &m->opt.conn, &master_conn_callbacks, w);
    uv_timer_init(m->loop, &w->timer);
    w->timer.data = w;
    w->next = m->workers;
    if (m->workers)
        m->workers->prev = w;
    m->workers = w;
    m->nconns++;
    if (uv_accept(server, (uv_stream_t *)cw_conn_tcp(&w->conn)) < 0 ||
        cw_conn_start_server(&w->conn) < 0)
        cw_conn_close(&w->conn, CW_ECLOSED, 0, "accept failed");
}

int cw_master_init(cw_master_t *m, uv_loop_t *loop, const cw_master_options_t *opt,
                   const cw_master_callbacks_t *cb, void *data)
{
    memset(m, 0, sizeof *m);
    m->loop = loop;
    if (opt)
        m->opt = *opt;
    else
        cw_master_options_default(&m->opt);
    m->cb = cb;
    m->data = data;
    return uv_tcp_init(loop, &m->server);
}

int cw_master_listen(cw_master_t *m, const char *host, int port, int *bound_port)
{
    struct sockaddr_storage ss;
    int rc;
    if (strchr(host, ':'))
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (rc < 0)
        return rc;
    m->server.data = m;
    rc = uv_tcp_bind(&m->server, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&m->server, m->opt.backlog > 0 ? m->opt.backlog : 128,
                       master_on_connection);
    if (rc < 0)
        return rc;
    m->listening = true;
    if (bound_port) {
        int len = sizeof ss;
        uv_tcp_getsockname(&m->server, (struct sockaddr *)&ss, &len);
        *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    return 0;
}

void cw_master_close(cw_master_t *m)
{
    if (!m->closing) {
        m->closing = true;
        if (!uv_is_closing((uv_handle_t *)&m->server))
            uv_close((uv_handle_t *)&m->server, NULL);
    }
    for (cw_mworker_t *w = m->workers; w; w = w->next)
        cw_conn_close(&w->conn, 0, CW_WS_CLOSE_GOING_AWAY, "master stopping");
    for (size_t i = 0; i < m->naccounts; i++)
        free(m->accounts[i].name);
    free(m->accounts);
    free(m->account_hash);
    m->accounts = NULL;
    m->account_hash = NULL;
    m->naccounts = m->hash_cap = 0;
}

const msgpack_object *cw_mworker_info(cw_mworker_t *w, const char *key)
{
    if (!w->has_info)
        return NULL;
    return cw_map_get(&w->info, key);
}

bool cw_mworker_has_command(cw_mworker_t *w, const char *command)
{
    const msgpack_object *wc = cw_mworker_info(w, "worker_commands");
    return wc && cw_map_get(wc, command) != NULL;
}
