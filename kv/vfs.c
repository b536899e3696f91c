/*
 * vfs.c - POSIX file I/O for the engine, and a fault-injecting wrapper for
 * tests (error injection per operation; power-loss simulation that drops,
 * tears or garbles what was not fdatasynced and undoes the creates, renames
 * and unlinks no directory fsync made durable). Invariants of the fault vfs:
 * for every file written through it, `synced` is the file size at its last
 * successful fdatasync, and `ns` lists, oldest first, every namespace change
 * since the last fsync of its directory, with the bytes needed to undo it.
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

static void px_writeback(vfs *v, int fd, uint64_t off, uint64_t len)
{
    (void)v;
    (void)sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
}

static vfs posix_vfs = {
    px_open, px_close, px_pread, px_pwrite, px_fdatasync, px_ftruncate,
    px_fsize, px_rename, px_unlink, px_fsync_dir, px_map, px_unmap, px_writeback,
};

vfs *vfs_posix(void) { return &posix_vfs; }

/* ---- Fault injection */

/* Content: one entry per path written or opened through the fault vfs, keyed
 * by its current name (a rename moves the entry). */
typedef struct ffile {
    char *path;
    uint64_t synced;   /* size at last fdatasync */
    int written;       /* written through this vfs since tracking began */
} ffile;

/* Namespace: the creates, renames and unlinks since the last fsync of their
 * directory, in order; a power loss undoes them newest first. */
enum { NS_CREATE, NS_RENAME, NS_UNLINK };
typedef struct nsop {
    int kind;
    char *dir;         /* the directory whose fsync makes it durable */
    char *a, *b;       /* CREATE, UNLINK: a = path; RENAME: a = from, b = to */
    uint8_t *saved;    /* UNLINK: the file's durable bytes; RENAME: the
                        * replaced target's (when had_target) */
    size_t nsaved;
    int had_target;
} nsop;

struct vfs_fault {
    vfs v;             /* first member: a vfs* is a vfs_fault* */
    pthread_mutex_t mu;
    unsigned ops;
    long skip;
    int err, sticky, armed;
    char *substr;
    long hits, syncs;
    int cut_armed, frozen; /* vfs_fault_power_cut */
    long cut_after;
    ffile *files;
    size_t nfiles, capfiles;
    nsop *ns;
    size_t nns, capns;
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

static void ff_remove(vfs_fault *f, ffile *x)
{
    free(x->path);
    *x = f->files[--f->nfiles];
}

/* The directory part of path ("." when none), without trailing slashes. */
static char *dir_of(const char *path)
{
    const char *sl = strrchr(path, '/');
    if (!sl)
        return strdup(".");
    if (sl == path)
        return strdup("/");
    size_t n = (size_t)(sl - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

static char *dir_norm(const char *dir)
{
    char *d = strdup(dir);
    if (!d)
        return NULL;
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/')
        d[--n] = 0;
    return d;
}

/* The bytes of path that survive a power loss now: its first `synced` bytes
 * when tracked, else all of it (it predates the fault vfs: durable). */
static uint8_t *durable_bytes(vfs_fault *f, const char *path, size_t *n)
{
    *n = 0;
    struct stat st;
    if (stat(path, &st) != 0)
        return NULL;
    ffile *x = ff_find(f, path, 0);
    uint64_t want = (uint64_t)st.st_size;
    if (x && x->synced < want)
        want = x->synced;
    uint8_t *buf = malloc(want ? (size_t)want : 1);
    if (!buf)
        return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t r = fd >= 0 ? px_pread(&f->v, fd, buf, (size_t)want, 0) : -1;
    if (fd >= 0)
        close(fd);
    if (r < 0) {
        free(buf);
        return NULL;
    }
    *n = (size_t)r;
    return buf;
}

static nsop *ns_add(vfs_fault *f, int kind, const char *a, const char *b)
{
    if (f->nns == f->capns) {
        size_t nc = f->capns ? f->capns * 2 : 16;
        nsop *nn = realloc(f->ns, nc * sizeof *nn);
        if (!nn)
            return NULL;
        f->ns = nn;
        f->capns = nc;
    }
    nsop *o = &f->ns[f->nns++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->dir = dir_of(b ? b : a);
    o->a = strdup(a);
    o->b = b ? strdup(b) : NULL;
    return o;
}

static void ns_free(nsop *o)
{
    free(o->dir);
    free(o->a);
    free(o->b);
    free(o->saved);
}

/* Creates path with exactly bytes buf[0..n). */
static void put_file(const char *path, const uint8_t *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (n)
        px_pwrite(NULL, fd, buf, n, 0);
    close(fd);
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

/* vfs_fault_power_cut at a sync point: 1 when this one and all later
 * changes must fail without touching the disk. Caller holds mu. */
static int cut_at_sync(vfs_fault *f)
{
    if (f->cut_armed && !f->frozen) {
        if (f->cut_after > 0)
            f->cut_after--;
        else
            f->frozen = 1;
    }
    return f->frozen;
}

static int ft_open(vfs *v, const char *path, int flags, int mode)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_OPEN, path);
    if (rc == 0 && f->frozen && (flags & (O_CREAT | O_TRUNC)))
        rc = -EIO;
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
                x->synced = 0;
                ns_add(f, NS_CREATE, path, NULL);
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
    if (f->frozen) {
        pthread_mutex_unlock(&f->mu);
        return -EIO;
    }
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
    if (cut_at_sync(f))
        rc = -EIO;
    if (rc == 0) {
        /* No real fdatasync: durability is what this vfs models, and real
         * syncs would make sweeps of thousands of power losses disk-bound. */
        rc = fcntl(fd, F_GETFD) < 0 ? -errno : 0;
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
    if (f->frozen)
        rc = -EIO;
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
    if (f->frozen)
        rc = -EIO;
    if (rc == 0) {
        /* What `to` holds durably now comes back if the rename is undone. */
        int replaced = access(to, F_OK) == 0;
        size_t nsaved = 0;
        uint8_t *saved = replaced ? durable_bytes(f, to, &nsaved) : NULL;
        rc = px_rename(v, from, to);
        if (rc == 0) {
            nsop *o = ns_add(f, NS_RENAME, from, to);
            if (o) {
                o->had_target = replaced;
                o->saved = saved;
                o->nsaved = nsaved;
                saved = NULL;
            }
            ffile *dst = ff_find(f, to, 0);
            if (dst)
                ff_remove(f, dst);
            ffile *src = ff_find(f, from, 0);
            if (src) {
                free(src->path);
                src->path = strdup(to);
            } else if ((dst = ff_find(f, to, 1)) != NULL) {
                struct stat st; /* untracked: durable as it is */
                dst->synced = stat(to, &st) == 0 ? (uint64_t)st.st_size : 0;
            }
            /* open descriptors follow the file */
            for (size_t i = 0; i < f->nfd; i++)
                if (f->fdpath[i] && strcmp(f->fdpath[i], from) == 0) {
                    free(f->fdpath[i]);
                    f->fdpath[i] = strdup(to);
                }
        }
        free(saved);
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int ft_unlink(vfs *v, const char *path)
{
    vfs_fault *f = (vfs_fault *)v;
    pthread_mutex_lock(&f->mu);
    int rc = should_fail(f, VFS_OP_UNLINK, path);
    if (f->frozen)
        rc = -EIO;
    if (rc == 0) {
        size_t nsaved = 0;
        uint8_t *saved = durable_bytes(f, path, &nsaved);
        rc = px_unlink(v, path);
        if (rc == 0) {
            nsop *o = ns_add(f, NS_UNLINK, path, NULL);
            if (o) {
                o->saved = saved;
                o->nsaved = nsaved;
                saved = NULL;
            }
            ffile *x = ff_find(f, path, 0);
            if (x)
                ff_remove(f, x);
        }
        free(saved);
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
    if (cut_at_sync(f))
        rc = -EIO;
    if (rc == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* no real fsync, as above */
        rc = dfd < 0 ? -errno : 0;
        if (dfd >= 0)
            close(dfd);
        char *d = dir_norm(dir);
        if (rc == 0 && d) {
            /* every create, rename and unlink in it is durable now */
            size_t k = 0;
            for (size_t i = 0; i < f->nns; i++) {
                if (f->ns[i].dir && strcmp(f->ns[i].dir, d) == 0)
                    ns_free(&f->ns[i]);
                else
                    f->ns[k++] = f->ns[i];
            }
            f->nns = k;
        }
        free(d);
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

vfs_fault *vfs_fault_new(void)
{
    vfs_fault *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    /* No map: every read goes through ft_pread, where faults can be injected.
     * No writeback hint: what is durable is what this vfs models. */
    f->v = (vfs){ft_open, ft_close, ft_pread, ft_pwrite, ft_fdatasync, ft_ftruncate,
                 px_fsize, ft_rename, ft_unlink, ft_fsync_dir, NULL, NULL, NULL};
    pthread_mutex_init(&f->mu, NULL);
    return f;
}

void vfs_fault_free(vfs_fault *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->nfiles; i++)
        free(f->files[i].path);
    for (size_t i = 0; i < f->nns; i++)
        ns_free(&f->ns[i]);
    for (size_t i = 0; i < f->nfd; i++)
        free(f->fdpath[i]);
    free(f->files);
    free(f->ns);
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

void vfs_fault_power_cut(vfs_fault *f, long syncs)
{
    pthread_mutex_lock(&f->mu);
    f->cut_armed = 1;
    f->cut_after = syncs;
    f->frozen = 0;
    pthread_mutex_unlock(&f->mu);
}

int vfs_fault_frozen(const vfs_fault *f) { return f->frozen; }

long vfs_fault_hits(const vfs_fault *f) { return f->hits; }
long vfs_fault_syncs(const vfs_fault *f) { return f->syncs; }

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Overwrites bytes [from, to) of path with pseudo-random bytes. */
static int garble(const char *path, uint64_t from, uint64_t to, uint64_t *seed)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    uint8_t buf[4096];
    int rc = 0;
    for (uint64_t off = from; off < to && rc == 0;) {
        size_t n = to - off < sizeof buf ? (size_t)(to - off) : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)splitmix(seed);
        rc = px_pwrite(NULL, fd, buf, n, off) == (ssize_t)n ? 0 : -1;
        off += n;
    }
    close(fd);
    return rc;
}

void vfs_fault_crash_ex(vfs_fault *f, const vfs_crash *how, vfs_crash_stats *stats)
{
    vfs_crash_stats st;
    memset(&st, 0, sizeof st);
    uint64_t seed = how->seed;
    pthread_mutex_lock(&f->mu);
    /* 1. Contents: the unsynced tail of every file, under its current name. */
    for (size_t i = 0; i < f->nfiles; i++) {
        ffile *x = &f->files[i];
        struct stat sb;
        if (stat(x->path, &sb) != 0 || (uint64_t)sb.st_size <= x->synced)
            continue;
        uint64_t size = (uint64_t)sb.st_size;
        uint64_t keep = how->torn_keep >= size - x->synced ? size : x->synced + how->torn_keep;
        st.files_cut++;
        if (how->garble) {
            if (size > keep && garble(x->path, keep, size, &seed) == 0)
                st.bytes_garbled += size - keep;
        } else if (size > keep && truncate(x->path, (off_t)keep) == 0) {
            st.bytes_dropped += size - keep;
        }
    }
    /* 2. Names: undo the creates, renames and unlinks not made durable by a
     * directory fsync, newest first. */
    size_t keep = how->ns_keep < f->nns ? how->ns_keep : f->nns;
    for (size_t i = keep; i-- > 0;)
        ns_free(&f->ns[i]);
    for (size_t i = f->nns; i-- > keep;) {
        nsop *o = &f->ns[i];
        switch (o->kind) {
        case NS_CREATE:
            if (unlink(o->a) == 0)
                st.creates_undone++;
            break;
        case NS_RENAME:
            rename(o->b, o->a);
            if (o->had_target)
                put_file(o->b, o->saved, o->nsaved);
            st.renames_undone++;
            break;
        case NS_UNLINK:
            put_file(o->a, o->saved, o->nsaved);
            st.unlinks_undone++;
            break;
        }
        ns_free(o);
    }
    f->nns = 0;
    for (size_t i = 0; i < f->nfiles; i++)
        free(f->files[i].path);
    f->nfiles = 0;
    f->armed = 0;
    f->cut_armed = 0;
    f->frozen = 0;
    pthread_mutex_unlock(&f->mu);
    if (stats)
        *stats = st;
}

void vfs_fault_crash(vfs_fault *f, uint64_t torn_keep)
{
    vfs_crash how = {0, torn_keep, 0, 0};
    vfs_fault_crash_ex(f, &how, NULL);
}
