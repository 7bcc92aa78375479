/* The benchmark's reference server: the least a USB/IP server can do, in C.
 *
 * One thread, epoll, non-blocking sockets, TCP_NODELAY. It answers OP_REQ_DEVLIST (one device,
 * busid 1-1) and OP_REQ_IMPORT (any busid "B-D" is accepted and reported with busnum B,
 * devnum D+1, so 1-1 has devid (1<<16)|2 like usbwire's demo device). In the URB phase every
 * CMD_SUBMIT gets a RET_SUBMIT sent with ONE write (writev of header + data) as soon as it is
 * parsed: no batching, which is what makes it "naive" and what a Python server can beat on CPU
 * time per URB.
 *
 *   control IN GET_DESCRIPTOR(device)  -> the 18-byte device descriptor (cut to wLength)
 *   other control IN                   -> wLength zero bytes
 *   control OUT (SET_CONFIGURATION...) -> status 0, actual_length = transfer_buffer_length
 *   bulk OUT                           -> bytes appended to the connection's FIFO
 *   bulk IN                            -> up to transfer_buffer_length bytes from the FIFO;
 *                                         if the FIFO is empty, that many zero bytes (it never
 *                                         parks an URB: the load generator never needs it to)
 *   CMD_UNLINK                         -> RET_UNLINK status 0 (nothing is ever pending)
 *
 * Usage: echo_server [--host ADDR] [--port N]   (prints "listening on ADDR:PORT" to stderr)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "usbip_wire.h"

#define MAX_TRANSFER (16u * 1024u * 1024u)
#define MAX_BACKLOG (8u * 1024u * 1024u)

enum phase { PHASE_OP, PHASE_URB, PHASE_CLOSE_AFTER_WRITE };

struct buf {
    uint8_t *data;
    size_t head; /* first unread byte */
    size_t len;  /* bytes from head */
    size_t cap;
};

struct conn {
    int fd;
    enum phase phase;
    int want_out; /* EPOLLOUT registered */
    struct buf in;
    struct buf out;  /* replies the socket did not take yet */
    struct buf fifo; /* loopback bytes: bulk OUT appends, bulk IN takes */
};

static const uint8_t device_descriptor[18] = {
    18, 1, 0x00, 0x02, 0xff, 0x00, 0x00, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
};
static uint8_t zeros[65536];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int buf_reserve(struct buf *b, size_t extra)
{
    if (b->head + b->len + extra <= b->cap)
        return 0;
    if (b->head > 0) {
        memmove(b->data, b->data + b->head, b->len);
        b->head = 0;
        if (b->len + extra <= b->cap)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *data = realloc(b->data, cap);
    if (!data)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_append(struct buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n))
        return -1;
    memcpy(b->data + b->head + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->head += n;
    b->len -= n;
    if (b->len == 0)
        b->head = 0;
}

static void conn_free(int epfd, struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c->fifo.data);
    free(c);
}

static void set_events(int epfd, struct conn *c, int want_out)
{
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

/* One reply, one write; whatever the socket does not take waits in c->out, in order. */
static int send_reply(int epfd, struct conn *c, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t total = alen + blen, sent = 0;
    if (c->out.len == 0) {
        struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
        ssize_t n = writev(c->fd, iov, blen ? 2 : 1);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            n = 0;
        }
        sent = (size_t)n;
        if (sent == total)
            return 0;
    }
    if (sent < alen) {
        if (buf_append(&c->out, a + sent, alen - sent) || buf_append(&c->out, b, blen))
            return -1;
    } else if (buf_append(&c->out, b + (sent - alen), total - sent)) {
        return -1;
    }
    set_events(epfd, c, 1);
    return 0;
}

static int flush_out(int epfd, struct conn *c)
{
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out.head, c->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        buf_consume(&c->out, (size_t)n);
    }
    set_events(epfd, c, 0);
    return c->phase == PHASE_CLOSE_AFTER_WRITE ? -1 : 0;
}

static void fill_device_record(uint8_t *rec, const char *busid, uint32_t busnum, uint32_t devnum)
{
    memset(rec, 0, USB_DEVICE_LEN);
    snprintf((char *)rec, 256, "/sys/devices/platform/bench/usb%u/%s", busnum, busid);
    memcpy(rec + 0x100, busid, strnlen(busid, 31));
    put_be32(rec + 0x120, busnum);
    put_be32(rec + 0x124, devnum);
    put_be32(rec + 0x128, 3); /* high speed */
    put_be16(rec + 0x12c, 0x1209);
    put_be16(rec + 0x12e, 0x0001);
    put_be16(rec + 0x130, 0x0100);
    rec[0x132] = 0xff; /* vendor class */
    rec[0x135] = 0;    /* unconfigured, as a freshly bound device */
    rec[0x136] = 1;
    rec[0x137] = 0;
}

/* Returns bytes consumed, 0 when more input is needed, -1 to close. */
static long handle_op(int epfd, struct conn *c, const uint8_t *p, size_t avail)
{
    if (avail < OP_COMMON_LEN)
        return 0;
    uint16_t version = get_be16(p), code = get_be16(p + 2);
    if (version != USBIP_VERSION || get_be32(p + 4) != 0)
        return -1;
    if (code == OP_REQ_DEVLIST) {
        uint8_t reply[OP_COMMON_LEN + 4 + USB_DEVICE_LEN + 4];
        memset(reply, 0, sizeof reply);
        put_be16(reply, USBIP_VERSION);
        put_be16(reply + 2, OP_REP_DEVLIST);
        put_be32(reply + 8, 1);
        fill_device_record(reply + 12, "1-1", 1, 2);
        reply[12 + 0x135] = 1; /* list it configured with its one vendor interface */
        reply[12 + 0x137] = 1;
        reply[12 + USB_DEVICE_LEN] = 0xff;
        c->phase = PHASE_CLOSE_AFTER_WRITE;
        if (send_reply(epfd, c, reply, sizeof reply, NULL, 0) || c->out.len == 0)
            return -1;
        return OP_COMMON_LEN;
    }
    if (code == OP_REQ_IMPORT) {
        if (avail < OP_COMMON_LEN + BUSID_LEN)
            return 0;
        char busid[BUSID_LEN + 1];
        memcpy(busid, p + OP_COMMON_LEN, BUSID_LEN);
        busid[BUSID_LEN] = 0;
        unsigned busnum = 1, devnum = 1;
        if (sscanf(busid, "%u-%u", &busnum, &devnum) != 2) {
            busnum = 1;
            devnum = 1;
        }
        uint8_t reply[OP_COMMON_LEN + USB_DEVICE_LEN];
        memset(reply, 0, OP_COMMON_LEN);
        put_be16(reply, USBIP_VERSION);
        put_be16(reply + 2, OP_REP_IMPORT);
        fill_device_record(reply + OP_COMMON_LEN, busid, busnum, devnum + 1);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (send_reply(epfd, c, reply, sizeof reply, NULL, 0))
            return -1;
        c->phase = PHASE_URB;
        return OP_COMMON_LEN + BUSID_LEN;
    }
    return -1;
}

static long handle_urb(int epfd, struct conn *c, const uint8_t *p, size_t avail)
{
    if (avail < URB_HEADER_LEN)
        return 0;
    uint32_t command = get_be32(p), direction = get_be32(p + 12), ep = get_be32(p + 16);
    uint8_t reply[URB_HEADER_LEN];
    memset(reply, 0, sizeof reply);
    put_be32(reply + 4, get_be32(p + 4)); /* seqnum */
    if (command == CMD_UNLINK) {
        put_be32(reply, RET_UNLINK);
        return send_reply(epfd, c, reply, sizeof reply, NULL, 0) ? -1 : URB_HEADER_LEN;
    }
    if (command != CMD_SUBMIT)
        return -1;
    uint32_t length = get_be32(p + 24);
    if (length > MAX_TRANSFER)
        return -1;
    size_t need = URB_HEADER_LEN + (direction == DIR_OUT ? length : 0);
    if (avail < need)
        return 0;
    put_be32(reply, RET_SUBMIT);
    memcpy(reply + 28, p + 28, 8); /* start_frame, number_of_packets: echoed for non-iso */
    const uint8_t *data = NULL;
    size_t data_len = 0;
    int from_fifo = 0;
    if (direction == DIR_OUT) {
        if (ep != 0 && buf_append(&c->fifo, p + URB_HEADER_LEN, length))
            return -1;
        put_be32(reply + 24, length);
    } else if (ep == 0) {
        const uint8_t *setup = p + 40;
        size_t wlength = (size_t)(setup[6] | (setup[7] << 8));
        if (wlength > length)
            wlength = length;
        if (setup[0] == 0x80 && setup[1] == 6 && setup[3] == 1) {
            data = device_descriptor;
            data_len = wlength < sizeof device_descriptor ? wlength : sizeof device_descriptor;
        } else {
            data = zeros;
            data_len = wlength < sizeof zeros ? wlength : sizeof zeros;
        }
    } else if (c->fifo.len) {
        data = c->fifo.data + c->fifo.head;
        data_len = c->fifo.len < length ? c->fifo.len : length;
        from_fifo = 1;
    } else {
        data = zeros;
        data_len = length < sizeof zeros ? length : sizeof zeros;
    }
    if (direction == DIR_IN)
        put_be32(reply + 24, (uint32_t)data_len);
    if (send_reply(epfd, c, reply, sizeof reply, data, data_len))
        return -1;
    if (from_fifo)
        buf_consume(&c->fifo, data_len);
    return (long)need;
}

static int on_readable(int epfd, struct conn *c)
{
    for (;;) {
        if (buf_reserve(&c->in, 65536))
            return -1;
        ssize_t n = recv(c->fd, c->in.data + c->in.head + c->in.len, c->in.cap - c->in.head - c->in.len, 0);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->in.len += (size_t)n;
        for (;;) {
            const uint8_t *p = c->in.data + c->in.head;
            long used;
            if (c->phase == PHASE_OP)
                used = handle_op(epfd, c, p, c->in.len);
            else if (c->phase == PHASE_URB)
                used = handle_urb(epfd, c, p, c->in.len);
            else
                used = 0;
            if (used < 0)
                return -1;
            if (used == 0)
                break;
            buf_consume(&c->in, (size_t)used);
        }
        if (c->out.len > MAX_BACKLOG)
            return 0; /* the client is not reading: stop parsing until it does */
        if ((size_t)n < 65536)
            return 0; /* drained the socket (level-triggered epoll reports the rest) */
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc)
            host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--host ADDR] [--port N]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "bad --host %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 1024))
        die("bind/listen");
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    fprintf(stderr, "listening on %s:%u\n", host, ntohs(addr.sin_port));
    fflush(stderr);

    int epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            int bad = 0;
            if (events[i].events & (EPOLLERR | EPOLLHUP))
                bad = 1;
            if (!bad && (events[i].events & EPOLLOUT))
                bad = flush_out(epfd, c) < 0;
            if (!bad && (events[i].events & EPOLLIN) && c->out.len <= MAX_BACKLOG)
                bad = on_readable(epfd, c) < 0;
            if (bad)
                conn_free(epfd, c);
        }
    }
}
