#define _GNU_SOURCE
#include "CShim.h"

#include <elf.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <linux/landlock.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <termios.h>
#include <sys/epoll.h>

ssize_t cloister_sendmsg_fds(int sock, const struct iovec *iov, int iovcnt,
                             const int *fds, unsigned nfds, int flags) {
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    if (nfds > CLOISTER_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLOISTER_MAX_FDS_PER_MESSAGE)];
        struct cmsghdr align;
    } control;
    if (nfds > 0) {
        memset(&control, 0, sizeof control);
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    return sendmsg(sock, &msg, flags);
}

/// Moves the SCM_RIGHTS descriptors of one received message into `fds` (up to `maxfds`),
/// closing any beyond that and flagging MSG_CTRUNC.
static void take_fds(struct msghdr *msg, int *fds, unsigned maxfds, unsigned *nfds) {
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i, sizeof fd);
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                msg->msg_flags |= MSG_CTRUNC;
            }
        }
    }
}

ssize_t cloister_recvmsg_fds(int sock, struct iovec *iov, int iovcnt,
                             int *fds, unsigned maxfds, unsigned *nfds,
                             int *msg_flags, int *foreign_cmsg, int flags) {
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)iovcnt;
    union {
        char buf[CMSG_SPACE(sizeof(int) * CLOISTER_MAX_FDS_PER_MESSAGE)];
        struct cmsghdr align;
    } control;
    if (maxfds > CLOISTER_MAX_FDS_PER_MESSAGE) maxfds = CLOISTER_MAX_FDS_PER_MESSAGE;
    // Room for at least one descriptor even when none is allowed, so that a peer sending
    // one is detected (and the descriptor closed) rather than silently dropped.
    unsigned room = maxfds > 0 ? maxfds : 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * room);
    *nfds = 0;
    *foreign_cmsg = 0;
    ssize_t n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0) {
        *msg_flags = msg.msg_flags;
        return n;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) *foreign_cmsg = 1;
    }
    take_fds(&msg, fds, maxfds, nfds);
    *msg_flags = msg.msg_flags;
    return n;
}

#define CLOISTER_MAX_BATCH 16

int cloister_recvmmsg_fds(int sock, struct iovec *iov, unsigned iovlen, unsigned vlen, int *fds, unsigned maxfds,
                          unsigned *nfds, size_t *lengths, int *msg_flags, int dontwait) {
    if (vlen > CLOISTER_MAX_BATCH) vlen = CLOISTER_MAX_BATCH;
    if (maxfds == 0 || maxfds > CLOISTER_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }
    struct mmsghdr msgs[CLOISTER_MAX_BATCH];
    size_t space = CMSG_SPACE(sizeof(int) * maxfds);
    // One control buffer per packet, aligned for cmsghdr.
    union {
        char buf[CLOISTER_MAX_BATCH * CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } small;
    char *control = small.buf;
    char *heap = NULL;
    if (space * vlen > sizeof small.buf) {
        heap = malloc(space * vlen);
        if (heap == NULL) return -1;
        control = heap;
    }
    memset(msgs, 0, sizeof msgs);
    for (unsigned i = 0; i < vlen; i++) {
        msgs[i].msg_hdr.msg_iov = &iov[(size_t)i * iovlen];
        msgs[i].msg_hdr.msg_iovlen = iovlen;
        msgs[i].msg_hdr.msg_control = control + i * space;
        msgs[i].msg_hdr.msg_controllen = space;
    }
    int n;
    do {
        n = recvmmsg(sock, msgs, vlen, MSG_WAITFORONE | MSG_CMSG_CLOEXEC | MSG_TRUNC | (dontwait ? MSG_DONTWAIT : 0), NULL);
    } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) {
        take_fds(&msgs[i].msg_hdr, fds + (size_t)i * maxfds, maxfds, &nfds[i]);
        lengths[i] = msgs[i].msg_len;
        msg_flags[i] = msgs[i].msg_hdr.msg_flags;
    }
    free(heap);
    return n;
}

void cloister_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}

int cloister_pin_thread(pid_t tid, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(tid, sizeof set, &set);
}

int cloister_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5) {
    return prctl(option, arg2, arg3, arg4, arg5);
}

int cloister_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }
int cloister_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
int cloister_getresuid(uid_t *r, uid_t *e, uid_t *s) { return getresuid(r, e, s); }
int cloister_getresgid(gid_t *r, gid_t *e, gid_t *s) { return getresgid(r, e, s); }
pid_t cloister_gettid(void) { return gettid(); }

long cloister_syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6) {
    return syscall(number, a1, a2, a3, a4, a5, a6);
}

long cloister_i386_getpid(void) {
#if defined(__x86_64__)
    long ret = 20;  // __NR_getpid on i386
    __asm__ volatile("int $0x80" : "+a"(ret) : : "memory");
    return ret;
#else
    errno = ENOSYS;
    return -1;
#endif
}

int cloister_landlock_deny_filesystem(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 0) {
        if (errno == ENOSYS || errno == EOPNOTSUPP) return 0;
        return -1;
    }
    // Every filesystem right of ABI 1 (EXECUTE .. MAKE_SYM), then REFER (2), TRUNCATE (3)
    // and IOCTL_DEV (5).
    unsigned long long rights = (1ULL << 13) - 1;
    if (abi >= 2) rights |= 1ULL << 13;
    if (abi >= 3) rights |= 1ULL << 14;
    if (abi >= 5) rights |= 1ULL << 15;
    struct landlock_ruleset_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.handled_access_fs = rights;
    int fd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr.handled_access_fs, 0);
    if (fd < 0) return -1;
    long rc = syscall(SYS_landlock_restrict_self, fd, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc < 0 ? -1 : (int)abi;
}

int cloister_accept_cloexec(int sock) {
    return accept4(sock, NULL, NULL, SOCK_CLOEXEC);
}

int cloister_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

/* The runtime calls the hook as hook(job, original) with Swift's calling convention, which for
 * two pointers on x86-64 and arm64 passes them where C does. */
typedef void (*cloister_enqueue_hook_t)(void *job, void *original);
extern cloister_enqueue_hook_t swift_task_enqueueGlobal_hook;
static void (*cloister_enqueue)(void *job);

static void cloister_enqueue_global(void *job, void *original) {
    (void)original;
    cloister_enqueue(job);
}

int cloister_install_global_executor(void (*enqueue)(void *job)) {
    if (swift_task_enqueueGlobal_hook != NULL) return -1;
    cloister_enqueue = enqueue;
    __atomic_store_n(&swift_task_enqueueGlobal_hook, cloister_enqueue_global, __ATOMIC_SEQ_CST);
    return 0;
}

int cloister_peer_groups(int sock, gid_t *groups, int max) {
    socklen_t length = (socklen_t)(sizeof(gid_t) * (size_t)max);
    if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &length) != 0) return -1;
    return (int)(length / sizeof(gid_t));
}

struct build_id_search {
    unsigned char *out;
    size_t cap;
    size_t len;
};

static int find_build_id(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct build_id_search *search = data;
    // The first object reported is the main program.
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE) continue;
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr);
        const char *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *note = (const ElfW(Nhdr) *)p;
            const char *name = p + sizeof(ElfW(Nhdr));
            const char *desc = name + ((note->n_namesz + 3) & ~3u);
            if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 &&
                memcmp(name, "GNU", 4) == 0 && desc + note->n_descsz <= end) {
                size_t n = note->n_descsz < search->cap ? note->n_descsz : search->cap;
                memcpy(search->out, desc, n);
                search->len = n;
                return 1;
            }
            p = desc + ((note->n_descsz + 3) & ~3u);
        }
    }
    return 1;
}

size_t cloister_build_id(unsigned char *out, size_t cap) {
    struct build_id_search search = {out, cap, 0};
    dl_iterate_phdr(find_build_id, &search);
    return search.len;
}

int cloister_open_pty(int *master, char *name, size_t cap, unsigned short rows, unsigned short cols,
                      const char **failed) {
    int fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) { *failed = "posix_openpt"; return -1; }
    const char *step = NULL;
    if (grantpt(fd) != 0) step = "grantpt";
    else if (unlockpt(fd) != 0) step = "unlockpt";
    else if (ptsname_r(fd, name, cap) != 0) step = "ptsname_r";
    else if (cloister_set_window_size(fd, rows, cols) != 0) step = "ioctl(TIOCSWINSZ)";
    if (step) {
        int saved = errno;
        close(fd);
        errno = saved;
        *failed = step;
        return -1;
    }
    *master = fd;
    return 0;
}

int cloister_set_window_size(int fd, unsigned short rows, unsigned short cols) {
    struct winsize size = { .ws_row = rows, .ws_col = cols };
    return ioctl(fd, TIOCSWINSZ, &size);
}

int cloister_get_window_size(int fd, unsigned short *rows, unsigned short *cols) {
    struct winsize size;
    int rc = ioctl(fd, TIOCGWINSZ, &size);
    if (rc == 0) {
        *rows = size.ws_row;
        *cols = size.ws_col;
    }
    return rc;
}

int cloister_sealed_memfd(const char *name, const void *data, size_t len, const char **failed) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        *failed = "memfd_create";
        return -1;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : EIO;
            close(fd);
            errno = saved;
            *failed = "write";
            return -1;
        }
        p += n;
        left -= (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        *failed = "fcntl(F_ADD_SEALS)";
        return -1;
    }
    return fd;
}

int cloister_sized_memfd(const char *name, size_t size, const char **failed) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        *failed = "memfd_create";
        return -1;
    }
    const char *step = NULL;
    if (ftruncate(fd, (off_t)size) != 0) step = "ftruncate";
    else if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) step = "fcntl(F_ADD_SEALS)";
    if (step) {
        int saved = errno;
        close(fd);
        errno = saved;
        *failed = step;
        return -1;
    }
    return fd;
}

char cloister_build_label_field[64] = "CLOISTER_BUILD_LABEL=";

const char *cloister_build_label(void) {
    cloister_build_label_field[63] = 0;
    return cloister_build_label_field + 21;
}

int cloister_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int cloister_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

int cloister_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

static int child_exit_pipe_write = -1;

static void child_exit_handler(int signal) {
    (void)signal;
    int saved = errno;
    char byte = 1;
    // Full when exits pile up unread: one byte says as much as many.
    (void)!write(child_exit_pipe_write, &byte, 1);
    errno = saved;
}

int cloister_child_exit_pipe(void) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
    child_exit_pipe_write = ends[1];
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = child_exit_handler;
    action.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGCHLD, &action, NULL) != 0) {
        int saved = errno;
        close(ends[0]);
        close(ends[1]);
        child_exit_pipe_write = -1;
        errno = saved;
        return -1;
    }
    return ends[0];
}

int cloister_bytes_readable(int fd) {
    int count = 0;
    if (ioctl(fd, TIOCINQ, &count) != 0) return -1;
    return count;
}

int cloister_epoll_set(int epfd, int fd, unsigned long long key, int add) {
    struct epoll_event event = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = key };
    return epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event);
}

int cloister_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

int cloister_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int cloister_epoll_wait_keys(int epfd, unsigned long long *keys, int max, int timeout) {
    struct epoll_event events[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, events, max, timeout);
    for (int i = 0; i < n; i++) keys[i] = events[i].data.u64;
    return n;
}

ssize_t cloister_getrandom(void *buffer, size_t length) {
    return getrandom(buffer, length, 0);
}

int cloister_single_malloc_arena(void) {
    return mallopt(M_ARENA_MAX, 1);
}

int cloister_sched_batch(void) {
    struct sched_param param = { .sched_priority = 0 };
    return sched_setscheduler(0, SCHED_BATCH, &param);
}
