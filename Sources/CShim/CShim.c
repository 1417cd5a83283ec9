#define _GNU_SOURCE
#include "CShim.h"

#include <elf.h>
#include <errno.h>
#include <link.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
    *msg_flags = msg.msg_flags;
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            *foreign_cmsg = 1;
            continue;
        }
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *data = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i, sizeof fd);
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                // More than the caller allows: report the count but keep nothing.
                close(fd);
                *msg_flags |= MSG_CTRUNC;
            }
        }
    }
    return n;
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
