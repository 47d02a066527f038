/* The native data path of nslab's soft RoCEv2 provider ("softnic").
 *
 * One Engine per device context: a UDP socket (port 4791), a thread of its
 * own that never takes the GIL, and the RC transport of every QP on it:
 * PSNs, coalesced ACKs (the requester asks for one every ACK_EVERY packets
 * and at the end of a message), a retransmit timer with go-back-N, NAK-
 * sequence fast retransmit, RNR NAKs, READ responses straight from
 * registered memory, WRITE/READ/SEND segmentation and reassembly, the ICRC,
 * and rkey/bounds/access checks. Completions go into rings in memory that
 * Python owns and polls without a system call.
 *
 * nslab/rdma/soft.py is the readable reference of the same state machine
 * (method names match: pump, go_back, ack_upto, on_request, ...). One
 * difference, on the wire the same: this requester places READ responses by
 * PSN in any order and asks again for a lost one alone (read_repair), where
 * the reference goes back N for READs too. The Python side
 * (nslab/rdma/native.py) keeps the verbs API and the control path (QP
 * set-up, memory registration, CM).
 *
 * Locking: one mutex per engine guards every QP, MR and CQ of it. Python
 * calls (post_send, post_recv, progress, modify) take it with the GIL
 * released; the engine thread takes it per batch of packets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* ---- verbs constants (pyverbs values, as in nslab/rdma/enums.py) */
enum { ACC_LOCAL_WRITE = 1, ACC_REMOTE_WRITE = 2, ACC_REMOTE_READ = 4 };
enum { QPS_RESET = 0, QPS_INIT = 1, QPS_RTR = 2, QPS_RTS = 3, QPS_ERR = 6 };
enum { WR_WRITE = 0, WR_WRITE_IMM = 1, WR_SEND = 2, WR_SEND_IMM = 3, WR_READ = 4 };
enum { WC_SEND = 0, WC_RDMA_WRITE = 1, WC_RDMA_READ = 2, WC_RECV = 128, WC_RECV_RDMA_IMM = 129 };
enum {
    WC_SUCCESS = 0, WC_LOC_LEN_ERR = 1, WC_LOC_PROT_ERR = 4, WC_WR_FLUSH_ERR = 5,
    WC_BAD_RESP_ERR = 7, WC_REM_INV_REQ_ERR = 9, WC_REM_ACCESS_ERR = 10, WC_REM_OP_ERR = 11,
    WC_RETRY_EXC_ERR = 12, WC_RNR_RETRY_EXC_ERR = 13
};
enum { WC_WITH_IMM = 2 };

/* ---- RoCEv2 opcodes (RC) and AETH syndromes, as in nslab/rdma/wire.py */
enum {
    SEND_FIRST = 0x00, SEND_MIDDLE, SEND_LAST, SEND_LAST_IMM, SEND_ONLY, SEND_ONLY_IMM,
    WRITE_FIRST, WRITE_MIDDLE, WRITE_LAST, WRITE_LAST_IMM, WRITE_ONLY, WRITE_ONLY_IMM,
    READ_REQUEST, READ_RESP_FIRST, READ_RESP_MIDDLE, READ_RESP_LAST, READ_RESP_ONLY, ACK
};
enum { SYN_ACK = 0x1F, SYN_RNR_NAK = 0x20, SYN_NAK_PSN_SEQ = 0x60, SYN_NAK_INV_REQ = 0x61,
       SYN_NAK_REM_ACCESS = 0x62, SYN_NAK_REM_OP = 0x63 };

#define PSN_MASK 0xFFFFFFu
#define ACK_EVERY 32
#define MAX_INFLIGHT 512
#define READ_INFLIGHT_BYTES (2u << 20)
#define GSO_MAX_SEGS 60
#define GSO_MAX_BYTES 65000
#define MAX_SGE 8
#define RX_BATCH 16
#define RX_BUF 65536
#define TX_BUF (GSO_MAX_BYTES + 8192)
#define CQE_SIZE 48
#define CQ_HDR 64
#define RNR_DELAY_NS 1000000ull
/* The retransmit timer: RTT-based (srtt + 4 rttvar, as TCP's RFC 6298), at
 * least RTO_MIN_NS, at most the QP's configured timeout (attr.timeout), which
 * is also where it starts before the first sample (capped at RTO_INIT_NS).
 * It doubles on each timeout without progress; only firings at the full
 * configured timeout spend one of retry_cnt. */
#define RTO_MIN_NS 1000000ull
#define RTO_INIT_NS 10000000ull
#define RTO_VAR_MIN_NS 200000ull
#define ACTIVE_NS 200000000ull
#define IDLE_WAKE_NS 50000000ull
#define BTH_LEN 12
/* A READ response hole is asked for again once this many later packets are
 * in: a packet displaced by one or two (reordering) is not a loss. */
#define REORDER_SLACK 2

static int has_reth(int op) { return op == WRITE_FIRST || op == WRITE_ONLY || op == WRITE_ONLY_IMM || op == READ_REQUEST; }
static int has_imm(int op) { return op == SEND_LAST_IMM || op == SEND_ONLY_IMM || op == WRITE_LAST_IMM || op == WRITE_ONLY_IMM; }
static uint32_t psn_add(uint32_t p, int64_t n) { return (uint32_t)((int64_t)p + n) & PSN_MASK; }
static int32_t psn_diff(uint32_t a, uint32_t b) {
    uint32_t d = (a - b) & PSN_MASK;
    return (d & 0x800000u) ? (int32_t)d - 0x1000000 : (int32_t)d;
}
static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint32_t rd32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static uint64_t rd64(const uint8_t *p) { return ((uint64_t)rd32(p) << 32) | rd32(p + 4); }
static void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)(v >> 32)); wr32(p + 4, (uint32_t)v); }

/* ---- CRC32 (zlib's polynomial and chaining): carry-less multiplication
 * (PCLMULQDQ) folding where the CPU has it, else slice-by-8 tables. The ICRC
 * of every byte sent and received is the data path's largest cost: tables
 * do ~1 GB/s, folding ~10 GB/s (a 1 MiB READ pays it on both sides). */
static uint32_t crc_tab[8][256];
static int crc_clmul;
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    crc_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1") && !getenv("NSLAB_RDMA_CRC_TABLES");
#endif
}
/* The table CRC on the raw (not inverted) state. */
static uint32_t crc_tables(uint32_t c, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { c = crc_tab[0][(c ^ *p++) & 0xFF] ^ (c >> 8); n--; }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= c;
        c = crc_tab[7][v & 0xFF] ^ crc_tab[6][(v >> 8) & 0xFF] ^ crc_tab[5][(v >> 16) & 0xFF] ^
            crc_tab[4][(v >> 24) & 0xFF] ^ crc_tab[3][(v >> 32) & 0xFF] ^ crc_tab[2][(v >> 40) & 0xFF] ^
            crc_tab[1][(v >> 48) & 0xFF] ^ crc_tab[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = crc_tab[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CLMUL __attribute__((target("pclmul,sse4.1")))
/* One 128-bit fold: x * (x^(k+64), x^k) mod P, plus the next block. */
static inline CLMUL __m128i fold(__m128i x, __m128i k, __m128i next) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}
/* The raw state over n bytes, n >= 64 and a multiple of 16: four lanes fold
 * 512 bits a step, then fold into one, reduce 128 -> 64 -> 32 bits and
 * finish with a Barrett reduction. The constants are powers of x modulo the
 * (bit-reflected) CRC-32 polynomial, as in Intel's paper "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ" (2009). */
static CLMUL uint32_t crc_fold(uint32_t c, const uint8_t *p, size_t n) {
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596ll, 0x154442bd4ll);
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009ell, 0x1751997d0ll);
    const __m128i k64 = _mm_set_epi64x(0, 0x163cd6124ll);
    const __m128i bar = _mm_set_epi64x(0x1f7011641ll, 0x1db710641ll); /* mu, P */
    const __m128i lo32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)c));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
        x0 = fold(x0, k512, _mm_loadu_si128((const __m128i *)p));
        x1 = fold(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = fold(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = fold(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
    }
    x0 = fold(fold(fold(x0, k128, x1), k128, x2), k128, x3);
    for (; n >= 16; p += 16, n -= 16) x0 = fold(x0, k128, _mm_loadu_si128((const __m128i *)p));
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), _mm_clmulepi64_si128(x0, k128, 0x10));
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 4), _mm_clmulepi64_si128(_mm_and_si128(x0, lo32), k64, 0x00));
    __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x0, lo32), bar, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, lo32), bar, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x0, t), 1);
}
#endif
static uint32_t crc32_upd(uint32_t crc, const uint8_t *p, size_t n) {
    uint32_t c = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    if (crc_clmul && n >= 64) {
        size_t m = n & ~(size_t)15;
        c = crc_fold(c, p, m);
        p += m;
        n -= m;
    }
#endif
    return ~crc_tables(c, p, n);
}

/* CRC state after the ICRC's pseudo header (IB annex A17.3.3): 8 x 0xff for
 * the LRH, IPv4 with TOS/TTL/checksum masked, UDP with its checksum masked. */
static uint32_t icrc_seed(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint32_t roce_len, uint16_t ip_id) {
    uint8_t h[36];
    uint32_t udp_len = 8 + roce_len;
    memset(h, 0xFF, 8);
    h[8] = 0x45; h[9] = 0xFF; wr16(h + 10, 20 + udp_len); wr16(h + 12, ip_id); wr16(h + 14, 0x4000);
    h[16] = 0xFF; h[17] = 17; h[18] = 0xFF; h[19] = 0xFF;
    memcpy(h + 20, &src, 4); memcpy(h + 24, &dst, 4);  /* network order already */
    wr16(h + 28, sport); wr16(h + 30, dport); wr16(h + 32, udp_len); h[34] = 0xFF; h[35] = 0xFF;
    return crc32_upd(0, h, sizeof h);
}
/* ICRC of pkt[0..n) (BTH onwards, without the ICRC): BTH byte 4 counts as 0xff. */
static uint32_t icrc_of(uint32_t seed, const uint8_t *pkt, size_t n) {
    static const uint8_t ff = 0xFF;
    uint32_t c = crc32_upd(seed, pkt, 4);
    c = crc32_upd(c, &ff, 1);
    return crc32_upd(c, pkt + 5, n - 5);
}

/* A UDP socket does not see the IP ID of what it receives; a GSO segment i
 * carries ID i. CRC32 being affine, ICRC(ID i) ^ ICRC(ID 0) depends only on
 * i and the length: a packet whose ICRC differs by one of these is intact. */
#define DELTA_CACHE 8
typedef struct { uint32_t len; uint32_t d[GSO_MAX_SEGS]; } delta_t;

/* ---- objects */
typedef struct mr {
    uint32_t lkey, rkey, access, pd;
    uint8_t *base;
    uint64_t len;
    Py_buffer view;
    int used, dead, refs;
} mr_t;

typedef struct { uint8_t *p; uint32_t len; mr_t *mr; } sge_t;

typedef struct {
    uint64_t wr_id, raddr, length, got;
    uint64_t req_end, req_hi; /* READ: where the latest request ends; the furthest any did */
    uint64_t *have;           /* READ: bitmap of the packets in beyond the in-order `got` (NULL: none) */
    uint32_t rr_mark;         /* READ: holes below it were re-requested */
    int rr_more;              /* READ: a resend stopped at a window's worth: go on once that is in */
    int rd_done;              /* READ: every response is in (a 0-byte READ too) */
    uint32_t imm, rkey, first_psn, npkts;
    int op, signaled, nsge;
    sge_t sge[MAX_SGE];
} wqe_t;

typedef struct {
    uint8_t *ring;
    uint32_t depth;
    Py_buffer view;
    pthread_cond_t cond;
    int used, waiters;
} cq_t;

typedef struct qp {
    int used;
    uint32_t qpn, pd, state, access, mtu, dqpn, sq_sig_all;
    uint32_t local_ip, remote_ip; /* network order */
    uint16_t remote_port;
    struct sockaddr_in remote;
    int scq, rcq;
    /* requester */
    wqe_t *sq; uint32_t sq_cap, sq_head, sq_n;
    uint32_t snd_nxt, snd_una, next_psn;
    int retry_cnt, retries_left, rnr_retry, rnr_left, rnr_wait, max_rd_atomic;
    uint32_t cwnd, ssthresh; /* packets in flight after a loss (AIMD), MAX_INFLIGHT before */
    uint64_t timeout_ns, deadline; /* 0: no timer */
    uint64_t rto, srtt, rttvar;    /* ns; srtt 0: no sample yet */
    uint32_t snd_max;              /* one past the highest PSN ever sent (Karn: no samples of resends) */
    uint32_t rd_hi;                /* one past the highest READ response PSN in (of any READ) */
    int probe_valid; uint32_t probe_psn; uint64_t probe_t; /* the packet being timed */
    int nak_valid; uint32_t nak_psn; uint64_t nak_t;       /* the latest NAK-sequence we acted on */
    /* responder */
    wqe_t *rq; uint32_t rq_cap, rq_head, rq_n;
    uint32_t epsn, msn;
    int nak_sent;
    int cur_recv_valid; wqe_t cur_recv; uint64_t cur_recv_off;
    int cur_write_valid; mr_t *cw_mr; uint64_t cw_off, cw_left;
} qp_t;

enum {
    ST_RX_PACKETS, ST_TX_PACKETS, ST_RX_SHORT, ST_RX_NO_QP, ST_RX_ICRC, ST_RX_STATE, ST_RX_BAD_LEN,
    ST_TX_GSO, ST_TX_FULL, ST_TX_ERRORS, ST_RX_GRO, ST_ONE_READ, ST_ONE_READ_BYTES, ST_ONE_WRITE,
    ST_TWO_RECV, ST_NAKS_SENT, ST_RNR_NAKS_SENT, ST_BAD_RKEY, ST_OOB, ST_NO_PERM, ST_RX_OOO,
    ST_RX_DUP, ST_SEQ_NAKS, ST_RNR_NAKS, ST_ERR_NAKS, ST_RETRANS, ST_TIMEOUTS, ST_READ_GAPS,
    ST_CQ_OVERRUN, ST_EARLY_TIMEOUTS, ST_NAKS_IGNORED, ST_N
};
static const char *stat_names[ST_N] = {
    "rx_packets", "tx_packets", "rx_dropped_short", "rx_dropped_no_qp", "rx_dropped_icrc",
    "rx_dropped_state", "rx_dropped_bad_length", "tx_gso_batches", "tx_dropped_full", "tx_errors",
    "rx_gro_batches", "one_sided_read", "one_sided_read_bytes", "one_sided_write", "two_sided_recv",
    "naks_sent", "rnr_naks_sent", "bad_rkey", "out_of_bounds", "no_permission", "rx_out_of_order",
    "rx_duplicates", "seq_naks", "rnr_naks", "error_naks", "retransmits", "timeouts", "read_gaps",
    "cq_overruns", "rto_backoffs", "naks_ignored",
};

typedef struct {
    PyObject_HEAD
    int fd, evfd, closing, started, gso, gro;
    uint16_t port;
    uint32_t bind_ip;
    pthread_t thread;
    pthread_mutex_t mu;
    uint64_t spin_ns;
    uint64_t sleep_until;  /* when the engine thread's poll() times out (lock held to change) */
    uint64_t active_until; /* a timer was armed lately: the thread wakes every RTO_MIN_NS until then */
    int busy_pollers;
    int socket_unwatched; /* the engine thread sleeps on the eventfd only (a busy poller receives) */
    mr_t **mrs; int n_mrs, cap_mrs; /* stable pointers: WQEs refer to them */
    qp_t *qps; int cap_qps;
    cq_t *cqs; int cap_cqs;
    uint64_t stats[ST_N];
    uint8_t *txbuf;
    uint8_t *rxbufs;
    struct mmsghdr rxmsg[RX_BATCH];
    struct iovec rxiov[RX_BATCH];
    struct sockaddr_in rxaddr[RX_BATCH];
    char rxctl[RX_BATCH][64];
    delta_t deltas[DELTA_CACHE]; int delta_next;
} Engine;

/* ---- completions */
static void cq_push(Engine *E, int cqi, uint64_t wr_id, uint32_t status, uint32_t opcode, uint32_t byte_len,
                    uint32_t imm, uint32_t qpn, uint32_t src_qp, uint32_t flags) {
    if (cqi < 0 || cqi >= E->cap_cqs || !E->cqs[cqi].used) return;
    cq_t *c = &E->cqs[cqi];
    uint64_t prod, cons;
    memcpy(&prod, c->ring, 8);
    cons = __atomic_load_n((uint64_t *)(c->ring + 8), __ATOMIC_ACQUIRE);
    if (prod - cons >= c->depth) { E->stats[ST_CQ_OVERRUN]++; return; }
    uint8_t *e = c->ring + CQ_HDR + (prod % c->depth) * CQE_SIZE;
    uint32_t f[7] = {status, opcode, byte_len, imm, qpn, src_qp, flags};
    memcpy(e, &wr_id, 8);
    memcpy(e + 8, f, sizeof f);
    __atomic_store_n((uint64_t *)c->ring, prod + 1, __ATOMIC_RELEASE);
    if (c->waiters) pthread_cond_broadcast(&c->cond);
}

static qp_t *find_qp(Engine *E, uint32_t qpn) {
    for (int i = 0; i < E->cap_qps; i++)
        if (E->qps[i].used && E->qps[i].qpn == qpn) return &E->qps[i];
    return NULL;
}
static mr_t *find_mr(Engine *E, uint32_t key, int remote) {
    for (int i = 0; i < E->n_mrs; i++) {
        mr_t *m = E->mrs[i];
        if (m->used && !m->dead && (remote ? m->rkey : m->lkey) == key) return m;
    }
    return NULL;
}

/* ---- transmit */
static void sock_send(Engine *E, qp_t *q, uint8_t *buf, size_t n) {
    ssize_t r = sendto(E->fd, buf, n, 0, (struct sockaddr *)&q->remote, sizeof q->remote);
    if (r < 0) {
        if (errno == EAGAIN || errno == ENOBUFS) E->stats[ST_TX_FULL]++; /* like a full NIC queue */
        else E->stats[ST_TX_ERRORS]++;
        return;
    }
    E->stats[ST_TX_PACKETS]++;
}

static void bth(uint8_t *h, int op, uint32_t dqpn, uint32_t psn, int ackreq, int pad) {
    h[0] = (uint8_t)op; h[1] = (uint8_t)(pad << 4); h[2] = 0xFF; h[3] = 0xFF;
    wr32(h + 4, dqpn & PSN_MASK); wr32(h + 8, (ackreq ? 0x80000000u : 0) | (psn & PSN_MASK));
}

/* Copy `len` bytes at position `pos` of a scatter/gather list into dst. */
static void gather_copy(const wqe_t *w, uint64_t pos, uint8_t *dst, uint64_t len) {
    for (int i = 0; i < w->nsge && len; i++) {
        const sge_t *s = &w->sge[i];
        if (pos >= s->len) { pos -= s->len; continue; }
        uint64_t take = s->len - pos < len ? s->len - pos : len;
        memcpy(dst, s->p + pos, take);
        dst += take; len -= take; pos = 0;
    }
}
static void scatter_copy(wqe_t *w, uint64_t pos, const uint8_t *src, uint64_t len) {
    for (int i = 0; i < w->nsge && len; i++) {
        sge_t *s = &w->sge[i];
        if (pos >= s->len) { pos -= s->len; continue; }
        uint64_t take = s->len - pos < len ? s->len - pos : len;
        memcpy(s->p + pos, src, take);
        src += take; len -= take; pos = 0;
    }
}

/* Finish a packet built at buf (header of hl bytes, then plen payload bytes
 * already there): pad, ICRC. Returns its length. */
static size_t finish(Engine *E, qp_t *q, uint8_t *buf, size_t hl, size_t plen, uint16_t ip_id) {
    size_t pad = (4 - (plen & 3)) & 3;
    buf[1] |= (uint8_t)(pad << 4);
    memset(buf + hl + plen, 0, pad);
    size_t n = hl + plen + pad;
    uint32_t seed = icrc_seed(q->local_ip, q->remote_ip, E->port, q->remote_port, (uint32_t)n + 4, ip_id);
    uint32_t c = icrc_of(seed, buf, n);
    buf[n] = (uint8_t)c; buf[n + 1] = (uint8_t)(c >> 8); buf[n + 2] = (uint8_t)(c >> 16); buf[n + 3] = (uint8_t)(c >> 24);
    return n + 4;
}

static void send_ack(Engine *E, qp_t *q, uint32_t psn, int syn) {
    uint8_t b[32];
    bth(b, ACK, q->dqpn, psn, 0, 0);
    wr32(b + 12, ((uint32_t)syn << 24) | (q->msn & PSN_MASK));
    sock_send(E, q, b, finish(E, q, b, 16, 0, 0));
}
static void send_nak(Engine *E, qp_t *q, uint32_t psn, int syn) { E->stats[ST_NAKS_SENT]++; send_ack(E, q, psn, syn); }

/* m equal-sized packets already built back to back in E->txbuf (seglen each,
 * ICRCs computed with IP IDs 0..m-1): one UDP GSO send, or, where the
 * kernel lacks GSO, one sendmmsg (the ICRCs are then redone with ID 0). */
static void send_burst(Engine *E, qp_t *q, int m, size_t seglen, size_t hl) {
    if (E->gso) {
        struct iovec iov = {E->txbuf, (size_t)m * seglen};
        char ctl[CMSG_SPACE(sizeof(uint16_t))];
        memset(ctl, 0, sizeof ctl);
        struct msghdr mh = {0};
        mh.msg_name = &q->remote; mh.msg_namelen = sizeof q->remote;
        mh.msg_iov = &iov; mh.msg_iovlen = 1; mh.msg_control = ctl; mh.msg_controllen = sizeof ctl;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_UDP; cm->cmsg_type = UDP_SEGMENT; cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t gs = (uint16_t)seglen;
        memcpy(CMSG_DATA(cm), &gs, sizeof gs);
        if (sendmsg(E->fd, &mh, 0) >= 0) { E->stats[ST_TX_PACKETS] += (uint64_t)m; E->stats[ST_TX_GSO]++; return; }
        if (errno == EAGAIN || errno == ENOBUFS) { E->stats[ST_TX_FULL] += (uint64_t)m; return; }
        E->gso = 0; /* an old kernel, or a device without it */
    }
    struct mmsghdr mm[GSO_MAX_SEGS];
    struct iovec iv[GSO_MAX_SEGS];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < m; i++) {
        uint8_t *p = E->txbuf + (size_t)i * seglen;
        size_t n = seglen - 4;
        uint32_t seed = icrc_seed(q->local_ip, q->remote_ip, E->port, q->remote_port, (uint32_t)seglen, 0);
        uint32_t c = icrc_of(seed, p, n);
        p[n] = (uint8_t)c; p[n + 1] = (uint8_t)(c >> 8); p[n + 2] = (uint8_t)(c >> 16); p[n + 3] = (uint8_t)(c >> 24);
        iv[i].iov_base = p; iv[i].iov_len = seglen;
        mm[i].msg_hdr.msg_name = &q->remote; mm[i].msg_hdr.msg_namelen = sizeof q->remote;
        mm[i].msg_hdr.msg_iov = &iv[i]; mm[i].msg_hdr.msg_iovlen = 1;
    }
    (void)hl;
    int sent = sendmmsg(E->fd, mm, (unsigned)m, 0);
    if (sent < 0) sent = 0;
    E->stats[ST_TX_PACKETS] += (uint64_t)sent;
    if (sent < m) E->stats[ST_TX_FULL] += (uint64_t)(m - sent);
}

/* ---- requester */
static wqe_t *sq_at(qp_t *q, uint32_t i) { return &q->sq[(q->sq_head + i) % q->sq_cap]; }
static void mr_unref_wqe(wqe_t *w) {
    for (int i = 0; i < w->nsge; i++) if (w->sge[i].mr) w->sge[i].mr->refs--;
    w->nsge = 0;
    free(w->have); w->have = NULL;
}
static int wc_op(int op) { return op == WR_READ ? WC_RDMA_READ : (op == WR_WRITE || op == WR_WRITE_IMM) ? WC_RDMA_WRITE : WC_SEND; }

static void complete_send(Engine *E, qp_t *q, wqe_t *w, int status, int force) {
    if (w->signaled || force || status != WC_SUCCESS)
        cq_push(E, q->scq, w->wr_id, (uint32_t)status, (uint32_t)wc_op(w->op), status == 0 ? (uint32_t)w->length : 0, 0, q->qpn, q->dqpn, 0);
    mr_unref_wqe(w);
}
static void sq_pop_front(qp_t *q) { q->sq_head = (q->sq_head + 1) % q->sq_cap; q->sq_n--; }

static void to_error(Engine *E, qp_t *q) {
    q->state = QPS_ERR;
    q->deadline = 0;
    while (q->sq_n) { complete_send(E, q, sq_at(q, 0), WC_WR_FLUSH_ERR, 1); sq_pop_front(q); }
    if (q->cur_recv_valid) {
        cq_push(E, q->rcq, q->cur_recv.wr_id, WC_WR_FLUSH_ERR, WC_RECV, 0, 0, q->qpn, q->dqpn, 0);
        mr_unref_wqe(&q->cur_recv);
        q->cur_recv_valid = 0;
    }
    while (q->rq_n) {
        wqe_t *r = &q->rq[q->rq_head];
        cq_push(E, q->rcq, r->wr_id, WC_WR_FLUSH_ERR, WC_RECV, 0, 0, q->qpn, q->dqpn, 0);
        mr_unref_wqe(r);
        q->rq_head = (q->rq_head + 1) % q->rq_cap; q->rq_n--;
    }
    if (q->cur_write_valid) { q->cw_mr->refs--; q->cur_write_valid = 0; }
}

static int sq_find(qp_t *q, uint32_t psn) {
    for (uint32_t i = 0; i < q->sq_n; i++) {
        wqe_t *w = sq_at(q, i);
        int32_t d = psn_diff(psn, w->first_psn);
        if (d >= 0 && (uint32_t)d < w->npkts) return (int)i;
    }
    return -1;
}

static __thread int tl_engine; /* set in the engine's own thread */

static uint64_t rto_of(const qp_t *q) {
    uint64_t r = q->srtt ? q->srtt + 4 * (q->rttvar > RTO_VAR_MIN_NS ? q->rttvar : RTO_VAR_MIN_NS) : RTO_INIT_NS;
    if (r < RTO_MIN_NS) r = RTO_MIN_NS;
    return r < q->timeout_ns ? r : q->timeout_ns;
}
static void rtt_sample(qp_t *q, uint64_t r) {
    if (!q->srtt) { q->srtt = r; q->rttvar = r / 2; }
    else {
        uint64_t d = r > q->srtt ? r - q->srtt : q->srtt - r;
        q->rttvar = (3 * q->rttvar + d) / 4;
        q->srtt = (7 * q->srtt + r) / 8;
    }
    q->probe_valid = 0;
}
/* A response covering psn: the timed packet's round trip, if it is one. */
static void rtt_check(qp_t *q, uint32_t psn) {
    if (q->probe_valid && psn_diff(psn, q->probe_psn) >= 0) rtt_sample(q, now_ns() - q->probe_t);
}

static void arm(Engine *E, qp_t *q) {
    if (q->sq_n && q->state == QPS_RTS) {
        if (!q->deadline) {
            uint64_t t = now_ns();
            q->deadline = t + q->rto;
            E->active_until = t + ACTIVE_NS;
            /* The engine thread sleeps until E->sleep_until: wake it for an
             * earlier deadline. While QPs are active it sleeps at most
             * RTO_MIN_NS, so a post_send needs no system call for this. */
            if (!tl_engine && q->deadline < E->sleep_until) {
                uint64_t one = 1;
                if (write(E->evfd, &one, 8) < 0) { /* the thread wakes up on its idle timer anyway */ }
            }
        }
    } else q->deadline = 0;
}
/* A loss (NAK sequence error, READ gap, timeout): halve the window, so that
 * go-back-N resends a window's worth, not everything in flight. */
static void on_loss(qp_t *q) {
    q->ssthresh = q->cwnd / 2 < 8 ? 8 : q->cwnd / 2;
    q->cwnd = q->ssthresh;
}
static void on_acked(qp_t *q, uint32_t n) {
    if (q->cwnd < q->ssthresh) q->cwnd += n;
    else q->cwnd += n / q->cwnd ? n / q->cwnd : 1;
    if (q->cwnd > MAX_INFLIGHT) q->cwnd = MAX_INFLIGHT;
}
static void progress_made(Engine *E, qp_t *q) {
    q->retries_left = q->retry_cnt; q->rnr_left = q->rnr_retry; q->rto = rto_of(q); q->deadline = 0; arm(E, q);
}

static int data_opcode(const wqe_t *w, uint32_t k) {
    int send = w->op == WR_SEND || w->op == WR_SEND_IMM, imm = w->op == WR_SEND_IMM || w->op == WR_WRITE_IMM;
    if (w->npkts == 1) return send ? (imm ? SEND_ONLY_IMM : SEND_ONLY) : (imm ? WRITE_ONLY_IMM : WRITE_ONLY);
    if (k == 0) return send ? SEND_FIRST : WRITE_FIRST;
    if (k == w->npkts - 1) return send ? (imm ? SEND_LAST_IMM : SEND_LAST) : (imm ? WRITE_LAST_IMM : WRITE_LAST);
    return send ? SEND_MIDDLE : WRITE_MIDDLE;
}

/* Whether packet k of w asks for an ACK: every ACK_EVERY packets, a message's
 * last, the window's last and the one half way into it (so that one lost ACK
 * does not stall a window, and the window slides). */
static int ack_wanted(const qp_t *q, const wqe_t *w, uint32_t k) {
    int32_t pos = psn_diff(psn_add(w->first_psn, k), q->snd_una) + 1;
    return k == w->npkts - 1 || k % ACK_EVERY == ACK_EVERY - 1 || pos >= (int32_t)q->cwnd || pos == (int32_t)q->cwnd / 2;
}

static void xmit_data(Engine *E, qp_t *q, wqe_t *w, uint32_t k) {
    uint8_t *b = E->txbuf;
    int op = data_opcode(w, k);
    bth(b, op, q->dqpn, psn_add(w->first_psn, k), ack_wanted(q, w, k), 0);
    size_t hl = BTH_LEN;
    if (has_reth(op)) { wr64(b + hl, w->raddr); wr32(b + hl + 8, w->rkey); wr32(b + hl + 12, (uint32_t)w->length); hl += 16; }
    if (has_imm(op)) { wr32(b + hl, w->imm); hl += 4; }
    uint64_t off = (uint64_t)k * q->mtu;
    uint64_t n = w->length - off < q->mtu ? w->length - off : q->mtu;
    if (w->length == 0) n = 0;
    gather_copy(w, off, b + hl, n);
    sock_send(E, q, b, finish(E, q, b, hl, n, 0));
}

/* MIDDLE packets k..k+m-1 of a SEND/WRITE in one burst. */
static void xmit_middles(Engine *E, qp_t *q, wqe_t *w, uint32_t k, int m) {
    int op = (w->op == WR_SEND || w->op == WR_SEND_IMM) ? SEND_MIDDLE : WRITE_MIDDLE;
    size_t seglen = BTH_LEN + q->mtu + 4;
    for (int i = 0; i < m; i++) {
        uint8_t *b = E->txbuf + (size_t)i * seglen;
        uint32_t j = k + (uint32_t)i;
        bth(b, op, q->dqpn, psn_add(w->first_psn, j), ack_wanted(q, w, j), 0);
        gather_copy(w, (uint64_t)j * q->mtu, b + BTH_LEN, q->mtu);
        finish(E, q, b, BTH_LEN, q->mtu, (uint16_t)i);
    }
    send_burst(E, q, m, seglen, BTH_LEN);
}

/* ---- READ: responses land where their PSN says; holes are asked for again */
static uint64_t rd_len(const wqe_t *w, uint32_t k, uint32_t mtu) {
    uint64_t off = (uint64_t)k * mtu;
    return w->length - off < mtu ? w->length - off : mtu;
}
static uint32_t rd_next(const wqe_t *w, uint32_t mtu) { return (uint32_t)(w->got / mtu); } /* the first packet not in order */
static int rd_has(const wqe_t *w, uint32_t k) { return w->have && ((w->have[k >> 6] >> (k & 63)) & 1); }
/* How many of w's packets are at or below the highest READ response PSN in
 * (more than w has when a later READ's response came). */
static uint32_t rd_seen(const qp_t *q, const wqe_t *w) {
    int32_t d = psn_diff(q->rd_hi, w->first_psn);
    return d > 0 ? (uint32_t)d : 0;
}
static int rd_mark(wqe_t *w, uint32_t k) {
    if (!w->have && !(w->have = calloc((w->npkts + 63) / 64, sizeof *w->have))) return 0;
    w->have[k >> 6] |= 1ull << (k & 63);
    return 1;
}

/* A READ request for packets [a, b) of w (a duplicate, when the responder
 * executed them before: it serves them again, see on_request). */
static void read_request(Engine *E, qp_t *q, wqe_t *w, uint32_t a, uint32_t b) {
    uint64_t off = (uint64_t)a * q->mtu, end = (uint64_t)b * q->mtu;
    if (end > w->length) end = w->length;
    uint8_t *p = E->txbuf;
    bth(p, READ_REQUEST, q->dqpn, psn_add(w->first_psn, a), 1, 0);
    wr64(p + 12, w->raddr + off); wr32(p + 20, w->rkey); wr32(p + 24, (uint32_t)(end - off));
    sock_send(E, q, p, finish(E, q, p, 28, 0, 0));
}

/* The next part of w, from where the furthest request ended: at most
 * READ_INFLIGHT_BYTES per request (a multiple of every MTU). */
static void read_more(Engine *E, qp_t *q, wqe_t *w) {
    uint64_t off = w->req_hi, len = w->length - off;
    if (len > READ_INFLIGHT_BYTES) len = READ_INFLIGHT_BYTES;
    read_request(E, q, w, (uint32_t)(off / q->mtu), (uint32_t)((off + len + q->mtu - 1) / q->mtu));
    w->req_end = w->req_hi = off + len;
}

/* Ask again for the holes of w. RR_SEEN: those below what arrived since
 * (REORDER_SLACK later packets are in). RR_ALL, after a timeout or a NAK:
 * every hole of what was requested. RR_MORE: the rest of an RR_ALL that
 * stopped at its budget, once what it asked for is in. Each hole once until
 * the next RR_ALL (rr_mark), and at most a window's worth of packets per call
 * (on real congestion the holes are large: they come back a window per round
 * trip). Selective repeat for READs only: the responder must take SEND and
 * WRITE packets in order (go-back-N, as the spec says). */
enum { RR_SEEN, RR_ALL, RR_MORE };
static void read_repair(Engine *E, qp_t *q, wqe_t *w, int mode) {
    uint32_t k = rd_next(w, q->mtu), budget = q->cwnd, sent = 0, seen = rd_seen(q, w);
    uint32_t lim = (uint32_t)((w->req_hi + q->mtu - 1) / q->mtu);
    if (mode == RR_SEEN && seen < lim + REORDER_SLACK) lim = seen > REORDER_SLACK ? seen - REORDER_SLACK : 0;
    if (mode == RR_ALL) w->rr_mark = k;
    if (k < w->rr_mark) k = w->rr_mark;
    while (k < lim && sent < budget) {
        if (rd_has(w, k)) { k++; continue; }
        uint32_t b = k + 1;
        while (b < lim && !rd_has(w, b) && b - k < budget - sent) b++;
        read_request(E, q, w, k, b);
        E->stats[ST_READ_GAPS]++;
        sent += b - k;
        k = b;
    }
    if (k > w->rr_mark) w->rr_mark = k;
    if (mode != RR_SEEN) w->rr_more = k < lim;
    if (sent && mode == RR_SEEN) on_loss(q);
}

/* Transmit from snd_nxt while the window allows. */
static void pump(Engine *E, qp_t *q) {
    if (q->state != QPS_RTS) return;
    int i = sq_find(q, q->snd_nxt);
    wqe_t *h = q->sq_n ? sq_at(q, 0) : NULL; /* a head READ whose requested part is in: its next part */
    if (i != 0 && h && h->op == WR_READ && h->req_hi && h->got >= h->req_end && h->got < h->length) read_more(E, q, h);
    if (i < 0) { arm(E, q); return; }
    uint64_t read_bytes = 0;
    int reads = 0;
    for (int j = 0; j < i; j++) { wqe_t *w = sq_at(q, (uint32_t)j); if (w->op == WR_READ) { reads++; read_bytes += w->length - w->got; } }
    while ((uint32_t)i < q->sq_n) {
        wqe_t *w = sq_at(q, (uint32_t)i);
        uint32_t k = (uint32_t)psn_diff(q->snd_nxt, w->first_psn);
        if (psn_diff(q->snd_nxt, q->snd_max) > 0) q->snd_max = q->snd_nxt;
        if (!q->probe_valid && q->snd_nxt == q->snd_max) { /* new data (Karn: never time a resend) */
            q->probe_valid = 1; q->probe_psn = q->snd_nxt; q->probe_t = now_ns();
        }
        if (w->op == WR_READ) {
            if ((reads >= q->max_rd_atomic || read_bytes >= READ_INFLIGHT_BYTES) && i > 0) break;
            uint64_t off = (uint64_t)k * q->mtu;
            if (off < w->req_hi) read_repair(E, q, w, RR_ALL); /* a resend: only what is missing */
            else read_more(E, q, w);
            reads++; read_bytes += w->req_end - w->got;
            q->snd_nxt = psn_add(w->first_psn, w->npkts);
            i++;
            continue;
        }
        int room = (int)q->cwnd - psn_diff(q->snd_nxt, q->snd_una);
        if (room <= 0) break;
        int m = (int)(w->npkts - 1 - k);
        int cap = GSO_MAX_BYTES / (int)(q->mtu + 16);
        if (m > room) m = room;
        if (m > GSO_MAX_SEGS) m = GSO_MAX_SEGS;
        if (m > cap) m = cap;
        if (k > 0 && m >= 2) { xmit_middles(E, q, w, k, m); q->snd_nxt = psn_add(q->snd_nxt, m); continue; }
        xmit_data(E, q, w, k);
        q->snd_nxt = psn_add(q->snd_nxt, 1);
        if (k + 1 >= w->npkts) i++;
    }
    if (psn_diff(q->snd_nxt, q->snd_max) > 0) q->snd_max = q->snd_nxt;
    arm(E, q);
}

static void go_back(Engine *E, qp_t *q, uint32_t psn) {
    E->stats[ST_RETRANS]++;
    q->snd_nxt = psn;
    q->probe_valid = 0;
    pump(E, q);
}

/* Complete the WQEs at the head that are done: READs whose responses are all
 * in, the others when their last PSN is <= psn. */
static void ack_upto(Engine *E, qp_t *q, uint32_t psn) {
    while (q->sq_n) {
        wqe_t *w = sq_at(q, 0);
        if (w->op == WR_READ ? !w->rd_done : psn_diff(psn, psn_add(w->first_psn, w->npkts - 1)) < 0) break;
        complete_send(E, q, w, WC_SUCCESS, 0);
        sq_pop_front(q);
    }
    uint32_t nxt = psn_add(psn, 1);
    if (q->sq_n && sq_at(q, 0)->op == WR_READ) {
        wqe_t *w = sq_at(q, 0);
        uint32_t lim = psn_add(w->first_psn, (int64_t)(w->got / q->mtu));
        if (psn_diff(nxt, lim) > 0) nxt = lim;
    }
    if (psn_diff(nxt, q->snd_una) > 0) q->snd_una = nxt;
    if (psn_diff(q->snd_nxt, q->snd_una) < 0) q->snd_nxt = q->snd_una;
}

static void on_timer(Engine *E, qp_t *q) {
    q->deadline = 0;
    if (!q->sq_n || q->state != QPS_RTS) return;
    if (q->rnr_wait) { q->rnr_wait = 0; go_back(E, q, q->snd_una); return; }
    if (q->rto < q->timeout_ns) {
        /* The RTT-based timer: back off, no retry spent, and the window stays
         * (on a loaded machine it fires spuriously when a peer's thread waits
         * for a CPU; a real tail loss costs one resend either way). */
        q->rto = 2 * q->rto < q->timeout_ns ? 2 * q->rto : q->timeout_ns;
        E->stats[ST_EARLY_TIMEOUTS]++;
    } else {
        if (q->retries_left <= 0) {
            complete_send(E, q, sq_at(q, 0), WC_RETRY_EXC_ERR, 1);
            sq_pop_front(q);
            to_error(E, q);
            return;
        }
        q->retries_left--;
        on_loss(q);
    }
    E->stats[ST_TIMEOUTS]++;
    go_back(E, q, q->snd_una);
}

static void on_response(Engine *E, qp_t *q, int op, uint32_t psn, const uint8_t *pkt, size_t n, int pad) {
    uint32_t aeth = 0;
    if (op != READ_RESP_MIDDLE) {
        if (n < 16) { E->stats[ST_RX_SHORT]++; return; }
        aeth = rd32(pkt + 12);
    }
    int syn = (int)(aeth >> 24);
    if (op == ACK) {
        if ((syn >> 5) == 0) {
            if (psn_diff(psn, q->snd_una) >= 0) {
                uint32_t before = q->snd_una;
                rtt_check(q, psn);
                ack_upto(E, q, psn);
                on_acked(q, (uint32_t)psn_diff(q->snd_una, before));
                progress_made(E, q);
                pump(E, q);
            }
            return;
        }
        /* A NAK names the first PSN the responder has not executed: one before
         * what it acknowledged already (a late duplicate) or past what we ever
         * sent is stale, and acting on it would rewind to a completed WQE. */
        if (psn_diff(psn, q->snd_una) < 0 || psn_diff(psn, q->snd_max) > 0) { E->stats[ST_NAKS_IGNORED]++; return; }
        if ((syn >> 5) == 1) { /* RNR NAK: no receive posted at the responder; retry later */
            ack_upto(E, q, psn_add(psn, -1));
            if (q->rnr_retry != 7 && --q->rnr_left < 0) {
                int i = sq_find(q, psn);
                if (i == 0) { complete_send(E, q, sq_at(q, 0), WC_RNR_RETRY_EXC_ERR, 1); sq_pop_front(q); }
                to_error(E, q);
                return;
            }
            E->stats[ST_RNR_NAKS]++;
            q->snd_nxt = psn; /* snd_una: ack_upto, which keeps it at an earlier READ's hole */
            q->rnr_wait = 1;
            q->deadline = now_ns() + RNR_DELAY_NS;
            return;
        }
        ack_upto(E, q, psn_add(psn, -1));
        if (syn == SYN_NAK_PSN_SEQ) { /* fast retransmit from the PSN the responder expects */
            E->stats[ST_SEQ_NAKS]++;
            /* Once per loss: the same NAK within a round trip of acting on it
             * (a duplicate, or the responder's repeat for packets sent before
             * our resend reached it) would resend the same window again. A
             * repeat after that means the resend was lost too. */
            uint64_t t = now_ns(), rtt = q->srtt ? q->srtt : RTO_VAR_MIN_NS;
            if (q->nak_valid && q->nak_psn == psn && t - q->nak_t < rtt) { E->stats[ST_NAKS_IGNORED]++; return; }
            q->nak_valid = 1; q->nak_psn = psn; q->nak_t = t;
            on_loss(q);
            progress_made(E, q);
            go_back(E, q, psn); /* (snd_una stays at a READ's hole below psn: ack_upto) */
            return;
        }
        int status = syn == SYN_NAK_REM_ACCESS ? WC_REM_ACCESS_ERR : syn == SYN_NAK_INV_REQ ? WC_REM_INV_REQ_ERR : WC_REM_OP_ERR;
        E->stats[ST_ERR_NAKS]++;
        int i = sq_find(q, psn);
        if (i == 0) { complete_send(E, q, sq_at(q, 0), status, 1); sq_pop_front(q); }
        to_error(E, q);
        return;
    }
    /* a READ response: it implicitly acknowledges everything before it */
    if (!q->sq_n || sq_at(q, 0)->op != WR_READ || op != READ_RESP_MIDDLE) {
        ack_upto(E, q, psn_add(psn, -1));
        if (!q->sq_n) return;
    }
    /* Usually the head's; a later READ's when the head waits for a hole
     * (its packets are kept: only the hole is asked for again). */
    int i = sq_find(q, psn);
    if (i < 0 || sq_at(q, (uint32_t)i)->op != WR_READ) return;
    wqe_t *w = sq_at(q, (uint32_t)i);
    int32_t k = psn_diff(psn, w->first_psn);
    uint32_t next = rd_next(w, q->mtu);
    if (k < (int32_t)next || k >= (int32_t)w->npkts || rd_has(w, (uint32_t)k)) return; /* duplicate */
    if ((uint64_t)k * q->mtu >= w->req_hi && w->length) return; /* never asked for */
    size_t hl = op != READ_RESP_MIDDLE ? 16 : 12;
    if (n < hl + (size_t)pad) { E->stats[ST_RX_SHORT]++; return; }
    size_t dl = n - hl - (size_t)pad;
    if (dl != rd_len(w, (uint32_t)k, q->mtu)) {
        if (i > 0) return; /* judged once it is the head (an error completes in order) */
        sq_pop_front(q);
        complete_send(E, q, w, WC_BAD_RESP_ERR, 1);
        to_error(E, q);
        return;
    }
    if ((uint32_t)k != next && !rd_mark(w, (uint32_t)k)) return; /* no memory for the bitmap: as if lost */
    scatter_copy(w, (uint64_t)k * q->mtu, pkt + hl, dl);
    if ((uint32_t)k == next) /* the in-order prefix grows, over what came early too */
        for (w->got += dl, next++; next < w->npkts && rd_has(w, next); next++) w->got += rd_len(w, next, q->mtu);
    if (psn_diff(psn_add(psn, 1), q->rd_hi) > 0) q->rd_hi = psn_add(psn, 1);
    w->rd_done = w->got == w->length;
    on_acked(q, 1);
    rtt_check(q, psn);
    if (i > 0) { /* the responder answers in order: an earlier READ's hole below this is a loss */
        for (uint32_t j = 0; j < (uint32_t)i; j++) {
            wqe_t *x = sq_at(q, j);
            if (x->op == WR_READ && rd_seen(q, x) > rd_next(x, q->mtu) + REORDER_SLACK) read_repair(E, q, x, RR_SEEN);
        }
        return;
    }
    q->snd_una = psn_add(w->first_psn, next);
    q->retries_left = q->retry_cnt; /* forward progress: the timer restarts (no wake-up needed) */
    q->rto = rto_of(q);
    if (q->deadline) q->deadline = now_ns() + q->rto;
    if (w->rd_done) {
        /* w, then what later READ responses acknowledged: READs whose data
         * came early, and the SENDs and WRITEs before them */
        ack_upto(E, q, psn_add(q->rd_hi, -1));
        progress_made(E, q);
        pump(E, q);
    } else if (w->got >= w->req_end) { /* what we asked for is in: pump asks for the next part */
        progress_made(E, q);
        pump(E, q);
    } else if (w->rr_more && next >= w->rr_mark) read_repair(E, q, w, RR_MORE);
    else if (rd_seen(q, w) > next + REORDER_SLACK) read_repair(E, q, w, RR_SEEN);
    else if (k % ACK_EVERY == 0) progress_made(E, q);
}

/* ---- responder */
static mr_t *check_rkey(Engine *E, qp_t *q, uint32_t rkey, uint64_t va, uint64_t len, uint32_t need, uint64_t *off) {
    mr_t *m = find_mr(E, rkey, 1);
    if (!m || m->pd != q->pd) { E->stats[ST_BAD_RKEY]++; return NULL; }
    uint64_t base = (uint64_t)(uintptr_t)m->base;
    if (va < base || va - base > m->len || len > m->len - (va - base)) { E->stats[ST_OOB]++; return NULL; }
    if (!(m->access & need) || !(q->access & need)) { E->stats[ST_NO_PERM]++; return NULL; }
    *off = va - base;
    return m;
}

static void fatal(Engine *E, qp_t *q, uint32_t psn, int syn) { send_nak(E, q, psn, syn); to_error(E, q); }

static void send_read(Engine *E, qp_t *q, uint32_t psn, mr_t *m, uint64_t off, uint64_t ln) {
    uint32_t mtu = q->mtu;
    uint64_t npk = ln ? (ln + mtu - 1) / mtu : 1;
    uint32_t aeth = ((uint32_t)SYN_ACK << 24) | (q->msn & PSN_MASK);
    uint8_t *b = E->txbuf;
    const uint8_t *src = m->base + off;
    if (npk == 1) {
        bth(b, READ_RESP_ONLY, q->dqpn, psn, 0, 0); wr32(b + 12, aeth);
        memcpy(b + 16, src, ln);
        sock_send(E, q, b, finish(E, q, b, 16, ln, 0));
        return;
    }
    bth(b, READ_RESP_FIRST, q->dqpn, psn, 0, 0); wr32(b + 12, aeth);
    memcpy(b + 16, src, mtu);
    sock_send(E, q, b, finish(E, q, b, 16, mtu, 0));
    uint64_t k = 1;
    size_t seglen = BTH_LEN + mtu + 4;
    int cap = GSO_MAX_BYTES / (int)(mtu + 16);
    while (k < npk - 1) { /* MIDDLE packets are all the same size: bursts */
        int m = (int)(npk - 1 - k);
        if (m > GSO_MAX_SEGS) m = GSO_MAX_SEGS;
        if (m > cap) m = cap;
        for (int i = 0; i < m; i++) {
            uint8_t *p = E->txbuf + (size_t)i * seglen;
            bth(p, READ_RESP_MIDDLE, q->dqpn, psn_add(psn, (int64_t)(k + (uint64_t)i)), 0, 0);
            memcpy(p + BTH_LEN, src + (k + (uint64_t)i) * mtu, mtu); /* a snapshot: the ICRC matches what is sent */
            finish(E, q, p, BTH_LEN, mtu, (uint16_t)i);
        }
        if (m == 1) sock_send(E, q, E->txbuf, seglen); else send_burst(E, q, m, seglen, BTH_LEN);
        k += (uint64_t)m;
    }
    uint64_t a = (npk - 1) * mtu;
    bth(b, READ_RESP_LAST, q->dqpn, psn_add(psn, (int64_t)(npk - 1)), 0, 0); wr32(b + 12, aeth);
    memcpy(b + 16, src + a, ln - a);
    sock_send(E, q, b, finish(E, q, b, 16, ln - a, 0));
}

static int take_recv(Engine *E, qp_t *q, uint32_t psn, wqe_t *out) {
    if (!q->rq_n) { E->stats[ST_RNR_NAKS_SENT]++; send_ack(E, q, psn, SYN_RNR_NAK | 1); return 0; }
    *out = q->rq[q->rq_head];
    q->rq_head = (q->rq_head + 1) % q->rq_cap; q->rq_n--;
    return 1;
}

static void on_send(Engine *E, qp_t *q, int op, uint32_t psn, const uint8_t *pkt, size_t n) {
    int first = op == SEND_FIRST || op == SEND_ONLY || op == SEND_ONLY_IMM;
    int last = op != SEND_FIRST && op != SEND_MIDDLE;
    size_t hl = has_imm(op) ? 16 : 12;
    if (n < hl) { E->stats[ST_RX_SHORT]++; return; }
    if (first) {
        if (q->cur_recv_valid) { fatal(E, q, psn, SYN_NAK_INV_REQ); return; } /* a new message inside a message */
        if (!take_recv(E, q, psn, &q->cur_recv)) return;
        q->cur_recv_valid = 1; q->cur_recv_off = 0;
    }
    if (!q->cur_recv_valid) { fatal(E, q, psn, SYN_NAK_INV_REQ); return; } /* MIDDLE/LAST without FIRST */
    wqe_t *r = &q->cur_recv;
    size_t dl = n - hl;
    if ((!last && dl != q->mtu) || q->cur_recv_off + dl > r->length) {
        cq_push(E, q->rcq, r->wr_id, WC_LOC_LEN_ERR, WC_RECV, 0, 0, q->qpn, q->dqpn, 0);
        mr_unref_wqe(r);
        q->cur_recv_valid = 0;
        fatal(E, q, psn, SYN_NAK_INV_REQ);
        return;
    }
    scatter_copy(r, q->cur_recv_off, pkt + hl, dl);
    q->cur_recv_off += dl;
    q->epsn = psn_add(psn, 1);
    if (last) {
        uint32_t imm = hl == 16 ? rd32(pkt + 12) : 0;
        q->cur_recv_valid = 0;
        q->msn = (q->msn + 1) & PSN_MASK;
        E->stats[ST_TWO_RECV]++;
        cq_push(E, q->rcq, r->wr_id, WC_SUCCESS, WC_RECV, (uint32_t)q->cur_recv_off, imm, q->qpn, q->dqpn, hl == 16 ? WC_WITH_IMM : 0);
        mr_unref_wqe(r);
    }
}

static void on_write(Engine *E, qp_t *q, int op, uint32_t psn, const uint8_t *pkt, size_t n) {
    size_t hl = 12;
    if (has_reth(op)) {
        if (q->cur_write_valid) { fatal(E, q, psn, SYN_NAK_INV_REQ); return; }
        if (n < 28) { E->stats[ST_RX_SHORT]++; return; }
        uint64_t va = rd64(pkt + 12), off = 0;
        uint32_t rkey = rd32(pkt + 20), ln = rd32(pkt + 24);
        hl = 28;
        mr_t *m = check_rkey(E, q, rkey, va, ln, ACC_REMOTE_WRITE, &off);
        if (!m) { fatal(E, q, psn, SYN_NAK_REM_ACCESS); return; }
        q->cur_write_valid = 1; q->cw_mr = m; q->cw_off = off; q->cw_left = ln; m->refs++;
    } else if (!q->cur_write_valid) { fatal(E, q, psn, SYN_NAK_INV_REQ); return; }
    int imm = has_imm(op);
    wqe_t r = {0};
    if (n < hl + (imm ? 4 : 0)) { E->stats[ST_RX_SHORT]++; return; }
    if (imm && !take_recv(E, q, psn, &r)) { /* WRITE with immediate consumes a receive */
        if (op == WRITE_ONLY_IMM) { q->cw_mr->refs--; q->cur_write_valid = 0; }
        return;
    }
    size_t dstart = hl + (imm ? 4 : 0);
    size_t dl = n - dstart;
    int last = op == WRITE_LAST || op == WRITE_LAST_IMM || op == WRITE_ONLY || op == WRITE_ONLY_IMM;
    if (dl > q->cw_left || (!last && dl != q->mtu) || (last && dl != q->cw_left)) {
        q->cw_mr->refs--; q->cur_write_valid = 0;
        if (imm) { cq_push(E, q->rcq, r.wr_id, WC_LOC_LEN_ERR, WC_RECV, 0, 0, q->qpn, q->dqpn, 0); mr_unref_wqe(&r); }
        fatal(E, q, psn, SYN_NAK_INV_REQ);
        return;
    }
    memcpy(q->cw_mr->base + q->cw_off, pkt + dstart, dl);
    q->epsn = psn_add(psn, 1);
    if (last) {
        q->cw_mr->refs--; q->cur_write_valid = 0;
        q->msn = (q->msn + 1) & PSN_MASK;
        if (imm) {
            E->stats[ST_TWO_RECV]++;
            cq_push(E, q->rcq, r.wr_id, WC_SUCCESS, WC_RECV_RDMA_IMM, 0, rd32(pkt + hl), q->qpn, q->dqpn, WC_WITH_IMM);
            mr_unref_wqe(&r);
        } else E->stats[ST_ONE_WRITE]++;
    } else { q->cw_off += dl; q->cw_left -= dl; }
}

static void on_request(Engine *E, qp_t *q, int op, uint32_t psn, const uint8_t *pkt, size_t n, int ackreq) {
    int32_t d = psn_diff(psn, q->epsn);
    if (d > 0) { /* a gap: NAK once with the PSN we expect (go-back-N) */
        E->stats[ST_RX_OOO]++;
        /* again for a packet that asks for an ACK: the first NAK may be lost */
        if (!q->nak_sent || ackreq) { q->nak_sent = 1; send_nak(E, q, q->epsn, SYN_NAK_PSN_SEQ); }
        return;
    }
    if (d < 0) { /* duplicate: re-ACK, and serve READs again (they are idempotent) */
        E->stats[ST_RX_DUP]++;
        if (op == READ_REQUEST && n >= 28) {
            uint64_t off = 0;
            uint32_t ln = rd32(pkt + 24);
            mr_t *m = check_rkey(E, q, rd32(pkt + 20), rd64(pkt + 12), ln, ACC_REMOTE_READ, &off);
            if (m) {
                /* a re-request may reach past what was executed (its first
                 * request was lost): what it covers counts as executed now */
                uint64_t npk = ln ? ((uint64_t)ln + q->mtu - 1) / q->mtu : 1;
                if (psn_diff(psn_add(psn, (int64_t)npk), q->epsn) > 0) { q->epsn = psn_add(psn, (int64_t)npk); q->nak_sent = 0; }
                send_read(E, q, psn, m, off, ln);
            }
        } else if (ackreq) send_ack(E, q, psn_add(q->epsn, -1), SYN_ACK);
        return;
    }
    q->nak_sent = 0;
    if (op == READ_REQUEST) {
        if (n < 28) { E->stats[ST_RX_SHORT]++; return; }
        uint64_t off = 0;
        uint32_t ln = rd32(pkt + 24);
        mr_t *m = check_rkey(E, q, rd32(pkt + 20), rd64(pkt + 12), ln, ACC_REMOTE_READ, &off);
        if (!m) { fatal(E, q, psn, SYN_NAK_REM_ACCESS); return; }
        uint64_t npk = ln ? ((uint64_t)ln + q->mtu - 1) / q->mtu : 1;
        q->epsn = psn_add(psn, (int64_t)npk);
        q->msn = (q->msn + 1) & PSN_MASK;
        E->stats[ST_ONE_READ]++;
        E->stats[ST_ONE_READ_BYTES] += ln;
        send_read(E, q, psn, m, off, ln);
        return;
    }
    if (op <= SEND_ONLY_IMM) on_send(E, q, op, psn, pkt, n);
    else on_write(E, q, op, psn, pkt, n);
    if (q->state == QPS_ERR || psn_diff(q->epsn, psn) <= 0) return; /* error NAKed, or RNR: nothing consumed */
    if (ackreq) send_ack(E, q, psn, SYN_ACK);
}

static int delta_ok(Engine *E, uint32_t n, uint32_t x) {
    delta_t *t = NULL;
    for (int i = 0; i < DELTA_CACHE; i++) if (E->deltas[i].len == n) { t = &E->deltas[i]; break; }
    if (!t) {
        size_t len = 36 + n - 4;
        uint8_t *z = calloc(1, len);
        if (!z) return 0;
        t = &E->deltas[E->delta_next];
        E->delta_next = (E->delta_next + 1) % DELTA_CACHE;
        uint32_t base = crc32_upd(0, z, len);
        for (int i = 1; i < GSO_MAX_SEGS; i++) { wr16(z + 12, (uint32_t)i); t->d[i] = crc32_upd(0, z, len) ^ base; }
        t->d[0] = 0xFFFFFFFFu; /* never a match for "no difference" */
        t->len = n;
        free(z);
    }
    for (int i = 1; i < GSO_MAX_SEGS; i++) if (t->d[i] == x) return 1;
    return 0;
}

/* One packet (BTH .. ICRC) from src. Every length is checked before use:
 * malformed packets are counted and dropped, or NAKed where the spec says so. */
static void on_packet(Engine *E, const uint8_t *pkt, size_t n, const struct sockaddr_in *src) {
    E->stats[ST_RX_PACKETS]++;
    if (n < BTH_LEN + 4 || n > RX_BUF) { E->stats[ST_RX_SHORT]++; return; }
    uint32_t dqpn = ((uint32_t)pkt[5] << 16) | ((uint32_t)pkt[6] << 8) | pkt[7];
    qp_t *q = find_qp(E, dqpn);
    if (!q) { E->stats[ST_RX_NO_QP]++; return; }
    uint32_t seed = icrc_seed(src->sin_addr.s_addr, q->local_ip, ntohs(src->sin_port), E->port, (uint32_t)n, 0);
    uint32_t crc = icrc_of(seed, pkt, n - 4);
    uint32_t got = (uint32_t)pkt[n - 4] | ((uint32_t)pkt[n - 3] << 8) | ((uint32_t)pkt[n - 2] << 16) | ((uint32_t)pkt[n - 1] << 24);
    if (crc != got && !delta_ok(E, (uint32_t)n, crc ^ got)) { E->stats[ST_RX_ICRC]++; return; }
    if (q->state != QPS_RTR && q->state != QPS_RTS) { E->stats[ST_RX_STATE]++; return; }
    int op = pkt[0], pad = (pkt[1] >> 4) & 3;
    uint32_t psn = rd32(pkt + 8) & PSN_MASK;
    size_t body = n - 4; /* without the ICRC */
    if (body < BTH_LEN + (size_t)pad) { E->stats[ST_RX_SHORT]++; return; }
    if (op == ACK || (op >= READ_RESP_FIRST && op <= READ_RESP_ONLY)) {
        if (q->state == QPS_RTS) on_response(E, q, op, psn, pkt, body, pad);
        return;
    }
    if (op > READ_REQUEST) { send_nak(E, q, psn, SYN_NAK_INV_REQ); return; }
    if (body - (size_t)pad > BTH_LEN + 16 + 4 + q->mtu) { /* longer than the path MTU allows */
        E->stats[ST_RX_BAD_LEN]++;
        if (psn_diff(psn, q->epsn) == 0) fatal(E, q, psn, SYN_NAK_INV_REQ);
        return;
    }
    on_request(E, q, op, psn, pkt, body - (size_t)pad, (pkt[8] & 0x80) != 0);
}

static void timers(Engine *E) {
    uint64_t t = now_ns();
    for (int i = 0; i < E->cap_qps; i++) {
        qp_t *q = &E->qps[i];
        if (q->used && q->deadline && t >= q->deadline) on_timer(E, q);
    }
}
static uint64_t next_deadline(Engine *E) {
    uint64_t t = now_ns(), dl = t + IDLE_WAKE_NS;
    for (int i = 0; i < E->cap_qps; i++) {
        qp_t *q = &E->qps[i];
        if (q->used && q->deadline && q->deadline < dl) dl = q->deadline;
    }
    return dl > t ? dl - t : 0;
}

/* Receive what is queued (one recvmmsg per batch) and process it; lock held. */
static int rx_batch(Engine *E) {
    int total = 0;
    for (int round = 0; round < 16; round++) {
        for (int i = 0; i < RX_BATCH; i++) {
            E->rxiov[i].iov_base = E->rxbufs + (size_t)i * RX_BUF;
            E->rxiov[i].iov_len = RX_BUF;
            struct msghdr *h = &E->rxmsg[i].msg_hdr;
            memset(h, 0, sizeof *h);
            h->msg_name = &E->rxaddr[i]; h->msg_namelen = sizeof E->rxaddr[i];
            h->msg_iov = &E->rxiov[i]; h->msg_iovlen = 1;
            h->msg_control = E->rxctl[i]; h->msg_controllen = sizeof E->rxctl[i];
        }
        int got = recvmmsg(E->fd, E->rxmsg, RX_BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) break;
        for (int i = 0; i < got; i++) {
            size_t len = E->rxmsg[i].msg_len, seg = len;
            struct msghdr *h = &E->rxmsg[i].msg_hdr;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                    int gs = 0;
                    memcpy(&gs, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0) < sizeof gs ? c->cmsg_len - CMSG_LEN(0) : sizeof gs);
                    if (gs > 0 && (size_t)gs < len) { seg = (size_t)gs; E->stats[ST_RX_GRO]++; }
                }
            }
            const uint8_t *p = E->rxbufs + (size_t)i * RX_BUF;
            for (size_t off = 0; off < len; off += seg)
                on_packet(E, p + off, len - off < seg ? len - off : seg, &E->rxaddr[i]);
            total++;
        }
        if (got < RX_BATCH) break;
    }
    return total;
}

static void *engine_main(void *arg) {
    Engine *E = arg;
    tl_engine = 1;
    struct pollfd pf[2] = {{E->fd, POLLIN, 0}, {E->evfd, POLLIN, 0}};
    while (!__atomic_load_n(&E->closing, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&E->mu);
        uint64_t wait = next_deadline(E), t = now_ns();
        int busy = __atomic_load_n(&E->busy_pollers, __ATOMIC_RELAXED);
        /* a busy poller receives (we keep the timers); recently armed timers
         * mean more may come without a wake-up (see arm) */
        if ((busy || t < E->active_until) && wait > RTO_MIN_NS) wait = RTO_MIN_NS;
        E->sleep_until = t + wait;
        pthread_mutex_unlock(&E->mu);
        int ms = (int)((wait + 999999) / 1000000);
        __atomic_store_n(&E->socket_unwatched, busy, __ATOMIC_RELAXED);
        poll(busy ? pf + 1 : pf, busy ? 1 : 2, ms);
        __atomic_store_n(&E->socket_unwatched, 0, __ATOMIC_RELAXED);
        if (pf[1].revents & POLLIN) { uint64_t v; if (read(E->evfd, &v, 8) < 0) { /* empty */ } }
        if (__atomic_load_n(&E->closing, __ATOMIC_ACQUIRE)) break;
        pthread_mutex_lock(&E->mu);
        int got = rx_batch(E);
        timers(E);
        pthread_mutex_unlock(&E->mu);
        /* After a lone packet (request/response traffic), keep polling a while
         * without sleeping: the peer's next one usually comes within a round
         * trip. After a batch (bulk data) sleep: the next wake-up finds a
         * batch again, and a spinning thread would take the CPU the sender
         * needs on a small machine (adaptive polling). */
        int spin = got > 0 && got <= 2;
        uint64_t end = spin ? now_ns() + E->spin_ns : 0;
        while (spin && now_ns() < end && !__atomic_load_n(&E->closing, __ATOMIC_ACQUIRE) &&
               !__atomic_load_n(&E->busy_pollers, __ATOMIC_RELAXED)) {
            pthread_mutex_lock(&E->mu);
            int g = rx_batch(E);
            timers(E);
            pthread_mutex_unlock(&E->mu);
            if (g > 2) break;
            if (g) end = now_ns() + E->spin_ns;
            else sched_yield(); /* on a busy machine, others run first: spin only on a spare CPU */
        }
    }
    return NULL;
}

/* ======================================================================= Python */

static PyObject *err(const char *msg) { PyErr_SetString(PyExc_ValueError, msg); return NULL; }

static void reap_mrs(Engine *E) { /* GIL held, lock not held */
    for (int i = 0; i < E->n_mrs; i++) {
        mr_t *m = E->mrs[i];
        int free_it = 0;
        pthread_mutex_lock(&E->mu);
        if (m->used && m->dead && m->refs <= 0) { m->used = 0; free_it = 1; }
        pthread_mutex_unlock(&E->mu);
        if (free_it) PyBuffer_Release(&m->view);
    }
}

static int Engine_init(Engine *E, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"fd", "port", "spin_us", "gso", NULL};
    int fd, port, gso = 1;
    double spin_us = 200;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii|dp", kwl, &fd, &port, &spin_us, &gso)) return -1;
    if (E->started) { PyErr_SetString(PyExc_RuntimeError, "engine already started"); return -1; }
    E->fd = fd; E->port = (uint16_t)port; E->gso = gso;
    E->spin_ns = (uint64_t)(spin_us * 1000.0);
    int one = 1;
    E->gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
    E->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    E->cap_qps = 64; E->cap_cqs = 64; E->cap_mrs = 64;
    E->qps = calloc((size_t)E->cap_qps, sizeof(qp_t));
    E->cqs = calloc((size_t)E->cap_cqs, sizeof(cq_t));
    E->mrs = calloc((size_t)E->cap_mrs, sizeof(mr_t *));
    E->txbuf = malloc(TX_BUF);
    E->rxbufs = malloc((size_t)RX_BATCH * RX_BUF);
    if (E->evfd < 0 || !E->qps || !E->cqs || !E->mrs || !E->txbuf || !E->rxbufs) { PyErr_NoMemory(); return -1; }
    pthread_mutex_init(&E->mu, NULL);
    if (pthread_create(&E->thread, NULL, engine_main, E) != 0) { PyErr_SetString(PyExc_OSError, "cannot start the engine thread"); return -1; }
    E->started = 1;
    return 0;
}

static void engine_stop(Engine *E) {
    if (!E->started) return;
    __atomic_store_n(&E->closing, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(E->evfd, &one, 8) < 0) { /* the thread wakes on its idle timer */ }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(E->thread, NULL);
    Py_END_ALLOW_THREADS
    E->started = 0;
    for (int i = 0; i < E->cap_qps; i++) { free(E->qps[i].sq); free(E->qps[i].rq); E->qps[i].sq = E->qps[i].rq = NULL; E->qps[i].used = 0; }
    for (int i = 0; i < E->cap_cqs; i++) if (E->cqs[i].used) { PyBuffer_Release(&E->cqs[i].view); pthread_cond_destroy(&E->cqs[i].cond); E->cqs[i].used = 0; }
    for (int i = 0; i < E->n_mrs; i++) if (E->mrs[i]->used) { PyBuffer_Release(&E->mrs[i]->view); E->mrs[i]->used = 0; }
    close(E->evfd);
}

static void Engine_dealloc(Engine *E) {
    engine_stop(E);
    for (int i = 0; i < E->n_mrs; i++) free(E->mrs[i]);
    free(E->qps); free(E->cqs); free(E->mrs); free(E->txbuf); free(E->rxbufs);
    Py_TYPE(E)->tp_free((PyObject *)E);
}

static PyObject *Engine_close(Engine *E, PyObject *unused) { engine_stop(E); Py_RETURN_NONE; }

/* reg_mr(buffer, lkey, rkey, access, pd) -> address */
static PyObject *Engine_reg_mr(Engine *E, PyObject *args) {
    PyObject *obj;
    unsigned int lkey, rkey, access, pd;
    if (!PyArg_ParseTuple(args, "OIIII", &obj, &lkey, &rkey, &access, &pd)) return NULL;
    reap_mrs(E);
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    pthread_mutex_lock(&E->mu);
    int slot = -1;
    for (int i = 0; i < E->n_mrs; i++) if (!E->mrs[i]->used) { slot = i; break; }
    if (slot < 0) {
        mr_t *fresh = calloc(1, sizeof(mr_t));
        if (fresh && E->n_mrs == E->cap_mrs) {
            mr_t **n = realloc(E->mrs, sizeof(mr_t *) * (size_t)E->cap_mrs * 2);
            if (n) { E->mrs = n; E->cap_mrs *= 2; } else { free(fresh); fresh = NULL; }
        }
        if (!fresh) { pthread_mutex_unlock(&E->mu); PyBuffer_Release(&view); return PyErr_NoMemory(); }
        slot = E->n_mrs++;
        E->mrs[slot] = fresh;
    }
    mr_t *m = E->mrs[slot];
    memset(m, 0, sizeof *m);
    m->view = view; m->base = view.buf; m->len = (uint64_t)view.len;
    m->lkey = lkey; m->rkey = rkey; m->access = access; m->pd = pd; m->used = 1;
    pthread_mutex_unlock(&E->mu);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)view.buf);
}

static PyObject *Engine_dereg_mr(Engine *E, PyObject *args) {
    unsigned int lkey;
    if (!PyArg_ParseTuple(args, "I", &lkey)) return NULL;
    pthread_mutex_lock(&E->mu);
    for (int i = 0; i < E->n_mrs; i++) if (E->mrs[i]->used && !E->mrs[i]->dead && E->mrs[i]->lkey == lkey) E->mrs[i]->dead = 1;
    pthread_mutex_unlock(&E->mu);
    reap_mrs(E);
    Py_RETURN_NONE;
}

/* cq_create(ring bytearray) -> cq index. The ring: prod u64 | cons u64 | ... | entries at 64. */
static PyObject *Engine_cq_create(Engine *E, PyObject *args) {
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (view.len < CQ_HDR + CQE_SIZE) { PyBuffer_Release(&view); return err("CQ ring too small"); }
    pthread_mutex_lock(&E->mu);
    int slot = -1;
    for (int i = 0; i < E->cap_cqs; i++) if (!E->cqs[i].used) { slot = i; break; }
    if (slot < 0) { pthread_mutex_unlock(&E->mu); PyBuffer_Release(&view); return err("too many CQs on this context (64)"); }
    cq_t *c = &E->cqs[slot];
    c->view = view; c->ring = view.buf; c->depth = (uint32_t)((view.len - CQ_HDR) / CQE_SIZE);
    memset(c->ring, 0, CQ_HDR);
    pthread_cond_init(&c->cond, NULL);
    c->used = 1; c->waiters = 0;
    pthread_mutex_unlock(&E->mu);
    return PyLong_FromLong(slot);
}

static PyObject *Engine_cq_destroy(Engine *E, PyObject *args) {
    int cqi;
    if (!PyArg_ParseTuple(args, "i", &cqi)) return NULL;
    if (cqi < 0 || cqi >= E->cap_cqs) return err("bad CQ");
    pthread_mutex_lock(&E->mu);
    cq_t *c = &E->cqs[cqi];
    int was = c->used && !c->waiters;
    if (was) c->used = 0;
    pthread_mutex_unlock(&E->mu);
    if (was) { PyBuffer_Release(&c->view); pthread_cond_destroy(&c->cond); }
    Py_RETURN_NONE;
}

/* cq_wait(cq, seen_prod, timeout_s): sleep (GIL released) until the ring's
 * producer index passes seen_prod or the timeout. */
static PyObject *Engine_cq_wait(Engine *E, PyObject *args) {
    int cqi;
    unsigned long long seen;
    double timeout;
    if (!PyArg_ParseTuple(args, "iKd", &cqi, &seen, &timeout)) return NULL;
    if (cqi < 0 || cqi >= E->cap_cqs || !E->cqs[cqi].used) return err("bad CQ");
    cq_t *c = &E->cqs[cqi];
    Py_BEGIN_ALLOW_THREADS
    if (__atomic_load_n(&E->socket_unwatched, __ATOMIC_RELAXED) && !__atomic_load_n(&E->busy_pollers, __ATOMIC_RELAXED)) {
        uint64_t one = 1; /* we block: the engine thread must receive again */
        if (write(E->evfd, &one, 8) < 0) { /* it looks again within RTO_MIN_NS */ }
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)(timeout * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000ull); ts.tv_nsec = (long)(ns % 1000000000ull);
    pthread_mutex_lock(&E->mu);
    c->waiters++;
    while (__atomic_load_n((uint64_t *)c->ring, __ATOMIC_ACQUIRE) <= seen && !E->closing)
        if (pthread_cond_timedwait(&c->cond, &E->mu, &ts) == ETIMEDOUT) break;
    c->waiters--;
    pthread_mutex_unlock(&E->mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* cq_spin(cq, seen_prod, budget_s) -> bool: busy-poll (GIL released) until
 * the ring's producer index passes seen_prod, for at most budget_s. This
 * thread receives and runs the timers meanwhile (the engine thread leaves the
 * socket to it), so a completion costs no wake-up; the loop itself makes no
 * system call but the non-blocking receive. False: the budget ran out. */
static PyObject *Engine_cq_spin(Engine *E, PyObject *args) {
    int cqi;
    unsigned long long seen;
    double budget;
    if (!PyArg_ParseTuple(args, "iKd", &cqi, &seen, &budget)) return NULL;
    if (cqi < 0 || cqi >= E->cap_cqs || !E->cqs[cqi].used) return err("bad CQ");
    cq_t *c = &E->cqs[cqi];
    int got = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&E->mu);
    c->waiters++; /* cq_destroy leaves a CQ that someone waits on */
    pthread_mutex_unlock(&E->mu);
    __atomic_add_fetch(&E->busy_pollers, 1, __ATOMIC_RELAXED);
    uint64_t end = now_ns() + (uint64_t)(budget > 0 ? budget * 1e9 : 0);
    for (unsigned n = 0; !__atomic_load_n(&E->closing, __ATOMIC_ACQUIRE); n++) {
        if (__atomic_load_n((uint64_t *)c->ring, __ATOMIC_ACQUIRE) > seen) { got = 1; break; }
        int rx = 0;
        if (pthread_mutex_trylock(&E->mu) == 0) { rx = rx_batch(E); timers(E); pthread_mutex_unlock(&E->mu); }
        if (__atomic_load_n((uint64_t *)c->ring, __ATOMIC_ACQUIRE) > seen) { got = 1; break; }
        if ((n & 15) == 15 && now_ns() >= end) break;
        /* Nothing yet: let a runnable thread have this CPU first. On a small
         * shared machine the peer's thread (or our own engine's) may be
         * waiting for exactly this core; spinning through our time slice
         * would delay the very answer we wait for by milliseconds (measured:
         * p50 8.7 us but 1-4 ms after bulk transfers and in some runs
         * without it; 12 us in every run with it, load 5 on 2 cores). */
        if (!rx) sched_yield();
    }
    __atomic_sub_fetch(&E->busy_pollers, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&E->mu);
    c->waiters--;
    pthread_mutex_unlock(&E->mu);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(got);
}

static PyObject *no_qp(unsigned int qpn) { return PyErr_Format(PyExc_ValueError, "no QP %#x on this context", qpn); }

/* qp_create(qpn, pd, scq, rcq, max_send_wr, max_recv_wr, sq_sig_all) */
static PyObject *Engine_qp_create(Engine *E, PyObject *args) {
    unsigned int qpn, pd, msw, mrw, sig;
    int scq, rcq;
    if (!PyArg_ParseTuple(args, "IIiiIII", &qpn, &pd, &scq, &rcq, &msw, &mrw, &sig)) return NULL;
    if (msw == 0 || mrw == 0 || msw > 65536 || mrw > 65536) return err("max_send_wr/max_recv_wr must be 1..65536");
    wqe_t *sq = calloc(msw, sizeof(wqe_t)), *rq = calloc(mrw, sizeof(wqe_t));
    if (!sq || !rq) { free(sq); free(rq); return PyErr_NoMemory(); }
    pthread_mutex_lock(&E->mu);
    int slot = -1;
    for (int i = 0; i < E->cap_qps; i++) if (!E->qps[i].used) { slot = i; break; }
    if (slot < 0 || find_qp(E, qpn)) { pthread_mutex_unlock(&E->mu); free(sq); free(rq); return err("too many QPs on this context (64), or QPN taken"); }
    qp_t *q = &E->qps[slot];
    memset(q, 0, sizeof *q);
    q->qpn = qpn; q->pd = pd; q->scq = scq; q->rcq = rcq; q->sq_sig_all = sig;
    q->sq = sq; q->sq_cap = msw; q->rq = rq; q->rq_cap = mrw;
    q->mtu = 1024; q->retry_cnt = q->retries_left = 7; q->rnr_retry = q->rnr_left = 7;
    q->timeout_ns = 67000000ull; q->max_rd_atomic = 4;
    q->cwnd = q->ssthresh = MAX_INFLIGHT;
    q->rto = rto_of(q);
    q->used = 1;
    pthread_mutex_unlock(&E->mu);
    Py_RETURN_NONE;
}

static void qp_reset_transport(Engine *E, qp_t *q) {
    while (q->sq_n) { mr_unref_wqe(sq_at(q, 0)); sq_pop_front(q); }
    while (q->rq_n) { mr_unref_wqe(&q->rq[q->rq_head]); q->rq_head = (q->rq_head + 1) % q->rq_cap; q->rq_n--; }
    if (q->cur_recv_valid) mr_unref_wqe(&q->cur_recv);
    if (q->cur_write_valid) q->cw_mr->refs--;
    q->cur_recv_valid = q->cur_write_valid = 0;
    q->snd_nxt = q->snd_una = q->next_psn = q->epsn = q->msn = 0;
    q->deadline = 0; q->nak_sent = 0; q->rnr_wait = 0;
    q->cwnd = q->ssthresh = MAX_INFLIGHT;
    q->srtt = q->rttvar = 0; q->probe_valid = q->nak_valid = 0; q->snd_max = 0;
    q->rto = rto_of(q);
    (void)E;
}

static PyObject *Engine_qp_destroy(Engine *E, PyObject *args) {
    unsigned int qpn;
    if (!PyArg_ParseTuple(args, "I", &qpn)) return NULL;
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    if (q) { qp_reset_transport(E, q); free(q->sq); free(q->rq); q->sq = q->rq = NULL; q->used = 0; }
    pthread_mutex_unlock(&E->mu);
    reap_mrs(E);
    Py_RETURN_NONE;
}

/* qp_modify(qpn, state, **fields): the control path (Python checks the transitions). */
static PyObject *Engine_qp_modify(Engine *E, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"qpn", "state", "access", "mtu", "dqpn", "rq_psn", "sq_psn", "remote_ip", "remote_port",
                          "local_ip", "timeout_ns", "retry_cnt", "rnr_retry", "max_rd_atomic", NULL};
    unsigned int qpn, state, access = 0, mtu = 0, dqpn = 0, rq_psn = 0, sq_psn = 0, rport = 0;
    unsigned int rip = 0, lip = 0;
    unsigned long long tmo = 0;
    int retry = -1, rnr = -1, rd = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "II|IIIIIIIIKiii", kwl, &qpn, &state, &access, &mtu, &dqpn, &rq_psn,
                                     &sq_psn, &rip, &rport, &lip, &tmo, &retry, &rnr, &rd)) return NULL;
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    if (!q) { pthread_mutex_unlock(&E->mu); return no_qp(qpn); }
    if (state == QPS_ERR) to_error(E, q);
    else if (state == QPS_RESET) { qp_reset_transport(E, q); q->state = QPS_RESET; }
    else {
        if (state == QPS_INIT) q->access = access;
        if (state == QPS_RTR) {
            if (mtu) q->mtu = mtu;
            q->dqpn = dqpn & PSN_MASK; q->epsn = rq_psn & PSN_MASK;
            q->remote_ip = rip; q->remote_port = (uint16_t)rport; q->local_ip = lip;
            memset(&q->remote, 0, sizeof q->remote);
            q->remote.sin_family = AF_INET; q->remote.sin_addr.s_addr = rip; q->remote.sin_port = htons((uint16_t)rport);
            if (access) q->access = access;
        }
        if (state == QPS_RTS && q->state == QPS_RTR) {
            q->snd_nxt = q->snd_una = q->next_psn = q->snd_max = q->rd_hi = sq_psn & PSN_MASK;
            if (retry >= 0) q->retry_cnt = q->retries_left = retry;
            if (rnr >= 0) q->rnr_retry = q->rnr_left = rnr;
            if (tmo) q->timeout_ns = tmo;
            q->rto = rto_of(q);
            if (rd > 0) q->max_rd_atomic = rd;
        }
        q->state = state;
    }
    pthread_mutex_unlock(&E->mu);
    Py_RETURN_NONE;
}

/* qp_set(qpn, timeout_ns, retry_cnt): re-arm the requester's timers (tests). */
static PyObject *Engine_qp_set(Engine *E, PyObject *args) {
    unsigned int qpn;
    unsigned long long tmo;
    int retry;
    if (!PyArg_ParseTuple(args, "IKi", &qpn, &tmo, &retry)) return NULL;
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    if (q) { if (tmo) q->timeout_ns = tmo; if (retry >= 0) q->retry_cnt = q->retries_left = retry; q->rto = rto_of(q); }
    pthread_mutex_unlock(&E->mu);
    if (!q) return no_qp(qpn);
    Py_RETURN_NONE;
}

static PyObject *Engine_qp_query(Engine *E, PyObject *args) {
    unsigned int qpn;
    if (!PyArg_ParseTuple(args, "I", &qpn)) return NULL;
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    unsigned int st = q ? q->state : 0, np = q ? q->next_psn : 0, ep = q ? q->epsn : 0, sq = q ? q->sq_n : 0;
    unsigned long long tmo = q ? q->timeout_ns : 0, rto = q ? q->rto : 0, srtt = q ? q->srtt : 0;
    int rc = q ? q->retry_cnt : 0, left = q ? q->retries_left : 0;
    unsigned int cwnd = q ? q->cwnd : 0;
    pthread_mutex_unlock(&E->mu);
    if (!q) return no_qp(qpn);
    return Py_BuildValue("{sIsIsIsIsKsisKsKsisI}", "qp_state", st, "sq_psn", np, "rq_psn", ep, "sq_outstanding", sq, "timeout_ns", tmo, "retry_cnt", rc, "rto_ns", rto, "srtt_ns", srtt, "retries_left", left, "cwnd", cwnd);
}

/* Resolve [(addr, length, lkey), ...] into a WQE's SGEs; 0 on a protection error. */
static int gather(Engine *E, qp_t *q, PyObject *sges, wqe_t *w, int need_write) {
    Py_ssize_t n = PyList_GET_SIZE(sges);
    w->nsge = 0; w->length = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(sges, i);
        unsigned long long addr, len;
        unsigned int lkey;
        if (!PyArg_ParseTuple(t, "KKI", &addr, &len, &lkey)) return -1;
        mr_t *m = find_mr(E, lkey, 0);
        if (!m || m->pd != q->pd) return 0;
        uint64_t base = (uint64_t)(uintptr_t)m->base;
        if (addr < base || addr - base > m->len || len > m->len - (addr - base)) return 0;
        if (need_write && !(m->access & ACC_LOCAL_WRITE)) return 0;
        w->sge[w->nsge].p = m->base + (addr - base);
        w->sge[w->nsge].len = (uint32_t)len;
        w->sge[w->nsge].mr = m;
        w->nsge++;
        w->length += len;
    }
    for (int i = 0; i < w->nsge; i++) w->sge[i].mr->refs++;
    return 1;
}

/* post_send(qpn, [(wr_id, opcode, signaled, imm, raddr, rkey, [(addr, len, lkey)...]), ...]) */
static PyObject *Engine_post_send(Engine *E, PyObject *args) {
    unsigned int qpn;
    PyObject *wrs;
    if (!PyArg_ParseTuple(args, "IO!", &qpn, &PyList_Type, &wrs)) return NULL;
    Py_ssize_t nw = PyList_GET_SIZE(wrs);
    reap_mrs(E);
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    if (!q) { pthread_mutex_unlock(&E->mu); return no_qp(qpn); }
    if (q->state != QPS_RTS && q->state != QPS_ERR) { pthread_mutex_unlock(&E->mu); return err("post_send needs RTS"); }
    if (q->sq_n + (uint32_t)nw > q->sq_cap) { pthread_mutex_unlock(&E->mu); PyErr_SetString(PyExc_MemoryError, "send queue full"); return NULL; }
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *t = PyList_GET_ITEM(wrs, i), *sges;
        unsigned long long wr_id, raddr;
        int op, sig;
        unsigned int imm, rkey;
        if (!PyArg_ParseTuple(t, "KiiIKIO!", &wr_id, &op, &sig, &imm, &raddr, &rkey, &PyList_Type, &sges)) { pthread_mutex_unlock(&E->mu); return NULL; }
        if (PyList_GET_SIZE(sges) > MAX_SGE) { pthread_mutex_unlock(&E->mu); return err("too many SGEs (8 at most)"); }
        wqe_t *w = &q->sq[(q->sq_head + q->sq_n) % q->sq_cap];
        memset(w, 0, sizeof *w);
        w->wr_id = wr_id; w->op = op; w->signaled = sig || q->sq_sig_all; w->imm = imm; w->raddr = raddr; w->rkey = rkey;
        w->first_psn = q->next_psn; w->npkts = 1;
        int g = q->state == QPS_ERR ? 1 : gather(E, q, sges, w, op == WR_READ);
        if (g < 0) { pthread_mutex_unlock(&E->mu); return NULL; }
        if (q->state == QPS_ERR || g == 0) {
            int st = q->state == QPS_ERR ? WC_WR_FLUSH_ERR : WC_LOC_PROT_ERR;
            w->length = 0;
            complete_send(E, q, w, st, 1);
            if (st != WC_WR_FLUSH_ERR) to_error(E, q);
            continue;
        }
        if (w->length > 0x7FFFFFFFull) { mr_unref_wqe(w); pthread_mutex_unlock(&E->mu); return err("message longer than 2 GiB"); }
        w->npkts = w->length ? (uint32_t)((w->length + q->mtu - 1) / q->mtu) : 1;
        w->req_end = w->length;
        w->req_hi = 0;
        q->next_psn = psn_add(q->next_psn, w->npkts);
        q->sq_n++;
    }
    /* The GIL stays held: no thread ever waits for the GIL while holding the
     * engine lock (the engine thread never takes the GIL), so no deadlock. */
    pump(E, q);
    pthread_mutex_unlock(&E->mu);
    Py_RETURN_NONE;
}

/* post_recv(qpn, [(wr_id, [(addr, len, lkey)...]), ...]) -> list of wr_ids that failed (LOC_PROT). */
static PyObject *Engine_post_recv(Engine *E, PyObject *args) {
    unsigned int qpn;
    PyObject *wrs;
    if (!PyArg_ParseTuple(args, "IO!", &qpn, &PyList_Type, &wrs)) return NULL;
    Py_ssize_t nw = PyList_GET_SIZE(wrs);
    pthread_mutex_lock(&E->mu);
    qp_t *q = find_qp(E, qpn);
    if (!q) { pthread_mutex_unlock(&E->mu); return no_qp(qpn); }
    if (q->rq_n + (uint32_t)nw > q->rq_cap) { pthread_mutex_unlock(&E->mu); PyErr_SetString(PyExc_MemoryError, "receive queue full"); return NULL; }
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *t = PyList_GET_ITEM(wrs, i), *sges;
        unsigned long long wr_id;
        if (!PyArg_ParseTuple(t, "KO!", &wr_id, &PyList_Type, &sges)) { pthread_mutex_unlock(&E->mu); return NULL; }
        if (PyList_GET_SIZE(sges) > MAX_SGE) { pthread_mutex_unlock(&E->mu); return err("too many SGEs (8 at most)"); }
        wqe_t *w = &q->rq[(q->rq_head + q->rq_n) % q->rq_cap];
        memset(w, 0, sizeof *w);
        w->wr_id = wr_id;
        int g = gather(E, q, sges, w, 1);
        if (g < 0) { pthread_mutex_unlock(&E->mu); return NULL; }
        if (q->state == QPS_ERR || g == 0) {
            cq_push(E, q->rcq, wr_id, g == 0 ? WC_LOC_PROT_ERR : WC_WR_FLUSH_ERR, WC_RECV, 0, 0, q->qpn, q->dqpn, 0);
            mr_unref_wqe(w);
            continue;
        }
        q->rq_n++;
    }
    pthread_mutex_unlock(&E->mu);
    Py_RETURN_NONE;
}

/* progress(): receive and process from the calling thread (a busy poller),
 * when the engine thread is not at it. Returns packets handled. */
static PyObject *Engine_progress(Engine *E, PyObject *unused) {
    int got = 0;
    Py_BEGIN_ALLOW_THREADS
    if (pthread_mutex_trylock(&E->mu) == 0) { got = rx_batch(E); timers(E); pthread_mutex_unlock(&E->mu); }
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(got);
}

static PyObject *Engine_busy(Engine *E, PyObject *args) {
    int d;
    if (!PyArg_ParseTuple(args, "i", &d)) return NULL;
    /* No wake-up when the last busy poller leaves (a system call in every
     * completion wait): the engine thread looks again within RTO_MIN_NS, and
     * cq_wait wakes it when a thread is about to block. */
    __atomic_add_fetch(&E->busy_pollers, d, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Engine_stats(Engine *E, PyObject *unused) {
    uint64_t s[ST_N];
    pthread_mutex_lock(&E->mu);
    memcpy(s, E->stats, sizeof s);
    int gso = E->gso, gro = E->gro;
    pthread_mutex_unlock(&E->mu);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < ST_N; i++) {
        if (!s[i]) continue;
        PyObject *v = PyLong_FromUnsignedLongLong(s[i]);
        if (!v || PyDict_SetItemString(d, stat_names[i], v) < 0) { Py_XDECREF(v); Py_DECREF(d); return NULL; }
        Py_DECREF(v);
    }
    PyObject *g = Py_BuildValue("{sisi}", "gso", gso, "gro", gro);
    if (!g || PyDict_SetItemString(d, "_offloads", g) < 0) { Py_XDECREF(g); Py_DECREF(d); return NULL; }
    Py_DECREF(g);
    return d;
}

/* feed(packet, src_ip, src_port): process one packet as if received (tests of
 * malformed input: the same on_packet as the socket path). */
static PyObject *Engine_feed(Engine *E, PyObject *args) {
    Py_buffer b;
    const char *ip;
    int port;
    if (!PyArg_ParseTuple(args, "y*si", &b, &ip, &port)) return NULL;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { PyBuffer_Release(&b); return err("bad IPv4 address"); }
    uint8_t *copy = malloc(b.len ? (size_t)b.len : 1); /* exactly as long as the packet: ASan sees any overread */
    if (!copy) { PyBuffer_Release(&b); return PyErr_NoMemory(); }
    memcpy(copy, b.buf, (size_t)b.len);
    size_t n = (size_t)b.len;
    PyBuffer_Release(&b);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&E->mu);
    on_packet(E, copy, n, &a);
    pthread_mutex_unlock(&E->mu);
    Py_END_ALLOW_THREADS
    free(copy);
    Py_RETURN_NONE;
}

static PyObject *py_icrc(PyObject *self, PyObject *args) {
    Py_buffer b;
    unsigned int seed;
    if (!PyArg_ParseTuple(args, "Iy*", &seed, &b)) return NULL;
    if (b.len < 5) { PyBuffer_Release(&b); return err("packet shorter than 5 bytes"); }
    uint32_t c = icrc_of(seed, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(c);
}

static PyMethodDef Engine_methods[] = {
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "stop the thread, release all memory"},
    {"reg_mr", (PyCFunction)Engine_reg_mr, METH_VARARGS, "register a writable buffer"},
    {"dereg_mr", (PyCFunction)Engine_dereg_mr, METH_VARARGS, "deregister by lkey"},
    {"cq_create", (PyCFunction)Engine_cq_create, METH_VARARGS, "a completion ring in a buffer"},
    {"cq_destroy", (PyCFunction)Engine_cq_destroy, METH_VARARGS, ""},
    {"cq_wait", (PyCFunction)Engine_cq_wait, METH_VARARGS, "sleep until a completion"},
    {"cq_spin", (PyCFunction)Engine_cq_spin, METH_VARARGS, "busy-poll until a completion, within a budget"},
    {"qp_create", (PyCFunction)Engine_qp_create, METH_VARARGS, ""},
    {"qp_destroy", (PyCFunction)Engine_qp_destroy, METH_VARARGS, ""},
    {"qp_modify", (PyCFunction)(void (*)(void))Engine_qp_modify, METH_VARARGS | METH_KEYWORDS, ""},
    {"qp_set", (PyCFunction)Engine_qp_set, METH_VARARGS, ""},
    {"qp_query", (PyCFunction)Engine_qp_query, METH_VARARGS, ""},
    {"post_send", (PyCFunction)Engine_post_send, METH_VARARGS, ""},
    {"post_recv", (PyCFunction)Engine_post_recv, METH_VARARGS, ""},
    {"progress", (PyCFunction)Engine_progress, METH_NOARGS, ""},
    {"busy", (PyCFunction)Engine_busy, METH_VARARGS, ""},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, ""},
    {"feed", (PyCFunction)Engine_feed, METH_VARARGS, ""},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nslab.rdma._softnic.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the native RoCEv2 data path of one soft device context",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static PyObject *py_crc_impl(PyObject *self, PyObject *unused) { return PyUnicode_FromString(crc_clmul ? "pclmul" : "tables"); }

static PyMethodDef module_methods[] = {
    {"icrc", py_icrc, METH_VARARGS, "icrc(seed, packet_without_icrc) -> int (as nslab.rdma.wire.icrc)"},
    {"crc_impl", py_crc_impl, METH_NOARGS, "which CRC32 the ICRC uses: 'pclmul' (carry-less folding) or 'tables'"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_softnic", "native RoCEv2 data path", -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__softnic(void) {
    crc_init();
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) { Py_DECREF(&EngineType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "CQE_SIZE", CQE_SIZE);
    PyModule_AddIntConstant(m, "CQ_HDR", CQ_HDR);
    return m;
}
