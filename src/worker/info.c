/* The worker info (info.h): info/ files, os_* from /etc/os-release,
 * environ, system, basedir, numcpus, version, delete_leftover_dirs.  The
 * commands list is the link's to add (each protocol names them its way). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "info.h"

#include <uv.h>

#include "cw_config.h"
#include "cworker/utf8.h"

#define INFO_MAX_FILES     64
#define INFO_MAX_FILE_SIZE 65536

/* Read a small text file whole (at most max bytes). */
static int read_small_file(int dirfd, const char *name, cw_buf_t *out, size_t max)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    uint8_t buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t take = (size_t)n;
        if (out->len + take > max)
            take = max - out->len;
        cw_buf_append(out, buf, take);
        if (out->len >= max)
            break;
    }
    close(fd);
    return 0;
}

typedef struct kv_list {
    char *key[INFO_MAX_FILES + 64];
    cw_buf_t val[INFO_MAX_FILES + 64];
    size_t n;
} kv_list_t;

/* BASEDIR/info/<name> -> whole content, like the stock worker. */
static void collect_info_files(const char *basedir, kv_list_t *l)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/info", basedir);
    DIR *d = opendir(path);
    if (d == NULL)
        return;
    struct dirent *de;
    size_t files = 0;
    while ((de = readdir(d)) != NULL && files < INFO_MAX_FILES) {
        if (de->d_name[0] == '.')
            continue;
        cw_buf_t v = CW_BUF_INIT;
        if (read_small_file(dirfd(d), de->d_name, &v, INFO_MAX_FILE_SIZE) == 0) {
            l->key[l->n] = strdup(de->d_name);
            l->val[l->n] = v;
            l->n++;
            files++;
        } else {
            cw_buf_free(&v);
        }
    }
    closedir(d);
}

/* /etc/os-release KEY=VALUE -> os_<key>, quotes removed, empty skipped. */
static void collect_os_release(kv_list_t *l)
{
    FILE *f = fopen("/etc/os-release", "re");
    if (f == NULL)
        f = fopen("/usr/lib/os-release", "re");
    if (f == NULL)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f) && l->n < INFO_MAX_FILES + 60) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL || eq == line || line[0] == '#')
            continue;
        *eq = '\0';
        char *v = eq + 1;
        size_t vl = strlen(v);
        if (vl >= 2 && (v[0] == '"' || v[0] == '\'') && v[vl - 1] == v[0]) {
            v[vl - 1] = '\0';
            v++;
        }
        if (*v == '\0')
            continue;
        char key[1100];
        snprintf(key, sizeof key, "os_%s", line);
        for (char *p = key; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
        cw_buf_t val = CW_BUF_INIT;
        cw_buf_append_str(&val, v);
        l->key[l->n] = strdup(key);
        l->val[l->n] = val;
        l->n++;
    }
    fclose(f);
}

/* key=value pairs as valid UTF-8 (file contents and the environment may
 * hold anything). */
static int kv_set(cw_info_kv_t *kv, const char *key, size_t klen, const uint8_t *v, size_t vlen)
{
    cw_buf_t k = CW_BUF_INIT;
    memset(kv, 0, sizeof *kv);
    if (cw_utf8_repair((const uint8_t *)key, klen, &k) < 0 || cw_buf_append(&k, "", 1) < 0 ||
        cw_utf8_repair(v, vlen, &kv->val) < 0) {
        cw_buf_free(&k);
        cw_buf_free(&kv->val);
        return -ENOMEM;
    }
    kv->key = (char *)cw_buf_steal(&k, NULL);
    return 0;
}

static void kv_free(cw_info_kv_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].key);
        cw_buf_free(&v[i].val);
    }
    free(v);
}

void cw_info_free(cw_info_t *info)
{
    kv_free(info->files, info->nfiles);
    kv_free(info->env, info->nenv);
    memset(info, 0, sizeof *info);
}

int cw_info_collect(cw_info_t *info, const cw_info_src_t *src)
{
    memset(info, 0, sizeof *info);
    kv_list_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    collect_info_files(src->basedir, l);
    collect_os_release(l);
    int rc = 0;
    size_t nenv = 0;
    for (char **e = src->environ; *e; e++)
        if (strchr(*e, '='))
            nenv++;
    info->files = calloc(l->n ? l->n : 1, sizeof *info->files);
    info->env = calloc(nenv ? nenv : 1, sizeof *info->env);
    if (info->files == NULL || info->env == NULL)
        rc = -ENOMEM;
    for (size_t i = 0; i < l->n; i++) {
        if (rc == 0 && l->key[i] != NULL &&
            kv_set(&info->files[info->nfiles], l->key[i], strlen(l->key[i]), l->val[i].data,
                   l->val[i].len) == 0)
            info->nfiles++;
        else
            rc = -ENOMEM;
        free(l->key[i]);
        cw_buf_free(&l->val[i]);
    }
    free(l);
    for (char **e = src->environ; rc == 0 && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL)
            continue;
        if (kv_set(&info->env[info->nenv], *e, (size_t)(eq - *e), (const uint8_t *)eq + 1,
                   strlen(eq + 1)) < 0)
            rc = -ENOMEM;
        else
            info->nenv++;
    }
    if (rc < 0) {
        cw_info_free(info);
        return rc;
    }
    info->system = "posix";
    info->basedir = src->basedir;
    info->version = "cworker " CW_VERSION_STRING;
    /* --numcpus, else the CPUs this process may run on (the stock worker's
     * multiprocessing.cpu_count() counts every online CPU) */
    info->numcpus = src->numcpus ? src->numcpus : uv_available_parallelism();
    info->delete_leftover_dirs = src->delete_leftover_dirs;
    return 0;
}
