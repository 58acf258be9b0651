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
#include <sys/stat.h>

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
