/* Command kinds and names, and what every protocol's arguments share (see
 * args.h); the msgpack arguments are parsed in args_msgpack.c. */
#include "cworker/args.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names_shell[] = {"shell", NULL};
static const char *const names_mkdir[] = {"mkdir", NULL};
static const char *const names_rmdir[] = {"rmdir", NULL};
static const char *const names_cpdir[] = {"cpdir", NULL};
static const char *const names_stat[] = {"stat", NULL};
static const char *const names_glob[] = {"glob", NULL};
static const char *const names_listdir[] = {"listdir", NULL};
static const char *const names_rmfile[] = {"rmfile", NULL};
static const char *const names_upload_file[] = {"upload_file", "uploadFile", NULL};
static const char *const names_upload_dir[] = {"upload_directory", "uploadDirectory", NULL};
static const char *const names_download_file[] = {"download_file", "downloadFile", NULL};

static const char *const *const cmd_names[CW_CMD__COUNT] = {
    [CW_CMD_SHELL] = names_shell,
    [CW_CMD_MKDIR] = names_mkdir,
    [CW_CMD_RMDIR] = names_rmdir,
    [CW_CMD_CPDIR] = names_cpdir,
    [CW_CMD_STAT] = names_stat,
    [CW_CMD_GLOB] = names_glob,
    [CW_CMD_LISTDIR] = names_listdir,
    [CW_CMD_RMFILE] = names_rmfile,
    [CW_CMD_UPLOAD_FILE] = names_upload_file,
    [CW_CMD_UPLOAD_DIRECTORY] = names_upload_dir,
    [CW_CMD_DOWNLOAD_FILE] = names_download_file,
};

int cw_cmd_lookup(cw_str_t name)
{
    for (int k = 0; k < CW_CMD__COUNT; k++)
        for (const char *const *n = cmd_names[k]; *n; n++)
            if (cw_str_eq(name, *n))
                return k;
    return -1;
}

const char *const *cw_cmd_names(cw_cmd_kind_t kind)
{
    return cmd_names[kind];
}

/* Free a NULL-terminated array of heap strings. */
static void free_strv(char **v)
{
    if (v == NULL)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

char *cw_shell_quote(const char *word)
{
    static const char safe[] = "@%+=:,./-_";
    size_t n = strlen(word);
    if (n == 0)
        return strdup("\"\"");
    bool plain = true;
    for (size_t i = 0; i < n && plain; i++) {
        unsigned char c = (unsigned char)word[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(safe, c)))
            plain = false;
    }
    if (plain)
        return strdup(word);
    size_t quotes = 0;
    for (size_t i = 0; i < n; i++)
        quotes += word[i] == '\'';
    char *out = malloc(n + quotes * 4 + 3);
    if (out == NULL)
        return NULL;
    char *p = out;
    *p++ = '\'';
    for (size_t i = 0; i < n; i++) {
        if (word[i] == '\'') {
            memcpy(p, "'\"'\"'", 5);
            p += 5;
        } else {
            *p++ = word[i];
        }
    }
    *p++ = '\'';
    *p = '\0';
    return out;
}

int cw_signal_by_name(const char *name)
{
    static const struct {
        const char *name;
        int sig;
    } table[] = {
        {"KILL", SIGKILL}, {"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},
        {"QUIT", SIGQUIT}, {"ABRT", SIGABRT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
        {"ALRM", SIGALRM}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(name, table[i].name) == 0)
            return table[i].sig;
    return -1;
}

void cw_args_free(cw_args_t *a)
{
    if (a == NULL)
        return;
    free_strv(a->argv);
    free_strv(a->argv_fake);
    free(a->display);
    free(a->workdir);
    free(a->initial_stdin);
    for (size_t i = 0; i < a->nlogfiles; i++) {
        free(a->logfiles[i].name);
        free(a->logfiles[i].filename);
    }
    free(a->logfiles);
    if (a->paths) {
        for (size_t i = 0; i < a->npaths; i++)
            free(a->paths[i]);
        free(a->paths);
    }
    free(a->path);
    free(a->from_path);
    free(a->to_path);
    cw_env_arg_free(&a->env);
    memset(a, 0, sizeof *a);
}
