/* get_worker_info: the map the master stores as the worker's properties
 * (reference §5): info/ files, os_* from /etc/os-release, environ, system,
 * basedir, numcpus, version, worker_commands, delete_leftover_dirs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cworker/utf8.h"
#include "cmd.h"
#include "cw_config.h"
#include "worker.h"

#define INFO_MAX_FILES 64
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

/* Pack a key and a value that may not be UTF-8 (file contents, env). */
static void pack_kv_repaired(msgpack_packer *pk, const char *key, size_t klen, const uint8_t *v,
                             size_t vlen)
{
    cw_buf_t k = CW_BUF_INIT, val = CW_BUF_INIT;
    cw_utf8_repair((const uint8_t *)key, klen, &k);
    cw_utf8_repair(v, vlen, &val);
    cw_pack_strn(pk, (const char *)k.data, k.len);
    cw_pack_strn(pk, (const char *)val.data, val.len);
    cw_buf_free(&k);
    cw_buf_free(&val);
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

int cw_worker_pack_info(const cw_worker_t *w, msgpack_packer *pk)
{
    kv_list_t *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    collect_info_files(w->cfg->basedir, l);
    collect_os_release(l);

    size_t ncmd_names = 0;
    for (int k = 0; k < CW_CMD__COUNT; k++)
        if (cw_cmd_supported((cw_cmd_kind_t)k))
            for (const char *const *n = cw_cmd_names((cw_cmd_kind_t)k); *n; n++)
                ncmd_names++;
    size_t nenv = 0;
    for (char **e = w->environ; *e; e++)
        if (strchr(*e, '='))
            nenv++;

    /* fixed keys; any of them also present as an info/ file is shadowed by
     * the fixed value (packed later in the map: last one wins for the master) */
    msgpack_pack_map(pk, l->n + 7);
    for (size_t i = 0; i < l->n; i++) {
        pack_kv_repaired(pk, l->key[i], strlen(l->key[i]), l->val[i].data, l->val[i].len);
        free(l->key[i]);
        cw_buf_free(&l->val[i]);
    }
    free(l);

    cw_pack_str(pk, "environ");
    msgpack_pack_map(pk, nenv);
    for (char **e = w->environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq)
            pack_kv_repaired(pk, *e, (size_t)(eq - *e), (const uint8_t *)eq + 1, strlen(eq + 1));
    }
    cw_pack_str(pk, "system");
    cw_pack_str(pk, "posix");
    cw_pack_str(pk, "basedir");
    cw_pack_str(pk, w->cfg->basedir);
    cw_pack_str(pk, "numcpus");
    /* --numcpus, else the CPUs this process may run on (the stock worker's
     * multiprocessing.cpu_count() counts every online CPU) */
    msgpack_pack_uint32(pk, w->cfg->numcpus ? w->cfg->numcpus : uv_available_parallelism());
    cw_pack_str(pk, "version");
    cw_pack_str(pk, "cworker " CW_VERSION_STRING);
    cw_pack_str(pk, "worker_commands");
    msgpack_pack_map(pk, ncmd_names);
    for (int k = 0; k < CW_CMD__COUNT; k++) {
        if (!cw_cmd_supported((cw_cmd_kind_t)k))
            continue;
        for (const char *const *n = cw_cmd_names((cw_cmd_kind_t)k); *n; n++) {
            cw_pack_str(pk, *n);
            cw_pack_str(pk, CW_COMMAND_VERSION);
        }
    }
    cw_pack_str(pk, "delete_leftover_dirs");
    if (w->cfg->delete_leftover_dirs)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    return 0;
}
