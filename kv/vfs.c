/*
 * vfs.c - POSIX file I/O for the engine, and a fault-injecting wrapper for
 * tests (error injection per operation; power-loss simulation that drops what
 * was not fdatasynced). Invariant of the fault vfs: for every file written
 * through it, `synced` is the file size at its last successful fdatasync.
 */
#include "vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- POSIX */

static int px_open(vfs *v, const char *path, int flags, int mode)
{
    (void)v;
    int fd;
    do
        fd = open(path, flags | O_CLOEXEC, mode);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

static int px_close(vfs *v, int fd)
{
    (void)v;
    return close(fd) == 0 ? 0 : -errno;
}

static ssize_t px_pread(vfs *v, int fd, void *buf, size_t n, uint64_t off)
{
    (void)v;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static ssize_t px_pwrite(vfs *v, int fd, const void *buf, size_t n, uint64_t off)
{
    (void)v;
    size_t put = 0;
    while (put < n) {
        ssize_t w = pwrite(fd, (const char *)buf + put, n - put, (off_t)(off + put));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        put += (size_t)w;
    }
    return (ssize_t)put;
}

static int px_fdatasync(vfs *v, int fd)
{
    (void)v;
    return fdatasync(fd) == 0 ? 0 : -errno;
}

static int px_ftruncate(vfs *v, int fd, uint64_t len)
{
    (void)v;
    return ftruncate(fd, (off_t)len) == 0 ? 0 : -errno;
}

static int px_fsize(vfs *v, int fd, uint64_t *size)
{
    (void)v;
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

static int px_rename(vfs *v, const char *from, const char *to)
{
    (void)v;
    return rename(from, to) == 0 ? 0 : -errno;
}

static int px_unlink(vfs *v, const char *path)
{
    (void)v;
    return unlink(path) == 0 ? 0 : -errno;
}

static int px_fsync_dir(vfs *v, const char *dir)
{
    (void)v;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static const void *px_map(vfs *v, int fd, uint64_t len)
{
    (void)v;
    if (len == 0 || len > SIZE_MAX)
        return NULL;
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void px_unmap(vfs *v, const void *addr, uint64_t len)
{
    (void)v;
    if (addr)
        munmap((void *)addr, (size_t)len);
}

static vfs posix_vfs = {
    px_open, px_close, px_pread, px_pwrite, px_fdatasync, px_ftruncate,
    px_fsize, px_rename, px_unlink, px_fsync_dir, px_map, px_unmap,
};

vfs *vfs_posix(void) { return &posix_vfs; }

/* ---- Fault injection */

typedef struct ffile {
    char *path;
    uint64_t synced;   /* size at last fdatasync */
    int created;       /* created since the last directory fsync */
    int written;       /* written through this vfs since tracking began */
} ffile;

struct vfs_fault {
    vfs v;             /* first member: a vfs* is a vfs_fault* */
    pthread_mutex_t mu;
    unsigned ops;
    long skip;
    int err, sticky, armed;
    char *substr;
    long hits, syncs;
    ffile *files;
    size_t nfiles, capfiles;
    char **fdpath;     /* fd -> path (owned copies) */
    size_t nfd;
};

static ffile *ff_find(vfs_fault *f, const char *path, int add)
{
    for (size_t i = 0; i < f->nfiles; i++)
        if (strcmp(f->files[i].path, path) == 0)
            return &f->files[i];
    if (!add)
        return NULL;
    if (f->nfiles == f->capfiles) {
        size_t nc = f->capfiles ? f->capfiles * 2 : 16;
        ffile *nf = realloc(f->files, nc * sizeof *nf);
        if (!nf)
            return NULL;
        f->files = nf;
        f->capfiles = nc;
    }
    ffile *x = &f->files[f->nfiles++];
    memset(x, 0, sizeof *x);
    x->path = strdup(path);
    return x;
}

static const char *fd_path(vfs_fault *f, int fd)
{
    return (fd >= 0 && (size_t)fd < f->nfd) ? f->fdpath[fd] : NULL;
}

/* Returns -err when this operation must fail, else 0. Caller holds mu. */
static int should_fail(vfs_fault *f, unsigned op, const char *path)
{
    if (!f->armed || !(f->ops & op))
        return 0;
    if (f->substr && (!path || !strstr(path, f->substr)))
        return 0;
    if (f->skip > 0) {
        f->skip--;
        return 0;
    }
    if (!f->sticky)
        f->armed = 0;
    f->hits++;
    return -f->err;
}

static int ft_open(vfs *v, const char *path, int flags, int mode)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_OPEN, path);
    if (rc == 0) {
        int existed = access(path, F_OK) == 0;
        rc = px_open(v, path, flags, mode);
        if (rc >= 0) {
            if ((size_t)rc >= f->nfd) {
                size_t nn = (size_t)rc + 64;
                char **np = realloc(f->fdpath, nn * sizeof *np);
                if (np) {
                    memset(np + f->nfd, 0, (nn - f->nfd) * sizeof *np);
                    f->fdpath = np;
                    f->nfd = nn;
                }
            }
            if ((size_t)rc < f->nfd) {
                free(f->fdpath[rc]);
                f->fdpath[rc] = strdup(path);
            }
            ffile *x = ff_find(f, path, 1);
            if (x && !existed) {
                x->created = 1;
                x->synced = 0;
            } else if (x && !x->written) {
                uint64_t sz = 0;
                px_fsize(v, rc, &sz);
                x->synced = (flags & O_TRUNC) ? 0 : sz;
            }
            if (x && (flags & O_TRUNC))
                x->synced = 0;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_close(vfs *v, int fd)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    if (fd >= 0 && (size_t)fd < f->nfd) {
        free(f->fdpath[fd]);
        f->fdpath[fd] = NULL;
    }
    pthread_mutex_unlock(&f->mu);
    return px_close(v, fd);
}

static ssize_t ft_pread(vfs *v, int fd, void *buf, size_t n, uint64_t off)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_PREAD, fd_path(f, fd));
    pthread_mutex_unlock(&f->mu);
    return rc ? rc : px_pread(v, fd, buf, n, off);
}

static ssize_t ft_pwrite(vfs *v, int fd, const void *buf, size_t n, uint64_t off)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    const char *p = fd_path(f, fd);
    int rc = should_fail(f, VFS_OP_PWRITE, p);
    ffile *x = p ? ff_find(f, p, 1) : NULL;
    if (x)
        x->written = 1;
    pthread_mutex_unlock(&f->mu);
    if (rc) {
        if (n > 1)
            px_pwrite(v, fd, buf, n / 2, off); /* a partial write, then the error */
        return rc;
    }
    return px_pwrite(v, fd, buf, n, off);
}

static int ft_fdatasync(vfs *v, int fd)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    const char *p = fd_path(f, fd);
    int rc = should_fail(f, VFS_OP_SYNC, p);
    f->syncs++;
    if (rc == 0) {
        rc = px_fdatasync(v, fd);
        ffile *x = p ? ff_find(f, p, 1) : NULL;
        uint64_t sz;
        if (rc == 0 && x && px_fsize(v, fd, &sz) == 0)
            x->synced = sz;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_ftruncate(vfs *v, int fd, uint64_t len)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    const char *p = fd_path(f, fd);
    int rc = should_fail(f, VFS_OP_TRUNCATE, p);
    if (rc == 0) {
        rc = px_ftruncate(v, fd, len);
        ffile *x = p ? ff_find(f, p, 1) : NULL;
        if (rc == 0 && x && x->synced > len)
            x->synced = len;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_rename(vfs *v, const char *from, const char *to)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_RENAME, to);
    int replaced = access(to, F_OK) == 0;
    if (rc == 0) {
        rc = px_rename(v, from, to);
        if (rc == 0) {
            ffile *src = ff_find(f, from, 0);
            ffile *dst = ff_find(f, to, 1);
            if (dst) {
                dst->synced = src ? src->synced : 0;
                /* Renames are durable once they return (see vfs.h); a
                 * new name still vanishes with its unsynced directory. */
                dst->created = replaced ? 0 : (src ? src->created : 0);
                dst->written = 1;
            }
            if (src) {
                free(src->path);
                *src = f->files[--f->nfiles];
            }
        }
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_unlink(vfs *v, const char *path)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_UNLINK, path);
    if (rc == 0) {
        rc = px_unlink(v, path);
        ffile *x = ff_find(f, path, 0);
        if (rc == 0 && x) {
            free(x->path);
            *x = f->files[--f->nfiles];
        }
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_fsync_dir(vfs *v, const char *dir)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_DIRSYNC, dir);
    f->syncs++;
    if (rc == 0) {
        rc = px_fsync_dir(v, dir);
        if (rc == 0)
            for (size_t i = 0; i < f->nfiles; i++)
                f->files[i].created = 0;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

vfs_fault *vfs_fault_new(void)
{
    vfs_fault *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    /* No map: every read goes through ft_pread, where faults can be injected. */
    f->v = (vfs){ft_open, ft_close, ft_pread, ft_pwrite, ft_fdatasync, ft_ftruncate,
                 px_fsize, ft_rename, ft_unlink, ft_fsync_dir, NULL, NULL};
    pthread_mutex_init(&f->mu, NULL);
    return f;
}

void vfs_fault_free(vfs_fault *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->nfiles; i++)
        free(f->files[i].path);
    for (size_t i = 0; i < f->nfd; i++)
        free(f->fdpath[i]);
    free(f->files);
    free(f->fdpath);
    free(f->substr);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

vfs *vfs_fault_vfs(vfs_fault *f) { return &f->v; }

void vfs_fault_arm(vfs_fault *f, unsigned ops, long skip, int err, int sticky,
                   const char *path_substr)
{
    pthread_mutex_lock(&f->mu);
    f->ops = ops;
    f->skip = skip;
    f->err = err;
    f->sticky = sticky;
    f->armed = 1;
    free(f->substr);
    f->substr = path_substr ? strdup(path_substr) : NULL;
    pthread_mutex_unlock(&f->mu);
}

void vfs_fault_disarm(vfs_fault *f)
{
    pthread_mutex_lock(&f->mu);
    f->armed = 0;
    pthread_mutex_unlock(&f->mu);
}

long vfs_fault_hits(const vfs_fault *f) { return f->hits; }
long vfs_fault_syncs(const vfs_fault *f) { return f->syncs; }

void vfs_fault_crash(vfs_fault *f, uint64_t torn_keep)
{
    pthread_mutex_lock(&f->mu);
    for (size_t i = 0; i < f->nfiles; i++) {
        ffile *x = &f->files[i];
        if (x->created) {
            unlink(x->path);
            continue;
        }
        struct stat st;
        if (stat(x->path, &st) != 0)
            continue;
        uint64_t keep = x->synced + torn_keep;
        if ((uint64_t)st.st_size > keep && truncate(x->path, (off_t)keep) != 0)
            continue;
    }
    for (size_t i = 0; i < f->nfiles; i++)
        free(f->files[i].path);
    f->nfiles = 0;
    f->armed = 0;
    pthread_mutex_unlock(&f->mu);
}
