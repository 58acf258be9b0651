/* Linking libarchive from its static archive with only the objects cworker
 * uses (meson option archive_link=static, the default; docs/performance.md,
 * "Footprint").
 *
 * The pax writer (archive_write_set_format_pax.o) calls one helper,
 * __archive_write_entry_filetype_unsupported(), that libarchive keeps in
 * archive_write_set_format.o next to archive_write_set_format(), the
 * by-number table of every writer it has.  Taking that object from
 * libarchive.a would link all of them: xar (libxml2, and with it ICU and
 * libstdc++), 7-Zip (lzma), zip (nettle), iso9660, warc...  Defining the
 * helper here, where the linker meets it before libarchive.a, keeps that
 * object and those libraries out.  Same message as libarchive 3.6's. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "cw_config.h"

void __archive_write_entry_filetype_unsupported(struct archive *a, struct archive_entry *entry,
                                                const char *format);

void __archive_write_entry_filetype_unsupported(struct archive *a, struct archive_entry *entry,
                                                const char *format)
{
    const char *name = NULL;
    switch (archive_entry_filetype(entry)) {
    case AE_IFSOCK:
        name = "socket";
        break;
    case AE_IFCHR:
        name = "character device";
        break;
    case AE_IFBLK:
        name = "block device";
        break;
    case AE_IFIFO:
        name = "named pipe";
        break;
    case AE_IFLNK:
        name = "symbolic link";
        break;
    case AE_IFDIR:
        name = "directory";
        break;
    default:
        break;
    }
    if (name != NULL)
        archive_set_error(a, EINVAL, "%s: %s format cannot archive %s",
                          archive_entry_pathname(entry), format, name);
    else
        archive_set_error(a, EINVAL, "%s: %s format cannot archive files with mode 0%lo",
                          archive_entry_pathname(entry), format,
                          (unsigned long)archive_entry_mode(entry));
}

#if CW_ARCHIVE_LAZY_COMPRESSORS
/* zlib and libbz2 loaded on the first compressed DirectoryUpload (dynamic
 * builds with archive_link=static; docs/performance.md, "Footprint").  The
 * libarchive objects linked in call seven functions of theirs; they are
 * defined here (hidden: nothing outside this binary sees them) and forward
 * to the real ones, which dlopen() finds the first time one is called.  An
 * idle worker maps neither library.  If one cannot be loaded, its
 * initialisation fails and libarchive reports a compression error: the
 * upload fails with a message, the worker goes on. */
#include <bzlib.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <zlib.h>

static struct {
    __typeof__(&deflateInit2_) deflate_init2;
    __typeof__(&deflate) deflate;
    __typeof__(&deflateEnd) deflate_end;
    __typeof__(&crc32) crc32;
} zlib_fn;
static bool zlib_ok;
static pthread_once_t zlib_once = PTHREAD_ONCE_INIT;

static struct {
    __typeof__(&BZ2_bzCompressInit) init;
    __typeof__(&BZ2_bzCompress) compress;
    __typeof__(&BZ2_bzCompressEnd) end;
} bz2_fn;
static bool bz2_ok;
static pthread_once_t bz2_once = PTHREAD_ONCE_INIT;

/* dlsym into a function pointer slot (POSIX: the conversion is defined). */
static bool sym(void *h, const char *name, void *slot, size_t size)
{
    void *p = dlsym(h, name);
    if (p == NULL)
        return false;
    memcpy(slot, &p, size);
    return true;
}

static void zlib_load(void)
{
    void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return; /* (no log line: this runs on the tar thread) */
    zlib_ok = sym(h, "deflateInit2_", &zlib_fn.deflate_init2, sizeof zlib_fn.deflate_init2) &&
              sym(h, "deflate", &zlib_fn.deflate, sizeof zlib_fn.deflate) &&
              sym(h, "deflateEnd", &zlib_fn.deflate_end, sizeof zlib_fn.deflate_end) &&
              sym(h, "crc32", &zlib_fn.crc32, sizeof zlib_fn.crc32);
}

static void bz2_load(void)
{
    void *h = dlopen("libbz2.so.1.0", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return;
    bz2_ok = sym(h, "BZ2_bzCompressInit", &bz2_fn.init, sizeof bz2_fn.init) &&
             sym(h, "BZ2_bzCompress", &bz2_fn.compress, sizeof bz2_fn.compress) &&
             sym(h, "BZ2_bzCompressEnd", &bz2_fn.end, sizeof bz2_fn.end);
}

/* Whether zlib/libbz2 is there, loading it the first time (any thread). */
static bool have_zlib(void)
{
    pthread_once(&zlib_once, zlib_load);
    return zlib_ok;
}

static bool have_bz2(void)
{
    pthread_once(&bz2_once, bz2_load);
    return bz2_ok;
}

int deflateInit2_(z_streamp strm, int level, int method, int windowBits, int memLevel, int strategy,
                  const char *version, int stream_size)
{
    if (!have_zlib())
        return Z_VERSION_ERROR;
    return zlib_fn.deflate_init2(strm, level, method, windowBits, memLevel, strategy, version,
                                 stream_size);
}

int deflate(z_streamp strm, int flush)
{
    return have_zlib() ? zlib_fn.deflate(strm, flush) : Z_STREAM_ERROR;
}

int deflateEnd(z_streamp strm)
{
    return have_zlib() ? zlib_fn.deflate_end(strm) : Z_STREAM_ERROR;
}

uLong crc32(uLong crc, const Bytef *buf, uInt len)
{
    return have_zlib() ? zlib_fn.crc32(crc, buf, len) : 0;
}

int BZ2_bzCompressInit(bz_stream *strm, int blockSize100k, int verbosity, int workFactor)
{
    if (!have_bz2())
        return BZ_CONFIG_ERROR;
    return bz2_fn.init(strm, blockSize100k, verbosity, workFactor);
}

int BZ2_bzCompress(bz_stream *strm, int action)
{
    return have_bz2() ? bz2_fn.compress(strm, action) : BZ_PARAM_ERROR;
}

int BZ2_bzCompressEnd(bz_stream *strm)
{
    return have_bz2() ? bz2_fn.end(strm) : BZ_PARAM_ERROR;
}
#endif
