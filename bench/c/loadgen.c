/* The benchmark's load generator: the same client for every server, written in C so that it is
 * not the thing being measured.
 *
 * For each target it connects, sets TCP_NODELAY, does the OP_REQ_IMPORT handshake itself and
 * takes the devid from OP_REP_IMPORT. In bulk mode it then sends SET_CONFIGURATION(1) and waits
 * for its reply. Then it keeps INFLIGHT URBs outstanding on every connection:
 *
 *   ctrl  control IN GET_DESCRIPTOR(device, 18 bytes) on ep 0; a reply must carry 18 bytes
 *         starting 0x12 0x01.
 *   bulk  SIZE-byte bulk OUT on ep 1 and SIZE-byte bulk IN on ep 1, alternating OUT, IN, OUT, IN
 *         (so every IN is submitted after the OUT whose bytes it reads back). Each URB counts as
 *         one; an OUT+IN pair is two. The first 4 bytes of each OUT carry a counter; each IN must
 *         return the next counter in order (a loopback that loses, duplicates or reorders data
 *         is counted in "errors").
 *
 * A completed URB is replaced at once; replacements leave in one write per read() (or, with
 * -b N, in writes of exactly N URBs, once N are due). Runs for WARMUP + DURATION seconds
 * (only DURATION is measured) or, with -c, until COUNT URBs completed. At the end it stops
 * submitting (after the IN matching the last OUT) and waits for every URB outstanding, so the
 * device is left with nothing queued. The result is one JSON object on stdout.
 *
 * Usage: loadgen -t HOST:PORT:BUSID [-t ...] [-m ctrl|bulk] [-s SIZE] [-n INFLIGHT] [-b BATCH]
 *                [-w WARMUP_S] [-d DURATION_S] [-c COUNT] [-p CPU] [-P PROGRESS_EVERY]
 *   -p CPU pins this process with sched_setaffinity; -P prints "progress URBS" lines to stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "usbip_wire.h"

#define SLOTS 65536u /* seqnum -> submit record; far more than can be outstanding */
#define HIST_NS 100u /* latency histogram resolution */
#define HIST_BUCKETS 2000000u /* 100 ns x 2M = 200 ms, then one overflow bucket */
#define MAX_TARGETS 4096

enum mode { MODE_CTRL, MODE_BULK };

struct slot {
    uint64_t t_submit;
    uint8_t direction;
    uint8_t used;
};

struct conn {
    int fd;
    uint32_t devid;
    uint32_t seqnum;
    int next_is_out;
    uint32_t out_counter, in_counter;
    uint32_t outstanding;
    int want_out;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_head, out_len, out_cap;
    uint32_t *unsent; /* byte length of each URB in out[] not yet handed to send() */
    uint32_t unsent_head, unsent_count, unsent_cap;
    size_t unsent_partial; /* bytes of the head URB already sent */
    struct slot *slots;
};

static enum mode mode = MODE_CTRL;
static uint32_t size = 64, inflight = 1, batch = 1;
static double warmup_s = 0.2, duration_s = 1.0;
static uint64_t count_limit = 0, progress_every = 0;
static uint32_t *hist;
static uint64_t hist_overflow;
static uint64_t measured_urbs, measured_bytes, total_urbs, errors, writes, urbs_written, reads;
static int measuring, stopping;
static uint8_t *payload;

static void fail(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void failx(const char *what)
{
    fprintf(stderr, "loadgen: %s\n", what);
    exit(1);
}

static void read_exact(int fd, uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            failx(r == 0 ? "server closed the connection during the handshake" : "recv");
        p += r;
        n -= (size_t)r;
    }
}

static void write_exact(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
        if (r <= 0)
            fail("send");
        p += r;
        n -= (size_t)r;
    }
}

static int connect_target(const char *spec, char *busid_out)
{
    char host[256];
    unsigned port;
    if (sscanf(spec, "%255[^:]:%u:%31s", host, &port, busid_out) != 3)
        failx("a target is HOST:PORT:BUSID");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        failx("target host must be an IPv4 address");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr))
        fail("connect");
    return fd;
}

/* OP_REQ_IMPORT -> OP_REP_IMPORT; returns the devid (busnum << 16 | devnum). */
static uint32_t import_device(int fd, const char *busid)
{
    uint8_t req[OP_COMMON_LEN + BUSID_LEN];
    memset(req, 0, sizeof req);
    put_be16(req, USBIP_VERSION);
    put_be16(req + 2, OP_REQ_IMPORT);
    memcpy(req + OP_COMMON_LEN, busid, strnlen(busid, BUSID_LEN - 1));
    write_exact(fd, req, sizeof req);
    uint8_t rep[OP_COMMON_LEN + USB_DEVICE_LEN];
    read_exact(fd, rep, OP_COMMON_LEN);
    if (get_be16(rep + 2) != OP_REP_IMPORT || get_be32(rep + 4) != 0) {
        fprintf(stderr, "loadgen: import of %s refused (code 0x%04x status %u)\n", busid, get_be16(rep + 2),
                get_be32(rep + 4));
        exit(1);
    }
    read_exact(fd, rep + OP_COMMON_LEN, USB_DEVICE_LEN);
    const uint8_t *dev = rep + OP_COMMON_LEN;
    if (strncmp((const char *)dev + 0x100, busid, BUSID_LEN))
        failx("OP_REP_IMPORT names another busid");
    return (get_be32(dev + 0x120) << 16) | get_be32(dev + 0x124);
}

static void put_header(uint8_t *h, uint32_t seqnum, uint32_t devid, uint32_t direction, uint32_t ep, uint32_t length)
{
    memset(h, 0, URB_HEADER_LEN);
    put_be32(h, CMD_SUBMIT);
    put_be32(h + 4, seqnum);
    put_be32(h + 8, devid);
    put_be32(h + 12, direction);
    put_be32(h + 16, ep);
    put_be32(h + 20, direction == DIR_IN ? 0x200 : 0); /* USBIP_URB_DIR_IN, as Linux sends */
    put_be32(h + 24, length);
}

/* SET_CONFIGURATION(1), synchronously: the loopback's endpoints exist only once configured. */
static void set_configuration(struct conn *c)
{
    uint8_t h[URB_HEADER_LEN];
    put_header(h, ++c->seqnum, c->devid, DIR_OUT, 0, 0);
    static const uint8_t setup[8] = {0x00, 9, 1, 0, 0, 0, 0, 0};
    memcpy(h + 40, setup, 8);
    write_exact(c->fd, h, sizeof h);
    uint8_t r[URB_HEADER_LEN];
    read_exact(c->fd, r, sizeof r);
    if (get_be32(r) != RET_SUBMIT || get_be32(r + 4) != c->seqnum || get_be32(r + 20) != 0)
        failx("SET_CONFIGURATION failed");
}

static void out_reserve(struct conn *c, size_t extra)
{
    if (c->out_head + c->out_len + extra <= c->out_cap)
        return;
    if (c->out_head) {
        memmove(c->out, c->out + c->out_head, c->out_len);
        c->out_head = 0;
    }
    if (c->out_len + extra > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 65536;
        while (cap < c->out_len + extra)
            cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out)
            failx("out of memory");
        c->out_cap = cap;
    }
}

static void queue_urb(struct conn *c, uint64_t t)
{
    uint32_t seqnum = ++c->seqnum;
    struct slot *s = &c->slots[seqnum & (SLOTS - 1)];
    if (s->used)
        failx("seqnum slot still in use (an URB has been outstanding for 65536 others)");
    size_t len = URB_HEADER_LEN;
    out_reserve(c, URB_HEADER_LEN + size);
    uint8_t *h = c->out + c->out_head + c->out_len;
    if (mode == MODE_CTRL) {
        put_header(h, seqnum, c->devid, DIR_IN, 0, 18);
        static const uint8_t setup[8] = {0x80, 6, 0, 1, 0, 0, 18, 0}; /* GET_DESCRIPTOR(device) */
        memcpy(h + 40, setup, 8);
        s->direction = DIR_IN;
    } else if (c->next_is_out) {
        put_header(h, seqnum, c->devid, DIR_OUT, 1, size);
        memcpy(h + URB_HEADER_LEN, payload, size);
        if (size >= 4)
            put_be32(h + URB_HEADER_LEN, c->out_counter);
        c->out_counter++;
        len += size;
        s->direction = DIR_OUT;
        c->next_is_out = 0;
    } else {
        put_header(h, seqnum, c->devid, DIR_IN, 1, size);
        s->direction = DIR_IN;
        c->next_is_out = 1;
    }
    c->out_len += len;
    s->used = 1;
    s->t_submit = t;
    c->outstanding++;
    if (c->unsent_count == c->unsent_cap)
        failx("unsent queue overflow");
    c->unsent[(c->unsent_head + c->unsent_count) % c->unsent_cap] = (uint32_t)len;
    c->unsent_count++;
}

/* Hand queued URBs to the socket: everything (batch 1) or whole groups of `batch` URBs. */
static int flush(struct conn *c, uint64_t t)
{
    while (c->unsent_count && (batch <= 1 || c->unsent_count >= batch || stopping)) {
        uint32_t n_urbs = batch <= 1 || stopping ? c->unsent_count : batch;
        size_t bytes = 0;
        for (uint32_t i = 0; i < n_urbs; i++)
            bytes += c->unsent[(c->unsent_head + i) % c->unsent_cap];
        bytes -= c->unsent_partial;
        ssize_t r = send(c->fd, c->out + c->out_head, bytes, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            fail("send");
        }
        writes++;
        c->out_head += (size_t)r;
        c->out_len -= (size_t)r;
        if (c->out_len == 0)
            c->out_head = 0;
        size_t done = (size_t)r + c->unsent_partial;
        while (c->unsent_count && done >= c->unsent[c->unsent_head]) {
            done -= c->unsent[c->unsent_head];
            c->unsent_head = (c->unsent_head + 1) % c->unsent_cap;
            c->unsent_count--;
            urbs_written++;
        }
        c->unsent_partial = done;
        if ((size_t)r < bytes)
            return 1;
    }
    (void)t;
    return 0;
}

static void record(uint64_t latency_ns)
{
    uint64_t b = latency_ns / HIST_NS;
    if (b >= HIST_BUCKETS)
        hist_overflow++;
    else
        hist[b]++;
}

/* Parse every complete RET_SUBMIT in c->in; returns URBs completed. */
static uint32_t parse_replies(struct conn *c, uint64_t t)
{
    size_t off = 0;
    uint32_t completed = 0;
    while (c->in_len - off >= URB_HEADER_LEN) {
        const uint8_t *h = c->in + off;
        uint32_t command = get_be32(h), seqnum = get_be32(h + 4);
        int32_t status = (int32_t)get_be32(h + 20);
        uint32_t actual = get_be32(h + 24);
        struct slot *s = &c->slots[seqnum & (SLOTS - 1)];
        if (command != RET_SUBMIT || !s->used)
            failx("unexpected reply (not a RET_SUBMIT for an outstanding seqnum)");
        size_t data = s->direction == DIR_IN ? actual : 0;
        if (c->in_len - off < URB_HEADER_LEN + data)
            break;
        const uint8_t *d = h + URB_HEADER_LEN;
        if (status != 0)
            errors++;
        else if (mode == MODE_CTRL) {
            if (actual != 18 || d[0] != 18 || d[1] != 1)
                errors++;
        } else if (actual != size) {
            errors++;
        } else if (s->direction == DIR_IN) {
            if (size >= 4 && get_be32(d) != c->in_counter)
                errors++;
            c->in_counter++;
        }
        if (measuring) {
            record(t - s->t_submit);
            measured_urbs++;
            measured_bytes += actual;
        }
        s->used = 0;
        c->outstanding--;
        total_urbs++;
        completed++;
        off += URB_HEADER_LEN + data;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return completed;
}

static void grow_in(struct conn *c)
{
    size_t want = 2 * (URB_HEADER_LEN + (size_t)size) + 65536;
    if (c->in_cap - c->in_len >= 65536 && c->in_cap >= want)
        return;
    size_t cap = c->in_cap ? c->in_cap : 262144;
    while (cap < want || cap - c->in_len < 65536)
        cap *= 2;
    c->in = realloc(c->in, cap);
    if (!c->in)
        failx("out of memory");
    c->in_cap = cap;
}

/* Read what is there, complete URBs, queue their replacements. Returns -1 on EOF. */
static int on_readable(struct conn *c, int blocking)
{
    grow_in(c);
    ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, blocking ? 0 : MSG_DONTWAIT);
    if (r == 0)
        failx("server closed the connection");
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        fail("recv");
    }
    reads++;
    c->in_len += (size_t)r;
    uint64_t t = now_ns();
    uint32_t done = parse_replies(c, t);
    for (uint32_t i = 0; i < done; i++) {
        if (stopping) {
            if (mode == MODE_BULK && !c->next_is_out)
                queue_urb(c, t); /* the IN that reads back the last OUT */
            continue;
        }
        if (count_limit && total_urbs + c->outstanding >= count_limit) {
            if (mode == MODE_BULK && !c->next_is_out)
                queue_urb(c, t);
            continue;
        }
        queue_urb(c, t);
    }
    return 0;
}

static double percentile(double q, uint64_t n)
{
    if (n == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)(n - 1)) + 1, seen = 0;
    for (uint32_t b = 0; b < HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen >= rank)
            return ((double)b + 0.5) * HIST_NS / 1000.0;
    }
    return (double)HIST_BUCKETS * HIST_NS / 1000.0;
}

int main(int argc, char **argv)
{
    const char *targets[MAX_TARGETS];
    int ntargets = 0, cpu = -1, opt;
    while ((opt = getopt(argc, argv, "t:m:s:n:b:w:d:c:p:P:")) != -1) {
        switch (opt) {
        case 't':
            if (ntargets == MAX_TARGETS)
                failx("too many targets");
            targets[ntargets++] = optarg;
            break;
        case 'm':
            mode = !strcmp(optarg, "bulk") ? MODE_BULK : MODE_CTRL;
            if (strcmp(optarg, "bulk") && strcmp(optarg, "ctrl"))
                failx("-m is ctrl or bulk");
            break;
        case 's': size = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'n': inflight = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'b': batch = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'w': warmup_s = atof(optarg); break;
        case 'd': duration_s = atof(optarg); break;
        case 'c': count_limit = strtoull(optarg, NULL, 0); break;
        case 'p': cpu = atoi(optarg); break;
        case 'P': progress_every = strtoull(optarg, NULL, 0); break;
        default:
            fprintf(stderr, "usage: %s -t HOST:PORT:BUSID [-m ctrl|bulk] [-s SIZE] [-n INFLIGHT] [-b BATCH] "
                            "[-w S] [-d S] [-c COUNT] [-p CPU] [-P N]\n", argv[0]);
            return 2;
        }
    }
    if (ntargets == 0 || inflight == 0 || inflight > SLOTS / 4 || (mode == MODE_BULK && size == 0))
        failx("need -t, 1 <= -n <= 16384, and -s > 0 in bulk mode");
    if (batch > inflight)
        failx("-b must not exceed -n");
    signal(SIGPIPE, SIG_IGN);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set))
            fail("sched_setaffinity");
    }
    hist = calloc(HIST_BUCKETS, sizeof *hist);
    payload = malloc(size ? size : 1);
    if (!hist || !payload)
        failx("out of memory");
    for (uint32_t i = 0; i < size; i++)
        payload[i] = (uint8_t)(i * 7 + 1);

    struct conn *conns = calloc((size_t)ntargets, sizeof *conns);
    for (int i = 0; i < ntargets; i++) {
        char busid[BUSID_LEN] = {0};
        struct conn *c = &conns[i];
        c->fd = connect_target(targets[i], busid);
        c->devid = import_device(c->fd, busid);
        c->slots = calloc(SLOTS, sizeof *c->slots);
        c->unsent_cap = inflight + 2;
        c->unsent = calloc(c->unsent_cap, sizeof *c->unsent);
        c->next_is_out = 1;
        if (!c->slots || !c->unsent)
            failx("out of memory");
        if (mode == MODE_BULK)
            set_configuration(c);
        /* A blocking recv() wakes up at least once a second, so a stalled server is noticed. */
        struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    int epfd = -1;
    if (ntargets > 1) {
        epfd = epoll_create1(0);
        for (int i = 0; i < ntargets; i++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
            epoll_ctl(epfd, EPOLL_CTL_ADD, conns[i].fd, &ev);
        }
    }

    uint64_t t0 = now_ns(), t_measure = t0 + (uint64_t)(warmup_s * 1e9), t_end = t_measure + (uint64_t)(duration_s * 1e9);
    uint64_t t_measure_real = 0, t_end_real = 0, next_progress = progress_every;
    if (count_limit) {
        measuring = 1;
        t_measure_real = t0;
    }
    for (int i = 0; i < ntargets; i++) {
        uint32_t first = inflight;
        if (count_limit && first > count_limit / (uint64_t)ntargets + 1)
            first = (uint32_t)(count_limit / (uint64_t)ntargets + 1);
        for (uint32_t k = 0; k < first; k++)
            queue_urb(&conns[i], t0);
        flush(&conns[i], t0);
    }
    struct epoll_event events[256];
    uint64_t last_total = 0, t_last_change = t0;
    for (;;) {
        uint64_t t = now_ns();
        if (total_urbs != last_total) {
            last_total = total_urbs;
            t_last_change = t;
        } else if (t - t_last_change > 10000000000ull) {
            failx("no URB completed for 10 s (the server stalled)");
        }
        if (!count_limit) {
            if (!measuring && !stopping && t >= t_measure) {
                measuring = 1;
                t_measure_real = t;
            } else if (measuring && t >= t_end) {
                measuring = 0;
                stopping = 1;
                t_end_real = t;
            }
        } else if (!stopping && total_urbs >= count_limit) {
            stopping = 1;
        }
        if (progress_every && total_urbs >= next_progress) {
            fprintf(stderr, "progress %llu\n", (unsigned long long)total_urbs);
            fflush(stderr);
            next_progress += progress_every;
        }
        uint64_t pending = 0;
        for (int i = 0; i < ntargets; i++)
            pending += conns[i].outstanding;
        if (stopping && pending == 0)
            break;
        if (stopping && t > (t_end_real ? t_end_real : t) + 5000000000ull)
            failx("URBs still outstanding 5 s after the end");
        if (ntargets == 1) {
            struct conn *c = &conns[0];
            if (flush(c, t)) {
                struct pollfd pfd = {.fd = c->fd, .events = POLLIN | POLLOUT};
                poll(&pfd, 1, 100);
                if (pfd.revents & POLLIN)
                    on_readable(c, 0);
                continue;
            }
            on_readable(c, 1);
        } else {
            int n = epoll_wait(epfd, events, 256, 100);
            for (int i = 0; i < n; i++) {
                struct conn *c = events[i].data.ptr;
                if (events[i].events & EPOLLIN)
                    on_readable(c, 0);
            }
            uint64_t tf = now_ns();
            for (int i = 0; i < ntargets; i++) {
                struct conn *c = &conns[i];
                int blocked = flush(c, tf);
                if (blocked != c->want_out) {
                    struct epoll_event ev = {.events = EPOLLIN | (blocked ? EPOLLOUT : 0), .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                    c->want_out = blocked;
                }
            }
        }
    }
    uint64_t t_done = now_ns();
    if (count_limit)
        t_end_real = t_done;
    double seconds = (double)(t_end_real - t_measure_real) / 1e9;
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu_s = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
                   (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
    uint64_t n = measured_urbs;
    printf("{\"conns\": %d, \"mode\": \"%s\", \"size\": %u, \"inflight\": %u, \"batch\": %u, \"cpu\": %d, "
           "\"urbs\": %llu, \"seconds\": %.6f, \"urbs_per_s\": %.1f, \"mb_per_s\": %.3f, "
           "\"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, \"over_200ms\": %llu, "
           "\"total_urbs\": %llu, \"errors\": %llu, \"writes\": %llu, \"urbs_per_write\": %.2f, "
           "\"reads\": %llu, \"cpu_s\": %.4f}\n",
           ntargets, mode == MODE_BULK ? "bulk" : "ctrl", mode == MODE_BULK ? size : 18, inflight, batch, cpu,
           (unsigned long long)n, seconds, seconds > 0 ? (double)n / seconds : 0.0,
           seconds > 0 ? (double)measured_bytes / seconds / 1e6 : 0.0, percentile(0.50, n), percentile(0.99, n),
           percentile(0.999, n), (unsigned long long)hist_overflow, (unsigned long long)total_urbs,
           (unsigned long long)errors, (unsigned long long)writes,
           writes ? (double)urbs_written / (double)writes : 0.0, (unsigned long long)reads, cpu_s);
    for (int i = 0; i < ntargets; i++)
        close(conns[i].fd);
    return 0;
}
