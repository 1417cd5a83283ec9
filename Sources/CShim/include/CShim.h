// The parts of the C interface Swift cannot call directly: the CMSG_* macros behind
// SCM_RIGHTS, and dl_iterate_phdr's callback. Nothing else belongs here.
#ifndef CLOISTER_CSHIM_H
#define CLOISTER_CSHIM_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/prctl.h>

/// Largest number of descriptors one message may carry (the kernel's SCM_MAX_FD).
#define CLOISTER_MAX_FDS_PER_MESSAGE 253

/// sendmsg(2) of `iov` with `nfds` descriptors as one SCM_RIGHTS control message.
/// Returns what sendmsg returns; errno is left as sendmsg set it.
ssize_t cloister_sendmsg_fds(int sock, const struct iovec *iov, int iovcnt,
                             const int *fds, unsigned nfds, int flags);

/// recvmsg(2) with MSG_CMSG_CLOEXEC. Every descriptor that arrived is either stored in
/// `fds` (up to `maxfds`, count in `*nfds`) or closed here, so none can leak.
/// `*msg_flags` receives msg_flags (MSG_CTRUNC, MSG_TRUNC). `*foreign_cmsg` is set when
/// a control message other than SCM_RIGHTS arrived (it is ignored).
ssize_t cloister_recvmsg_fds(int sock, struct iovec *iov, int iovcnt,
                             int *fds, unsigned maxfds, unsigned *nfds,
                             int *msg_flags, int *foreign_cmsg, int flags);

/// recvmmsg(2) with MSG_WAITFORONE | MSG_CMSG_CLOEXEC: waits for one packet, then takes every
/// packet already queued, up to `vlen` (at most 16). Packet i is scattered over the `iovlen`
/// buffers at `iov[i * iovlen]`; its size in
/// `lengths[i]` (the full size, MSG_TRUNC), its flags in `msg_flags[i]`, its descriptors in
/// `fds[i * maxfds ...]` (count in `nfds[i]`; extra ones are closed and MSG_CTRUNC set).
/// Returns the number of packets, 0 at end of file, -1 with errno on error. With `dontwait`,
/// returns -1/EAGAIN at once when nothing is queued.
int cloister_recvmmsg_fds(int sock, struct iovec *iov, unsigned iovlen, unsigned vlen, int *fds, unsigned maxfds,
                          unsigned *nfds, size_t *lengths, int *msg_flags, int dontwait);

/// sched_setscheduler(2) of the calling process to SCHED_BATCH (a _GNU_SOURCE constant the
/// Glibc overlay does not give). Returns what sched_setscheduler returns.
int cloister_sched_batch(void);

/// Names the calling thread (prctl PR_SET_NAME is variadic; pthread_setname_np needs
/// _GNU_SOURCE). `name` is cut to 15 bytes.
void cloister_set_thread_name(const char *name);

/// sched_setaffinity(2) of thread `tid` to the single CPU `cpu` (a GNU extension the Glibc
/// overlay does not export). Returns 0, or -1 with errno.
int cloister_pin_thread(pid_t tid, int cpu);

/// prctl(2), which is variadic. Returns what prctl returns; errno as it set it.
int cloister_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);

/// setresuid/setresgid/getresuid/gettid are GNU extensions the Glibc overlay hides.
int cloister_setresuid(uid_t uid);
int cloister_setresgid(gid_t gid);
int cloister_getresuid(uid_t *r, uid_t *e, uid_t *s);
int cloister_getresgid(gid_t *r, gid_t *e, gid_t *s);
pid_t cloister_gettid(void);

/// getrandom(2) (in <sys/random.h>, which the Glibc overlay leaves out): up to `length`
/// random bytes into `buffer`. Returns the count, or -1 with errno.
ssize_t cloister_getrandom(void *buffer, size_t length);

/// mallopt(M_ARENA_MAX, 1) (in <malloc.h>, which the Glibc overlay leaves out): every thread
/// allocates from the one arena. Returns mallopt's result (1 on success).
int cloister_single_malloc_arena(void);

/// syscall(2) with six arguments (variadic in C): for raw calls with no libc wrapper.
long cloister_syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6);

/// getpid through the i386 entry point (int 0x80) on x86_64: a syscall of a foreign
/// architecture, for tests that the filter kills it. Returns -1/ENOSYS elsewhere.
long cloister_i386_getpid(void);

/// Landlock: restricts the calling thread (and threads it creates later) to no filesystem
/// access at all, handling every right the running kernel's ABI knows. Returns the ABI
/// version used, 0 when the kernel has no Landlock, -1 with errno on failure.
int cloister_landlock_deny_filesystem(void);

/// accept4(2) with SOCK_CLOEXEC (accept4 is a GNU extension to the Glibc overlay).
int cloister_accept_cloexec(int sock);

/// SO_PEERCRED of a connected unix socket (struct ucred is GNU-only).
int cloister_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);
/// The peer's supplementary groups (SO_PEERGROUPS, Linux 4.13), at most `max` of them;
/// returns how many, or -1 with errno (ERANGE when there are more than `max`).
int cloister_peer_groups(int sock, gid_t *groups, int max);

/// A new pseudo-terminal: the master (close-on-exec, not a controlling terminal of this
/// process) in `*master`, the slave's path in `name`, with the window size set. posix_openpt,
/// grantpt, unlockpt, ptsname_r (GNU) and ioctl (variadic). Returns 0, or -1 with errno and
/// the failing call's name in `*failed`.
int cloister_open_pty(int *master, char *name, size_t cap, unsigned short rows, unsigned short cols,
                      const char **failed);

/// TIOCSWINSZ (ioctl is variadic). Returns 0, or -1 with errno.
int cloister_set_window_size(int fd, unsigned short rows, unsigned short cols);
int cloister_get_window_size(int fd, unsigned short *rows, unsigned short *cols);

/// Copies the GNU build-id note of the running executable (as loaded in memory, so no
/// file access is needed) into `out`. Returns its length, 0 when the image has none.
size_t cloister_build_id(unsigned char *out, size_t cap);

/// A memfd holding `len` bytes of `data`, sealed against any change (write, grow, shrink, and
/// further seals), close-on-exec: memfd_create and its seals are missing from the Glibc overlay.
/// Returns the descriptor, or -1 with errno and the failing call's name in `*failed`.
int cloister_sealed_memfd(const char *name, const void *data, size_t len, const char **failed);

/// A memfd of `size` bytes (sparse: pages are taken as they are written) whose size is sealed
/// (no grow, no shrink, no further seals), close-on-exec: a session's kept state, made by the
/// nursery for the vault, which maps it shared and writable; no holder can truncate it under
/// that mapping. Returns the descriptor, or -1 with errno and the failing call's name in
/// `*failed`.
int cloister_sized_memfd(const char *name, size_t size, const char **failed);

/// pidfd_open(2) and pidfd_send_signal(2), through syscall(2), which is variadic. Return a
/// descriptor / 0, or -1 with errno.
int cloister_pidfd_open(int pid);
int cloister_pidfd_send_signal(int pidfd, int signal);
/// PR_SET_CHILD_SUBREAPER: orphaned descendants become this process's children.
int cloister_set_child_subreaper(void);
/// A pipe whose read end (returned, close-on-exec and non-blocking) becomes readable when a
/// child ends: a SIGCHLD handler (async-signal-safe, SA_RESTART) writes a byte to it. For a
/// single-threaded process that waits in poll(2) for requests and its children alike.
/// Returns -1 with errno on failure.
int cloister_child_exit_pipe(void);

/// A label a packager may write into the binary after the marker `CLOISTER_BUILD_LABEL=`
/// (a field of 42 bytes, NUL-padded), shown by `cloister version` and `ctl status`; empty
/// unless set. The field is writable data, so the compiler cannot fold it away.
const char *cloister_build_label(void);

/// Bytes waiting to be read on a terminal (TIOCINQ; ioctl is variadic). Returns the count, or
/// -1 with errno.
int cloister_bytes_readable(int fd);

/// epoll with a 64-bit key per descriptor (struct epoll_event is packed on x86_64, which
/// Swift's importer does not lay out reliably). `oneshot` registrations are re-armed with
/// `cloister_epoll_set` (EPOLL_CTL_MOD), or added when `add` is set. Return 0, or -1 with errno.
int cloister_epoll_set(int epfd, int fd, unsigned long long key, int add);
int cloister_epoll_remove(int epfd, int fd);
/// A close-on-exec epoll instance, or -1 with errno.
int cloister_epoll_create(void);
/// Waits for at most `max` ready descriptors and writes their keys; returns how many, or -1
/// with errno.
int cloister_epoll_wait_keys(int epfd, unsigned long long *keys, int max, int timeout);

/// Makes Swift concurrency's global executor `enqueue` (called with each job) instead of
/// libdispatch's pool, through the runtime's swift_task_enqueueGlobal_hook. Referenced here,
/// at link time, because a runtime linked in statically keeps the hook out of the dynamic
/// symbol table (--exclude-libs), where dlsym would look. Returns 0, or -1 when a hook was
/// already installed.
int cloister_install_global_executor(void (*enqueue)(void *job));

#endif
