/* Helpers of the option code: messages, numbers, host names, paths, small
 * files and the command-line scanner (see optutil.h). */
#include "optutil.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_SIZE (1u << 20) /* config files, tacs and password files are small */

int cw_opt_oom(char *err, size_t errlen)
{
    cw_opt_fail(err, errlen, "out of memory");
    return -ENOMEM;
}

char *cw_opt_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

void cw_opt_show(char *out, size_t cap, const char *v)
{
    size_t n = 0;
    for (; v && *v && n + 4 < cap && n < 100; v++)
        out[n++] = ((unsigned char)*v < 0x20 || *v == 0x7f) ? '?' : *v;
    if (v && *v && n + 4 < cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
}

bool cw_opt_is_none(const char *s)
{
    return s[0] == '\0' || strcasecmp(s, "none") == 0 || strcasecmp(s, "off") == 0;
}

const char *cw_opt_getenv(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0')
            return *e + n + 1;
    return NULL;
}

int cw_opt_parse_u64(const char *s, uint64_t *out)
{
    if (*s == '\0')
        return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

bool cw_opt_valid_host(const char *h, bool v6)
{
    if (*h == '\0' || strlen(h) > 253)
        return false;
    for (const char *p = h; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (isalnum(c) || c == '.' || c == '-' || c == '_')
            continue;
        if (v6 && (c == ':' || c == '%'))
            continue;
        return false;
    }
    return true;
}

int cw_opt_split_hostport(const char *s, size_t len, char **host, int *port, bool *had_port)
{
    char *tmp = strndup(s, len);
    if (tmp == NULL)
        return -1;
    char *h = tmp, *p = NULL;
    bool v6 = false;
    if (tmp[0] == '[') {
        char *end = strchr(tmp, ']');
        if (end == NULL)
            goto bad;
        *end = '\0';
        h = tmp + 1;
        v6 = true;
        if (end[1] == ':')
            p = end + 2;
        else if (end[1] != '\0')
            goto bad;
    } else {
        char *colon = strrchr(tmp, ':');
        if (colon) {
            if (strchr(tmp, ':') != colon)
                goto bad; /* a bare IPv6 address needs brackets */
            *colon = '\0';
            p = colon + 1;
        }
    }
    if (!cw_opt_valid_host(h, v6) || (v6 && strchr(h, ':') == NULL))
        goto bad;
    if (had_port)
        *had_port = p != NULL;
    if (p) {
        uint64_t v;
        if (cw_opt_parse_u64(p, &v) < 0 || v < 1 || v > 65535)
            goto bad;
        *port = (int)v;
    }
    *host = strdup(h);
    free(tmp);
    return *host ? 0 : -1;
bad:
    free(tmp);
    return -1;
}

char *cw_opt_join_hostport(const char *host, long long port)
{
    return strchr(host, ':') ? cw_opt_asprintf("[%s]:%lld", host, port)
                             : cw_opt_asprintf("%s:%lld", host, port);
}

/* An absolute rel or a file in the current directory leaves rel as it is. */
char *cw_opt_relative_to(const char *file, const char *rel)
{
    const char *slash = strrchr(file, '/');
    if (rel[0] == '/' || rel[0] == '\0' || slash == NULL)
        return strdup(rel);
    if (slash == file)
        return cw_opt_asprintf("/%s", rel);
    return cw_opt_asprintf("%.*s/%s", (int)(slash - file), file, rel);
}

char *cw_opt_absolute(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return NULL;
    if (strcmp(path, ".") == 0)
        return strdup(cwd);
    return cw_opt_asprintf("%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, path);
}

int cw_opt_parent_dir(const char *path, char **parent, int *errnum)
{
    char *p = strdup(path);
    if (p == NULL)
        return -ENOMEM;
    char *slash = strrchr(p, '/');
    if (slash == p)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    *parent = p;
    struct stat st;
    if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
        *errnum = errno;
        return CW_OPT_NO_PARENT;
    }
    if (access(p, W_OK | X_OK) < 0) {
        *errnum = errno;
        return CW_OPT_PARENT_DENIED;
    }
    return 0;
}

/* O_NONBLOCK: a FIFO (or a device) given by mistake is refused by the fstat
 * below instead of blocking start-up until a writer appears. */
int cw_opt_read_file(const char *path, const char *what, const char *where, char **text,
                     size_t *len, unsigned *mode, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return cw_opt_fail(err, errlen, "cannot read %s '%s' (%s): %s", what, path, where,
                           strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_FILE_SIZE) {
        int e = errno;
        close(fd);
        return cw_opt_fail(err, errlen, "cannot read %s '%s' (%s): %s", what, path, where,
                           !S_ISREG(st.st_mode)         ? "not a regular file"
                           : st.st_size > MAX_FILE_SIZE ? "larger than 1 MiB"
                                                        : strerror(e));
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return cw_opt_oom(err, errlen);
    }
    size_t n = 0;
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *text = buf;
    *len = n;
    *mode = st.st_mode & 07777;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The command-line scanner                                                 */
/* ------------------------------------------------------------------------ */

typedef struct scan {
    const cw_flagspec_t *specs;
    size_t nspecs;
    int argc, i;
    char **argv;
    const char *prefix;
} scan_t;

/* "--long[=value]" at argv[s->i]. */
static int scan_long(scan_t *s, const char *a, cw_flag_fn fn, void *ctx, char *err, size_t errlen)
{
    const char *nm = a + 2, *eq = strchr(nm, '=');
    size_t nl = eq ? (size_t)(eq - nm) : strlen(nm);
    char name[72];
    snprintf(name, sizeof name, "--%.*s", (int)(nl > 60 ? 60 : nl), nm);
    const cw_flagspec_t *f = NULL;
    for (size_t k = 0; k < s->nspecs && f == NULL; k++)
        if (s->specs[k].lng && strlen(s->specs[k].lng) == nl &&
            strncmp(s->specs[k].lng, nm, nl) == 0)
            f = &s->specs[k];
    if (f == NULL)
        return cw_opt_fail(err, errlen, "%sunknown option '%s'", s->prefix, name);
    const char *val = eq ? eq + 1 : NULL;
    if (f->arg == CW_ARG_NONE && val)
        return cw_opt_fail(err, errlen, "%soption '%s' takes no value", s->prefix, name);
    if (f->arg == CW_ARG_REQUIRED && val == NULL) {
        if (s->i + 1 >= s->argc)
            return cw_opt_fail(err, errlen, "%soption '%s' needs a value", s->prefix, name);
        val = s->argv[++s->i];
    }
    return fn(ctx, f, name, val, err, errlen);
}

/* A cluster of short flags "-fq", "-k600", "-k 600" at argv[s->i]. */
static int scan_short(scan_t *s, const char *a, cw_flag_fn fn, void *ctx, char *err, size_t errlen)
{
    for (const char *sp = a + 1; *sp;) {
        char name[3] = {'-', *sp++, '\0'};
        const cw_flagspec_t *f = NULL;
        for (size_t k = 0; k < s->nspecs && f == NULL; k++)
            if (s->specs[k].shrt && s->specs[k].shrt == name[1])
                f = &s->specs[k];
        if (f == NULL)
            return cw_opt_fail(err, errlen, "%sunknown option '%s'", s->prefix, name);
        const char *val = NULL;
        if (f->arg == CW_ARG_REQUIRED) {
            if (*sp) {
                val = sp; /* -k600 */
                sp += strlen(sp);
            } else if (s->i + 1 < s->argc) {
                val = s->argv[++s->i];
            } else {
                return cw_opt_fail(err, errlen, "%soption '%s' needs a value", s->prefix, name);
            }
        }
        int rc = fn(ctx, f, name, val, err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int cw_opt_scan(const cw_flagspec_t *specs, size_t nspecs, bool dashdash, int argc, char **argv,
                cw_flag_fn fn, void *ctx, const char *prefix, char *err, size_t errlen)
{
    scan_t s = {specs, nspecs, argc, 0, argv, prefix};
    bool only_pos = false;
    for (; s.i < argc; s.i++) {
        const char *a = argv[s.i];
        int rc;
        if (dashdash && !only_pos && strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (only_pos || a[0] != '-' || a[1] == '\0' || strcmp(a, "--") == 0)
            rc = fn(ctx, NULL, NULL, a, err, errlen);
        else if (a[1] == '-')
            rc = scan_long(&s, a, fn, ctx, err, errlen);
        else
            rc = scan_short(&s, a, fn, ctx, err, errlen);
        if (rc < 0)
            return rc;
        if (rc > 0)
            break;
    }
    return 0;
}
