/*
 * vfs.h - the one thin file I/O interface of the engine.
 *
 * Every open, pread, pwrite, fdatasync, ftruncate, rename, unlink and
 * directory fsync of kv/ goes through a `vfs` so tests can inject I/O errors
 * and simulate a power loss that drops, tears or garbles unsynced writes and
 * undoes unsynced directory changes (the pattern of
 * SQLite's test VFS and LevelDB's fault-injection Env). Functions return a
 * non-negative result or -errno; they never set errno for the caller.
 */
#ifndef S4KV_VFS_H
#define S4KV_VFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct vfs vfs;
struct vfs {
    /* open(2); returns fd >= 0 or -errno. */
    int (*open)(vfs *v, const char *path, int flags, int mode);
    int (*close)(vfs *v, int fd);
    /* Full-length pread/pwrite: loop over short transfers; return bytes (a
     * short count only at end of file for pread) or -errno. */
    ssize_t (*pread)(vfs *v, int fd, void *buf, size_t n, uint64_t off);
    ssize_t (*pwrite)(vfs *v, int fd, const void *buf, size_t n, uint64_t off);
    int (*fdatasync)(vfs *v, int fd);
    int (*ftruncate)(vfs *v, int fd, uint64_t len);
    /* Size of the open file in bytes. */
    int (*fsize)(vfs *v, int fd, uint64_t *size);
    int (*rename)(vfs *v, const char *from, const char *to);
    int (*unlink)(vfs *v, const char *path);
    /* fsync of a directory, making creates, renames and unlinks in it durable. */
    int (*fsync_dir)(vfs *v, const char *dir);
    /* Optional (NULL = reads always go through pread): maps len bytes of fd
     * read-only and shared; len may run past the end of the file (only bytes
     * inside it are ever touched). Returns the address or NULL. */
    const void *(*map)(vfs *v, int fd, uint64_t len);
    void (*unmap)(vfs *v, const void *addr, uint64_t len);
    /* Optional (NULL = no hint): starts writing back the dirty pages of
     * bytes [off, off + len) of fd and returns without waiting
     * (sync_file_range(2) with SYNC_FILE_RANGE_WRITE). A hint that lets a
     * later fdatasync find less to do; it makes nothing durable, so it is not
     * a sync point, and failures are ignored. */
    void (*writeback)(vfs *v, int fd, uint64_t off, uint64_t len);
};

/* The POSIX implementation (a static singleton; never freed). */
vfs *vfs_posix(void);

/* ---- Fault injection (tests). Wraps vfs_posix. */

enum {
    VFS_OP_OPEN = 1 << 0,
    VFS_OP_PREAD = 1 << 1,
    VFS_OP_PWRITE = 1 << 2,
    VFS_OP_SYNC = 1 << 3,      /* fdatasync */
    VFS_OP_TRUNCATE = 1 << 4,
    VFS_OP_RENAME = 1 << 5,
    VFS_OP_UNLINK = 1 << 6,
    VFS_OP_DIRSYNC = 1 << 7,
    VFS_OP_ALL = 0xff,
};

typedef struct vfs_fault vfs_fault;

/* New fault VFS with no faults armed. Free with vfs_fault_free. */
vfs_fault *vfs_fault_new(void);
void vfs_fault_free(vfs_fault *f);
vfs *vfs_fault_vfs(vfs_fault *f);

/* Arms a fault: after `skip` more matching operations succeed, the next
 * matching one fails with -err (e.g. ENOSPC, EIO). With `sticky` every later
 * matching operation fails too, until vfs_fault_disarm. A failing pwrite
 * first writes half of its bytes (a partial write, as a full disk does).
 * Only paths containing `path_substr` match (NULL = all files). */
void vfs_fault_arm(vfs_fault *f, unsigned ops, long skip, int err, int sticky,
                   const char *path_substr);
void vfs_fault_disarm(vfs_fault *f);
/* Number of operations that failed because of an armed fault. */
long vfs_fault_hits(const vfs_fault *f);
/* Number of fdatasync + dir fsync calls seen (sync points). */
long vfs_fault_syncs(const vfs_fault *f);

/* Arms a power cut: after `syncs` more sync points (fdatasync or directory
 * fsync) succeed, the next one fails with EIO and so does every later
 * pwrite, ftruncate, rename, unlink, sync and creating or truncating open,
 * without touching the disk: the files stay as the power left them (the
 * engine's clean-up after the error never happens, as in a real power loss).
 * Reads still work. vfs_fault_crash_ex then applies the power loss and
 * lifts the cut. */
void vfs_fault_power_cut(vfs_fault *f, long syncs);
/* 1 once an armed power cut has happened. */
int vfs_fault_frozen(const vfs_fault *f);

/* Simulates a power loss (the model of LevelDB's FaultInjectionTestEnv, made
 * stricter):
 * - contents: every file written through this vfs keeps the bytes it had at
 *   its last fdatasync; of the unsynced tail, the first `torn_keep` bytes are
 *   kept (a torn write) and the rest is dropped (garble = 0) or replaced by
 *   pseudo-random bytes drawn from `seed` (garble = 1: the blocks reached the
 *   disk in a half-written state);
 * - names: every create, rename and unlink not followed by a successful
 *   fsync of its directory is undone, newest first: a created file vanishes,
 *   a renamed file gets its old name back and the target its old durable
 *   content (or vanishes when there was none), an unlinked file reappears
 *   with its durable content; with ns_keep > 0, the oldest ns_keep of them
 *   persist (a journal that committed a prefix of the changes). Files that
 *   predate the fault vfs count as durable as they are.
 * Not modelled: an ftruncate is durable when it returns; fdatasync makes the
 * data durable but not a new file's name (POSIX's worst case, which ext4 in
 * data=ordered mode is kinder than).
 * Call it after abandoning the db handle (s4kv__abandon), before reopening. */
typedef struct vfs_crash {
    int garble;
    uint64_t torn_keep;
    uint64_t seed;
    size_t ns_keep;
} vfs_crash;
typedef struct vfs_crash_stats {
    long files_cut;          /* files that had an unsynced tail */
    uint64_t bytes_dropped, bytes_garbled;
    long creates_undone, renames_undone, unlinks_undone;
} vfs_crash_stats;
void vfs_fault_crash_ex(vfs_fault *f, const vfs_crash *how, vfs_crash_stats *stats);
/* vfs_fault_crash_ex with garble = 0. */
void vfs_fault_crash(vfs_fault *f, uint64_t torn_keep);

#endif
