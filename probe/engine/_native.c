/* probe.engine._native: the sweep core of `probe check` in C (Linux).
 *
 * Why: per attempt the Python engine spends ~100 us, a third of it in the kernel; the rest
 * is Python objects around a handful of syscalls. Here one call runs a worker's whole share
 * of a sweep with the GIL released, its targets streamed in by a Python feed as it runs
 * (addresses and resolved names, CIDR and octet ranges made here, exclusions applied here,
 * every count-th endpoint taken as syntax.shard walks them): socket, optional bind,
 * connect, getsockname at once, the answer already in at connect taken there, epoll for the
 * rest, a deadline FIFO, SO_ERROR/getpeername before calling a timeout, TCP_INFO, RST close,
 * self-connect retry, --retries, --rate pacing, and local shortages handled as the Python
 * engine handles them (never a record; back off, retry the same attempt, give up after
 * 30 s stuck with nothing in flight). Records are written as JSON lines (or CSV rows), byte
 * for byte as the Python path writes them (output/jsonl.py, output/csv.py; the keys, the
 * outcomes and errno names and the lag buckets given by Python at import: `configure`), to
 * a file descriptor (and -o FILE's) in large chunks of whole lines (a pipe's reader that
 * stops reading never gets half of one: write_all).
 *
 * A stop fd (the read end of the pipe that signal.set_wakeup_fd writes to) sits in the
 * epoll set: SIGINT/SIGTERM end the call promptly; records finished by then are written. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef __linux__
#error "the native sweep core is Linux only"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/time_types.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Records are written in batches of this size (and on the 0.2 s tick): a worker's pipe
 * holds a whole batch, so its parent takes it in one read (check/workers.py) */
#define OUT_SIZE (1 << 18)
#define OUT_ROOM 2048 /* a record is far shorter than this */
#define SELF_CONNECT_TRIES 8
#define START_BATCH 64         /* starts between two looks at completions */
#define TICK_NS 200000000LL    /* flush and progress every 0.2 s */
/* Deadlines are taken in batches: the loop wakes this long after the first one due, not at
 * every one (a wave of 500 timeouts started ~10 us apart would be 500 wake-ups). Each
 * slot's next attempt starts at most this much later; epoll_wait's milliseconds were up
 * to 1 ms. */
#define DEADLINE_SLACK_NS 200000LL
#define SELF_CONNECT (-1)

enum { O_OPEN, O_REFUSED, O_TIMEOUT, O_UNREACHABLE, O_ERROR, N_OUTCOMES };

/* errno -> name, as Python's errno.errorcode spells it (set once from Python). */
#define N_ERRNAMES 256
static char *errnames[N_ERRNAMES];

/* ------------------------------------------------------------------------------------------ */
/* JSON pieces, formatted as msgspec formats them                                            */

typedef struct {
  char *p;
  size_t len, cap;
} buf_t;

static inline void put(buf_t *b, const char *s, size_t n) {
  memcpy(b->p + b->len, s, n);
  b->len += n;
}
#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

static inline void put_uint(buf_t *b, uint64_t v) {
  char tmp[24];
  int i = 24;
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  put(b, tmp + i, 24 - i);
}

/* JSON string body, escaped as msgspec does: \" \\ \b \f \n \r \t, other controls \u00xx,
 * everything else (DEL, non-ASCII UTF-8) as is. `out` needs room for 6 * n bytes. */
static size_t escape(const char *s, size_t n, char *out) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') {
      out[o++] = (char)c;
      continue;
    }
    out[o++] = '\\';
    switch (c) {
      case '"': out[o++] = '"'; break;
      case '\\': out[o++] = '\\'; break;
      case '\b': out[o++] = 'b'; break;
      case '\f': out[o++] = 'f'; break;
      case '\n': out[o++] = 'n'; break;
      case '\r': out[o++] = 'r'; break;
      case '\t': out[o++] = 't'; break;
      default:
        out[o++] = 'u';
        out[o++] = '0';
        out[o++] = '0';
        out[o++] = hex[c >> 4];
        out[o++] = hex[c & 15];
    }
  }
  return o;
}

/* k thousandths as the shortest repr of the double nearest k/1000 (what msgspec prints for
 * round(x, 3)): "12.3", "0.001", "5.0". Exact while k < 10**15. */
static void put_thousandths(buf_t *b, uint64_t k) {
  put_uint(b, k / 1000);
  unsigned f = (unsigned)(k % 1000);
  if (f == 0) {
    PUTS(b, ".0");
    return;
  }
  char d[4] = {'.', (char)('0' + f / 100), (char)('0' + f / 10 % 10), (char)('0' + f % 10)};
  size_t n = 4;
  while (d[n - 1] == '0') n--;
  put(b, d, n);
}

/* round(ns / 1e6, 3) in thousandths of a millisecond, as Python computes it: the division
 * rounds to a double first, then round() rounds that double's exact value. Away from a tie
 * (ns % 1000 == 500) the double cannot cross the half-way point while it is below 2**30 ms;
 * at a tie, or beyond, glibc's exact printf decides as Python's correctly rounded round(). */
static uint64_t ms_thousandths(uint64_t ns) {
  uint64_t k = ns / 1000, r = ns % 1000;
  if (r != 500 && ns < (1ULL << 30) * 1000000ULL) return k + (r > 500);
  char tmp[64];
  snprintf(tmp, sizeof tmp, "%.3f", (double)ns / 1e6);
  char *dot = strchr(tmp, '.');
  uint64_t whole = strtoull(tmp, NULL, 10);
  return whole * 1000 + (uint64_t)strtoul(dot + 1, NULL, 10);
}

/* The cached "YYYY-MM-DDTHH:MM:SS" of the last second seen. */
typedef struct {
  time_t sec;
  char text[20];
} tscache_t;

static void put_timestamp(buf_t *b, tscache_t *cache, const struct timespec *wall) {
  /* Python: round(time.time() * 1e6) microseconds; here from the timespec directly. */
  uint64_t micros = (uint64_t)wall->tv_sec * 1000000ULL + ((uint64_t)wall->tv_nsec + 500) / 1000;
  time_t sec = (time_t)(micros / 1000000ULL);
  unsigned frac = (unsigned)(micros % 1000000ULL);
  if (sec != cache->sec) {
    struct tm tm;
    gmtime_r(&sec, &tm);
    strftime(cache->text, sizeof cache->text, "%Y-%m-%dT%H:%M:%S", &tm);
    cache->sec = sec;
  }
  put(b, cache->text, 19);
  char f[9] = {'.', 0, 0, 0, 0, 0, 0, 'Z', '"'};
  for (int i = 6; i >= 1; i--) {
    f[i] = (char)('0' + frac % 10);
    frac /= 10;
  }
  put(b, f, 9);
}

static const char *errname(int err, char *tmp) {
  if (err == SELF_CONNECT) return "SELF_CONNECT";
  if (err > 0 && err < N_ERRNAMES && errnames[err]) return errnames[err];
  sprintf(tmp, "E%d", err);
  return tmp;
}

/* errno -> outcome, from Python's record.outcome_of (`configure`); these until then. */
static unsigned char errno_outcome[N_ERRNAMES];
static int errno_outcome_set;

static int outcome_of(int err) {
  if (errno_outcome_set) return err >= 0 && err < N_ERRNAMES ? errno_outcome[err] : O_ERROR;
  switch (err) {
    case 0: return O_OPEN;
    case ECONNREFUSED:
    case ECONNRESET: return O_REFUSED;
    case ETIMEDOUT: return O_TIMEOUT;
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN: return O_UNREACHABLE;
    default: return O_ERROR;
  }
}

static int is_shortage(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM || err == EAGAIN;
}

static int is_shortage_at_connect(int err) {
  return is_shortage(err) || err == EADDRNOTAVAIL || err == EADDRINUSE;
}

/* ------------------------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------------------------ */
/* Address text                                                                               */

typedef unsigned __int128 u128;

/* An IPv6 address as probe writes it (address.ip_text): ipaddress's text (the longest run of
 * two or more zero groups as "::", the leftmost of equals; lowercase hex), except that an
 * IPv4-mapped address keeps its IPv4 part dotted. inet_ntop differs (::1.2.3.4). */
static size_t ipv6_text(const uint8_t ip[16], char *out) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (!memcmp(ip, mapped, 12))
    return (size_t)sprintf(out, "::ffff:%u.%u.%u.%u", ip[12], ip[13], ip[14], ip[15]);
  unsigned g[8];
  for (int i = 0; i < 8; i++) g[i] = (unsigned)ip[2 * i] << 8 | ip[2 * i + 1];
  int best = -1, best_len = 0;
  for (int i = 0; i < 8;) {
    if (g[i]) {
      i++;
      continue;
    }
    int j = i;
    while (j < 8 && !g[j]) j++;
    if (j - i > best_len) best = i, best_len = j - i;
    i = j;
  }
  if (best_len < 2) best = -1;
  size_t o = 0;
  for (int i = 0; i < 8; i++) {
    if (i == best) {
      out[o++] = ':';
      if (i == 0) out[o++] = ':';
      i += best_len - 1;
      continue;
    }
    o += (size_t)sprintf(out + o, "%x", g[i]);
    if (i < 7) out[o++] = ':';
  }
  out[o] = 0;
  return o;
}

/* ------------------------------------------------------------------------------------------ */
/* One record                                                                                 */

typedef struct {
  const char *host; /* escaped */
  size_t host_len;
  const char *host_raw; /* as written (CSV); NULL: the same as `host` */
  size_t host_raw_len;
  const char *address; /* escaped; NULL: no address (a name that did not resolve) */
  size_t address_len;
  int bracketed, family;
} rec_target_t;

typedef struct {
  const struct timespec *wall;
  int port;
  const struct sockaddr_storage *local; /* NULL: never reached connect */
  int outcome, err, timed_out;
  const char *error; /* the resolver's code, for a record without an address */
  uint64_t latency_ns;
  int64_t rtt_us;          /* < 0: null */
  int64_t syn_retransmits; /* < 0: null */
  uint64_t dns_k;          /* dns_ms in thousandths */
  unsigned attempt;
} rec_t;

/* HOST:PORT, or [HOST]:PORT (an IPv6 address as written in a target): the record's
 * target. */
static void put_host_port(buf_t *b, const char *host, size_t len, int bracketed, int port) {
  if (bracketed) PUTS(b, "[");
  put(b, host, len);
  if (bracketed) PUTS(b, "]");
  PUTS(b, ":");
  put_uint(b, (uint64_t)port);
}

/* A socket address as the text inet_ntop gives (into `text`, at least INET6_ADDRSTRLEN
 * bytes) and its port: the record's local endpoint, as Python's socket module writes it. */
static int endpoint_text(const struct sockaddr_storage *sa, char *text) {
  if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const void *)sa;
    inet_ntop(AF_INET6, &a->sin6_addr, text, INET6_ADDRSTRLEN);
    return ntohs(a->sin6_port);
  }
  const struct sockaddr_in *a = (const void *)sa;
  inet_ntop(AF_INET, &a->sin_addr, text, INET6_ADDRSTRLEN);
  return ntohs(a->sin_port);
}

/* One key's value of a record (the keys, in order, are given by Python: `configure`). */
enum {
  K_EVENT, K_TIMESTAMP, K_TARGET, K_HOST, K_PORT, K_ADDRESS, K_FAMILY, K_LOCAL_ADDRESS,
  K_LOCAL_PORT, K_OUTCOME, K_ERROR, K_LATENCY_MS, K_RTT_MS, K_SYN_RETRANSMITS, K_DNS_MS,
  K_ATTEMPT, N_KEYS
};
static const char *KEY_NAMES[N_KEYS] = {
    "event", "timestamp", "target", "host", "port", "address", "family", "local_address",
    "local_port", "outcome", "error", "latency_ms", "rtt_ms", "syn_retransmits", "dns_ms",
    "attempt"};
static int key_order[N_KEYS] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
/* `{"key":` for the first key, `,"key":` for the others: made once per key order */
static char key_head[N_KEYS][40];
static size_t key_head_len[N_KEYS];

static void make_key_heads(void) {
  for (int k = 0; k < N_KEYS; k++)
    key_head_len[k] = (size_t)snprintf(key_head[k], sizeof key_head[k], "%c\"%s\":",
                                       k ? ',' : '{', KEY_NAMES[key_order[k]]);
}

/* The outcome names, in the order of the enum above (Python's Outcome; `configure`). */
static char *outcome_names[N_OUTCOMES];

static void put_null_or_str(buf_t *b, const char *s, size_t n) {
  if (!s) {
    PUTS(b, "null");
    return;
  }
  PUTS(b, "\"");
  put(b, s, n);
  PUTS(b, "\"");
}

static void put_record(buf_t *b, tscache_t *ts, const rec_target_t *t, const rec_t *r) {
  char local[INET6_ADDRSTRLEN] = "";
  int local_port = r->local ? endpoint_text(r->local, local) : 0;
  size_t local_len = strlen(local);
  for (int k = 0; k < N_KEYS; k++) {
    int key = key_order[k];
    put(b, key_head[k], key_head_len[k]);
    switch (key) {
      case K_EVENT: PUTS(b, "\"probe\""); break;
      case K_TIMESTAMP:
        PUTS(b, "\"");
        put_timestamp(b, ts, r->wall);
        break;
      case K_TARGET:
        PUTS(b, "\"");
        put_host_port(b, t->host, t->host_len, t->bracketed, r->port);
        PUTS(b, "\"");
        break;
      case K_HOST: put_null_or_str(b, t->host, t->host_len); break;
      case K_PORT: put_uint(b, (uint64_t)r->port); break;
      case K_ADDRESS: put_null_or_str(b, t->address, t->address_len); break;
      case K_FAMILY:
        if (!t->address)
          PUTS(b, "null");
        else if (t->family == AF_INET6)
          PUTS(b, "\"ipv6\"");
        else
          PUTS(b, "\"ipv4\"");
        break;
      case K_LOCAL_ADDRESS: put_null_or_str(b, r->local ? local : NULL, local_len); break;
      case K_LOCAL_PORT:
        if (r->local)
          put_uint(b, (uint64_t)local_port);
        else
          PUTS(b, "null");
        break;
      case K_OUTCOME: {
        const char *name = outcome_names[r->outcome];
        put_null_or_str(b, name, strlen(name));
        break;
      }
      case K_ERROR: {
        char tmp[24];
        const char *e = r->error;
        if (!e && r->outcome != O_OPEN) e = r->timed_out ? "ETIMEDOUT" : errname(r->err, tmp);
        put_null_or_str(b, e, e ? strlen(e) : 0);
        break;
      }
      case K_LATENCY_MS: put_thousandths(b, ms_thousandths(r->latency_ns)); break;
      case K_RTT_MS:
        if (r->rtt_us < 0)
          PUTS(b, "null");
        else
          put_thousandths(b, (uint64_t)r->rtt_us);
        break;
      case K_SYN_RETRANSMITS:
        if (r->syn_retransmits < 0)
          PUTS(b, "null");
        else
          put_uint(b, (uint64_t)r->syn_retransmits);
        break;
      case K_DNS_MS: put_thousandths(b, r->dns_k); break;
      case K_ATTEMPT: put_uint(b, r->attempt); break;
    }
  }
  PUTS(b, "}\n");
}

/* One CSV field as Python's csv writer (QUOTE_MINIMAL) writes it: quoted, quotes doubled,
 * when it holds a comma, a quote or a line break. */
static void put_csv_field(buf_t *b, const char *s, size_t n) {
  int quote = 0;
  for (size_t i = 0; i < n && !quote; i++)
    quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
  if (!quote) {
    put(b, s, n);
    return;
  }
  PUTS(b, "\"");
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"') PUTS(b, "\"");
    put(b, s + i, 1);
  }
  PUTS(b, "\"");
}

/* The record as a CSV row (output/csv.py): the same keys in the same order, the JSON
 * values' text, null as an empty field. */
static void put_record_csv(buf_t *b, tscache_t *ts, const rec_target_t *t, const rec_t *r) {
  char local[INET6_ADDRSTRLEN] = "";
  int local_port = r->local ? endpoint_text(r->local, local) : 0;
  const char *host = t->host_raw ? t->host_raw : t->host;
  size_t host_len = t->host_raw ? t->host_raw_len : t->host_len;
  for (int k = 0; k < N_KEYS; k++) {
    if (k) PUTS(b, ",");
    switch (key_order[k]) {
      case K_EVENT: PUTS(b, "probe"); break;
      case K_TIMESTAMP: {
        put_timestamp(b, ts, r->wall);
        b->len--; /* its closing quote */
        break;
      }
      case K_TARGET: {
        char tmp[600];
        buf_t tb = {tmp, 0, sizeof tmp};
        if (host_len + 16 > sizeof tmp) {
          put_host_port(b, host, host_len, t->bracketed, r->port); /* (never this long) */
          break;
        }
        put_host_port(&tb, host, host_len, t->bracketed, r->port);
        put_csv_field(b, tb.p, tb.len);
        break;
      }
      case K_HOST: put_csv_field(b, host, host_len); break;
      case K_PORT: put_uint(b, (uint64_t)r->port); break;
      case K_ADDRESS:
        if (t->address) put(b, t->address, t->address_len);
        break;
      case K_FAMILY:
        if (t->address) {
          if (t->family == AF_INET6)
            PUTS(b, "ipv6");
          else
            PUTS(b, "ipv4");
        }
        break;
      case K_LOCAL_ADDRESS:
        if (r->local) put(b, local, strlen(local));
        break;
      case K_LOCAL_PORT:
        if (r->local) put_uint(b, (uint64_t)local_port);
        break;
      case K_OUTCOME: put(b, outcome_names[r->outcome], strlen(outcome_names[r->outcome])); break;
      case K_ERROR: {
        char tmp[24];
        const char *e = r->error;
        if (!e && r->outcome != O_OPEN) e = r->timed_out ? "ETIMEDOUT" : errname(r->err, tmp);
        if (e) put(b, e, strlen(e));
        break;
      }
      case K_LATENCY_MS: put_thousandths(b, ms_thousandths(r->latency_ns)); break;
      case K_RTT_MS:
        if (r->rtt_us >= 0) put_thousandths(b, (uint64_t)r->rtt_us);
        break;
      case K_SYN_RETRANSMITS:
        if (r->syn_retransmits >= 0) put_uint(b, (uint64_t)r->syn_retransmits);
        break;
      case K_DNS_MS: put_thousandths(b, r->dns_k); break;
      case K_ATTEMPT: put_uint(b, r->attempt); break;
    }
  }
  PUTS(b, "\n");
}

/* ------------------------------------------------------------------------------------------ */
/* Targets, streamed in from Python                                                           */

typedef struct {
  struct sockaddr_storage sa; /* port filled per attempt; sin6_scope_id from a zone */
  socklen_t salen;
  char *text; /* escaped, as Python writes it (a zone as written) */
  size_t text_len;
  int live; /* not excluded */
} addr_t;

/* A target: an address, a resolved name (one or more addresses), a name that did not
 * resolve (none: one record per endpoint, no connect), or a range (a CIDR or octet range,
 * addresses made here), with its port ranges. Freed when the walk and every attempt are
 * done with it. */
typedef struct {
  int refs;
  int is_range;
  int whole; /* this worker's alone: all its endpoints, outside the interleave */
  int bracketed;
  int nranges;
  int (*ranges)[2];
  /* an address or a name */
  char *host; /* escaped */
  size_t host_len;
  char *host_raw; /* as written, when that differs (CSV) */
  size_t host_raw_len;
  int naddr, nlive;
  addr_t *addrs;
  char *error;  /* naddr == 0: the resolver's code */
  uint64_t dns_k;
  int dns_left; /* the first endpoint of this share carries dns_ms */
  /* a range: IPv4 four octet ranges, IPv6 one 128-bit range */
  int version;
  unsigned seg[4][2];
  u128 lo6;
  u128 nhosts;
} target_t;

typedef struct {
  int pending, opened;
} group_t; /* one endpoint of a name with several addresses */

typedef struct {
  target_t *t;
  group_t *g;
  uint8_t ip[16]; /* a range's address (IPv4: the first four bytes) */
  int16_t ai;     /* an address target's address; -1 for a range */
  uint16_t port;
  uint16_t retry;
  uint8_t self_connects, dns;
  uint32_t number;
} attempt_t;

typedef struct {
  uint32_t (*v4)[2];
  size_t n4;
  u128 (*v6)[2];
  size_t n6;
  unsigned (*pat)[4][2]; /* IPv4 octet ranges too scattered for intervals */
  size_t npat;
} exclusions_t;

static void target_free(target_t *t) {
  free(t->ranges);
  free(t->host);
  free(t->host_raw);
  for (int i = 0; i < t->naddr; i++) free(t->addrs[i].text);
  free(t->addrs);
  free(t->error);
  free(t);
}

static inline void release(target_t *t) {
  if (--t->refs == 0) target_free(t);
}

static int v4_excluded(const exclusions_t *x, uint32_t v) {
  size_t lo = 0, hi = x->n4;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (x->v4[mid][1] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < x->n4 && x->v4[lo][0] <= v) return 1;
  for (size_t i = 0; i < x->npat; i++) {
    int in = 1;
    for (int o = 0; o < 4 && in; o++) {
      unsigned part = v >> (24 - 8 * o) & 255;
      in = x->pat[i][o][0] <= part && part <= x->pat[i][o][1];
    }
    if (in) return 1;
  }
  return 0;
}

/* As syntax.Exclusions.contains: an IPv4-mapped IPv6 address is judged as its IPv4 one. */
static int excluded(const exclusions_t *x, int family, const uint8_t *ip) {
  if (!x) return 0;
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (family == AF_INET6 && memcmp(ip, mapped, 12)) {
    u128 v = 0;
    for (int i = 0; i < 16; i++) v = v << 8 | ip[i];
    size_t lo = 0, hi = x->n6;
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (x->v6[mid][1] < v)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo < x->n6 && x->v6[lo][0] <= v;
  }
  const uint8_t *b = family == AF_INET6 ? ip + 12 : ip;
  return v4_excluded(x, (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]);
}

static const uint8_t *sa_ip(const struct sockaddr_storage *sa) {
  if (sa->ss_family == AF_INET6) return ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
  return (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr.s_addr;
}

/* ------------------------------------------------------------------------------------------ */
/* The sweep                                                                                  */

typedef struct {
  attempt_t a;
  int fd;
  int polled;     /* fd is in the epoll set */
  int prev, next; /* deadline list */
  int64_t t0, deadline;
  struct timespec wall;
  struct sockaddr_storage local, dst;
} slot_t;

typedef struct {
  /* input */
  PyObject *feed;
  PyThreadState *tstate;
  int shard_index, shard_count;
  int64_t timeout_ns;
  int ceiling;
  int retries;
  int has_source, source_port;
  struct sockaddr_storage source;
  socklen_t source_len;
  int graceful, reuse;
  double lag_limit_ms; /* 0: lag never holds concurrency down */
  int lag_floor, lagging;
  int pool[2][64]; /* refused sockets reset with connect(AF_UNSPEC), [0] IPv4, [1] IPv6 */
  int npool[2];
  uint64_t reused;
  int64_t giveup_ns; /* < 0: never give up */
  int out_fd, file_fd, stop_fd, wake_fd;
  int open_only_out, open_only_file, csv;
  exclusions_t *exclude;
  /* the feed: batches of targets, and the walk through them */
  target_t **batch;
  Py_ssize_t nbatch, ibatch;
  int feed_done, feed_wait, feed_failed;
  PyObject *et, *ev, *etb; /* the feed's exception, raised at the end */
  target_t *cur;
  u128 gh;
  int gr;
  long gport;
  int64_t phase; /* endpoints walked before this range, mod shard_count */
  int gexcl;     /* the current host is excluded */
  uint8_t gip[16];
  /* attempts to start before the walk's next: retries, self-connects, a name's addresses */
  attempt_t *head;
  size_t head_start, head_len, head_cap;
  /* slots */
  slot_t *slots;
  int *free_list;
  int nfree;
  int dl_first, dl_last;
  int inflight, limit;
  int ep;
  /* pacing and shortages */
  int64_t rate_next, rate_step, rate_slack;
  int64_t pace_due; /* the pacer's next tick: the slots due by then start then, together */
  int64_t backoff_ns, resume_at, stuck_since;
  /* output */
  buf_t out, file;
  tscache_t ts;
  /* how late the loop gets to a 5 ms timer, as engine/lag.py measures the event loop */
  uint64_t lag_counts[32];
  double lag_max_ms;
  int64_t lag_due, lag_cpu; /* the next sample's due time; the thread's CPU at the last */
  int64_t lag_period;       /* from the last sample to lag_due: 5 ms, longer after a nap */
  int write_errno;
  uint64_t unwritten; /* records a reader that stopped reading never got */
  int64_t drain_end;  /* 0, or (after a stop) when a reader that does not read is given up */
  /* results */
  uint64_t outcomes[N_OUTCOMES];
  uint64_t targets_done, targets_without_open, started, shortages, self_connects, late;
  uint64_t lag_throttles, seen, excluded_endpoints;
  int stopped;
  const char *fail; /* a message for the caller (exit 2) */
  char fail_text[256];
  char source_text[INET6_ADDRSTRLEN + 8];
} sweep_t;

/* lag histogram bounds (ms), from engine/lag.py (`configure`) */
static double lag_bounds[31] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000};
static int n_lag_bounds = 12;

static inline int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

#define STOP_DRAIN_NS 2000000000LL /* output/writer.py's OUTPUT_DRAIN */

/* Whole buffer to fd, and never half a line to a reader: a reader that stops reading must
 * get whole records, however the run ends.
 *
 * A pipe or socket is only written when the write cannot wait on its reader, since a signal
 * ends a waiting write() part way, mid-line, and a reader that never reads again would keep
 * that half record: an empty pipe takes up to its size at once; otherwise (a pipe that
 * holds something, a socket) poll() waits for room, and the write is whole lines of at most
 * PIPE_BUF bytes, which a pipe takes whole or not at all. While it waits, a slow reader
 * holds the run (nothing new starts: the JSON and CSV path's back-pressure), until it reads
 * or a stop (SIGINT, SIGTERM: the stop fd). From the stop on, the reader has STOP_DRAIN_NS
 * to take the rest (a reader that reads loses nothing to the stop); what it has not taken
 * by then stays unwritten (EAGAIN to the caller), counted, and the output ends at a line's
 * end. A file is written in large chunks (a full disk: the caller cuts it back to whole
 * lines). */
static int stop_pending(sweep_t *s) {
  struct pollfd p = {.fd = s->stop_fd, .events = POLLIN};
  return s->stop_fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

enum { SINK_FILE, SINK_PIPE, SINK_SOCKET };

static int sink_kind(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return SINK_FILE; /* the write says what is wrong */
  if (S_ISFIFO(st.st_mode)) return SINK_PIPE;
  return S_ISSOCK(st.st_mode) ? SINK_SOCKET : SINK_FILE;
}

/* What an empty pipe takes in one write that cannot wait; 0: it holds something (or this
 * cannot be told), so the next write waits for room and takes at most PIPE_BUF. */
static size_t empty_pipe_room(int fd) {
  int held;
  if (ioctl(fd, FIONREAD, &held) < 0 || held != 0) return 0;
  int size = fcntl(fd, F_GETPIPE_SZ);
  return size > 0 ? (size_t)size : 0;
}

/* The first bytes of p[0..len) that are whole lines, at most `max` of them (a line longer
 * than that goes alone: no write keeps it whole, as the Python writer's). */
static size_t whole_lines(const char *p, size_t len, size_t max) {
  if (len <= max) return len;
  const char *nl = memrchr(p, '\n', max);
  if (!nl) nl = memchr(p + max, '\n', len - max);
  return nl ? (size_t)(nl - p) + 1 : len;
}

/* Until fd takes a write without waiting (1), or, after a stop, the drain limit passed (0).
 * A stop while it waits starts the drain limit. */
static int wait_room(sweep_t *s, int fd) {
  for (;;) {
    int timeout = -1;
    if (s->drain_end) {
      int64_t left = s->drain_end - mono_ns();
      if (left <= 0) return 0;
      timeout = (int)((left + 999999) / 1000000);
    }
    struct pollfd p[2] = {{.fd = fd, .events = POLLOUT},
                          {.fd = s->drain_end ? -1 : s->stop_fd, .events = POLLIN}};
    int ready = poll(p, 2, timeout);
    if (ready < 0 && errno != EINTR) return 1; /* the write says what is wrong */
    if (ready <= 0) continue;                  /* a signal (its byte is on the stop fd), or late */
    if (p[0].revents) return 1;                /* room, or an error the write reports */
    if (p[1].revents) s->drain_end = mono_ns() + STOP_DRAIN_NS;
  }
}

static int write_all(sweep_t *s, int fd, buf_t *b) {
  int kind = sink_kind(fd);
  size_t off = 0;
  while (off < b->len) {
    size_t len = b->len - off;
    /* (a pipe's or socket's wait for room watches the stop fd itself) */
    if (!s->drain_end && (s->stopped || (kind == SINK_FILE && stop_pending(s))))
      s->drain_end = mono_ns() + STOP_DRAIN_NS;
    if (kind != SINK_FILE) {
      size_t room = kind == SINK_PIPE ? empty_pipe_room(fd) : 0;
      if (!room) {
        if (!wait_room(s, fd)) {
          errno = EAGAIN;
          goto stalled;
        }
        room = PIPE_BUF;
      }
      len = whole_lines(b->p + off, len, room);
    } else if (s->drain_end) {
      int64_t left = s->drain_end - mono_ns();
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int ready = left > 0 ? poll(&p, 1, (int)((left + 999999) / 1000000)) : 0;
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) {
        errno = EAGAIN;
        goto stalled;
      }
    }
    ssize_t n = write(fd, b->p + off, len);
    if (n < 0) {
      if (errno == EINTR) continue; /* the loop's top asks the stop fd */
      if (errno == EAGAIN) {        /* a non-blocking descriptor: wait for room */
        if (kind == SINK_FILE && !s->drain_end) {
          struct pollfd p = {.fd = fd, .events = POLLOUT};
          poll(&p, 1, 1000);
        }
        continue;
      }
      s->write_errno = errno;
      b->len = 0;
      return -1;
    }
    off += (size_t)n;
  }
  b->len = 0;
  return 0;
stalled:
  s->stopped = 1;
  for (size_t i = off; i < b->len; i++) s->unwritten += b->p[i] == '\n';
  s->write_errno = EAGAIN;
  b->len = 0;
  return -1;
}

static int flush_out(sweep_t *s) {
  if (s->write_errno) return -1;
  if (write_all(s, s->out_fd, &s->out) < 0) return -1;
  if (s->file_fd >= 0 && write_all(s, s->file_fd, &s->file) < 0) return -1;
  return 0;
}

static int head_grow(sweep_t *s) {
  size_t cap = s->head_cap ? s->head_cap * 2 : 64;
  attempt_t *n = malloc(cap * sizeof *n);
  if (!n) return -1;
  for (size_t i = 0; i < s->head_len; i++) n[i] = s->head[(s->head_start + i) % s->head_cap];
  free(s->head);
  s->head = n;
  s->head_start = 0;
  s->head_cap = cap;
  return 0;
}

static int head_push_front(sweep_t *s, const attempt_t *a) {
  if (s->head_len == s->head_cap && head_grow(s) < 0) return -1;
  s->head_start = (s->head_start + s->head_cap - 1) % s->head_cap;
  s->head[s->head_start] = *a;
  s->head_len++;
  return 0;
}

static int head_push_back(sweep_t *s, const attempt_t *a) {
  if (s->head_len == s->head_cap && head_grow(s) < 0) return -1;
  s->head[(s->head_start + s->head_len) % s->head_cap] = *a;
  s->head_len++;
  return 0;
}

static void pop_pending(sweep_t *s, attempt_t *a) {
  *a = s->head[s->head_start];
  s->head_start = (s->head_start + 1) % s->head_cap;
  s->head_len--;
}

/* The record's host and address texts for an attempt (a range's into `text`). */
static void rec_target(const attempt_t *a, rec_target_t *rt, char *text) {
  target_t *t = a->t;
  rt->bracketed = t->bracketed;
  if (t->is_range) {
    size_t n;
    if (t->version == 4) {
      n = (size_t)sprintf(text, "%u.%u.%u.%u", a->ip[0], a->ip[1], a->ip[2], a->ip[3]);
      rt->family = AF_INET;
    } else {
      n = ipv6_text(a->ip, text);
      rt->family = AF_INET6;
    }
    rt->host = rt->address = text;
    rt->host_len = rt->address_len = n;
    rt->host_raw = NULL;
    return;
  }
  rt->host = t->host;
  rt->host_len = t->host_len;
  rt->host_raw = t->host_raw;
  rt->host_raw_len = t->host_raw_len;
  if (a->ai < 0) {
    rt->address = NULL;
    rt->address_len = 0;
    rt->family = 0;
    return;
  }
  addr_t *ad = &t->addrs[a->ai];
  rt->address = ad->text;
  rt->address_len = ad->text_len;
  rt->family = ad->sa.ss_family;
}

static void write_record(sweep_t *s, const attempt_t *a, const rec_t *r) {
  int open = r->outcome == O_OPEN;
  int to_out = open || !s->open_only_out, to_file = s->file_fd >= 0 && (open || !s->open_only_file);
  if (!to_out && !to_file) return;
  char text[64];
  rec_target_t rt;
  rec_target(a, &rt, text);
  if (s->csv) { /* CSV rows on out, the JSON records to the file */
    if (to_out) put_record_csv(&s->out, &s->ts, &rt, r);
    if (to_file) put_record(&s->file, &s->ts, &rt, r);
  } else {
    size_t at = s->out.len;
    put_record(&s->out, &s->ts, &rt, r);
    if (to_file) put(&s->file, s->out.p + at, s->out.len - at);
    if (!to_out) s->out.len = at;
  }
  if (s->out.len > OUT_SIZE - OUT_ROOM || s->file.len > OUT_SIZE - OUT_ROOM) flush_out(s);
}

/* A target (an endpoint of a name with several addresses: its last address) is done. */
static void target_done(sweep_t *s, group_t *g, int open) {
  if (g) {
    g->opened |= open;
    if (--g->pending) return;
    open = g->opened;
    free(g);
  }
  s->targets_done++;
  if (!open) s->targets_without_open++;
}

/* An attempt's record; a timeout with retries left goes back to the queue, anything else
 * lets go of its target. */
static void emit(sweep_t *s, const attempt_t *a, rec_t *r) {
  r->port = a->port;
  r->attempt = a->number;
  r->dns_k = a->dns ? a->t->dns_k : 0;
  write_record(s, a, r);
  s->outcomes[r->outcome]++;
  if (r->outcome == O_TIMEOUT && a->retry < s->retries && !s->stopped) {
    attempt_t again = *a;
    again.number++;
    again.retry++;
    again.self_connects = 0;
    if (head_push_front(s, &again) == 0) return;
  }
  target_done(s, a->g, r->outcome == O_OPEN);
  release(a->t);
}

static target_t *parse_target(sweep_t *s, PyObject *item);

/* Python's feed: the next batch of targets (an empty list: none yet, the wake fd says when;
 * None: the end). Called with the GIL taken back. */
static void feed_more(sweep_t *s) {
  free(s->batch);
  s->batch = NULL;
  s->nbatch = s->ibatch = 0;
  PyEval_RestoreThread(s->tstate);
  PyObject *got = PyObject_CallNoArgs(s->feed);
  int failed = got == NULL;
  if (got == Py_None) {
    s->feed_done = 1;
  } else if (got) {
    PyObject *fast = PySequence_Fast(got, "the feed returns a list of targets or None");
    failed = fast == NULL;
    Py_ssize_t n = fast ? PySequence_Fast_GET_SIZE(fast) : 0;
    if (fast && n == 0) s->feed_wait = 1;
    if (n) s->batch = calloc((size_t)n, sizeof *s->batch);
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
      target_t *t = parse_target(s, PySequence_Fast_GET_ITEM(fast, i));
      if (!t) failed = 1;
      else s->batch[s->nbatch++] = t;
    }
    Py_XDECREF(fast);
  }
  Py_XDECREF(got);
  if (failed) {
    if (!PyErr_Occurred()) PyErr_NoMemory();
    PyErr_Fetch(&s->et, &s->ev, &s->etb);
    s->feed_failed = s->feed_done = 1;
  }
  s->tstate = PyEval_SaveThread();
}

static u128 host_count(const target_t *t) { return t->is_range ? t->nhosts : 1; }

/* A range's address number h, into ip. */
static void range_address(const target_t *t, u128 h, uint8_t *ip) {
  if (t->version == 4) {
    for (int o = 3; o >= 0; o--) {
      unsigned size = t->seg[o][1] - t->seg[o][0] + 1;
      ip[o] = (uint8_t)(t->seg[o][0] + (unsigned)(h % size));
      h /= size;
    }
    return;
  }
  u128 v = t->lo6 + h;
  for (int i = 15; i >= 0; i--) {
    ip[i] = (uint8_t)v;
    v >>= 8;
  }
}

/* The next endpoint of this shard, in the order of syntax.shard(): every count-th endpoint
 * from `index` across all targets' hosts and port ranges. Its attempts go to the back of
 * the queue (one per live address of a name); a name that did not resolve gets its record
 * at once. 1: an endpoint was taken; 0: none now (the feed is waiting, or done). */
static int next_endpoint(sweep_t *s) {
  for (;;) {
    if (!s->cur) {
      while (s->ibatch >= s->nbatch) {
        if (s->feed_done || s->feed_wait || s->stopped) return 0;
        feed_more(s);
      }
      s->cur = s->batch[s->ibatch++];
      s->gh = 0;
      s->gr = 0;
      s->gport = -1;
    }
    target_t *t = s->cur;
    /* a target this worker owns whole (a line of a file its share holds) is walked
     * end to end, outside the interleave of the others */
    int64_t c = t->whole ? 1 : s->shard_count, phase = t->whole ? 0 : s->phase;
    int64_t index = t->whole ? 0 : s->shard_index;
    if (s->gh >= host_count(t)) {
      release(t);
      s->cur = NULL;
      continue;
    }
    if (s->gr >= t->nranges) {
      s->gh++;
      s->gr = 0;
      s->gport = -1;
      continue;
    }
    int lo = t->ranges[s->gr][0], hi = t->ranges[s->gr][1];
    if (s->gport < 0) {
      if (s->gr == 0) {
        if (t->is_range) {
          range_address(t, s->gh, s->gip);
          s->gexcl = excluded(s->exclude, t->version == 4 ? AF_INET : AF_INET6, s->gip);
        } else {
          s->gexcl = t->naddr > 0 && t->nlive == 0;
        }
      }
      int64_t off = ((index - phase) % c + c) % c;
      if (s->gexcl) { /* every endpoint of this host in the shard is skipped, counted */
        int64_t n = hi - lo + 1, mine = off < n ? (n - off - 1) / c + 1 : 0;
        s->excluded_endpoints += (uint64_t)mine;
        s->seen += (uint64_t)mine;
        if (!t->whole) s->phase = (s->phase + n) % c;
        s->gr++;
        continue;
      }
      s->gport = lo + off;
    }
    if (s->gport > hi) {
      if (!t->whole) s->phase = (s->phase + hi - lo + 1) % c;
      s->gr++;
      s->gport = -1;
      continue;
    }
    attempt_t a = {.t = t, .g = NULL, .ai = -1, .port = (uint16_t)s->gport, .number = 1};
    s->gport += c;
    s->seen++;
    a.dns = (uint8_t)t->dns_left;
    t->dns_left = 0;
    if (t->is_range) {
      memcpy(a.ip, s->gip, 16);
      t->refs++;
      head_push_back(s, &a);
      return 1;
    }
    if (t->naddr == 0) { /* the name did not resolve: its record, no connect */
      struct timespec wall;
      clock_gettime(CLOCK_REALTIME, &wall);
      rec_t r = {.wall = &wall, .local = NULL, .outcome = O_ERROR, .error = t->error,
                 .rtt_us = -1, .syn_retransmits = -1};
      t->refs++;
      emit(s, &a, &r);
      return 1;
    }
    if (t->nlive > 1) {
      a.g = malloc(sizeof *a.g);
      if (a.g) *a.g = (group_t){t->nlive, 0};
    }
    for (int i = 0; i < t->naddr; i++) {
      if (!t->addrs[i].live) continue;
      a.ai = (int16_t)i;
      t->refs++;
      head_push_back(s, &a);
      if (!a.g) break;
    }
    return 1;
  }
}

static int have_pending(sweep_t *s) {
  while (!s->head_len)
    if (!next_endpoint(s)) return 0;
  return 1;
}

/* Nothing left: every target walked, the feed at its end, nothing queued. */
static int all_done(sweep_t *s) {
  return s->feed_done && !s->cur && s->ibatch >= s->nbatch && !s->head_len;
}

static void shortage(sweep_t *s, int64_t now) {
  s->shortages++;
  s->limit = s->inflight > 1 ? s->inflight : 1;
  if (s->inflight == 0) {
    if (s->stuck_since < 0) s->stuck_since = now;
    if (s->giveup_ns >= 0 && now - s->stuck_since > s->giveup_ns) {
      s->fail = "no free file descriptor or local port on this machine";
      return;
    }
  }
  int64_t b = s->backoff_ns * 2;
  if (b < 5000000) b = 5000000;
  if (b > 1000000000) b = 1000000000;
  s->backoff_ns = b;
  s->resume_at = now + b;
}

static void set_port(struct sockaddr_storage *sa, int port) {
  if (sa->ss_family == AF_INET6)
    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
}

/* The attempt's destination. */
static socklen_t destination(const attempt_t *a, struct sockaddr_storage *sa) {
  socklen_t len;
  if (a->ai >= 0) {
    const addr_t *ad = &a->t->addrs[a->ai];
    memcpy(sa, &ad->sa, ad->salen);
    len = ad->salen;
  } else if (a->t->version == 4) {
    struct sockaddr_in *a4 = (void *)sa;
    memset(a4, 0, sizeof *a4);
    a4->sin_family = AF_INET;
    memcpy(&a4->sin_addr, a->ip, 4);
    len = sizeof *a4;
  } else {
    struct sockaddr_in6 *a6 = (void *)sa;
    memset(a6, 0, sizeof *a6);
    a6->sin6_family = AF_INET6;
    memcpy(&a6->sin6_addr, a->ip, 16);
    len = sizeof *a6;
  }
  set_port(sa, a->port);
  return len;
}

static int same_endpoint(const struct sockaddr_storage *local, const struct sockaddr_storage *d) {
  if (local->ss_family != d->ss_family) return 0;
  if (local->ss_family == AF_INET6) {
    const struct sockaddr_in6 *l = (const void *)local, *r = (const void *)d;
    return l->sin6_port == r->sin6_port && !memcmp(&l->sin6_addr, &r->sin6_addr, 16);
  }
  const struct sockaddr_in *l = (const void *)local, *r = (const void *)d;
  return l->sin_port == r->sin_port && l->sin_addr.s_addr == r->sin_addr.s_addr;
}

static void rst_close(int fd) {
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

typedef struct {
  int answered; /* 0: no answer yet (no error, no peer) */
  int err;      /* SO_ERROR once answered: 0 = connected */
  int64_t rtt_us, retrans;
} answer_t;

/* rtt (us, or -1 when the kernel has no real sample) and total retransmits (or -1); the
 * TCP state in *state (0 when unknown). */
static void tcp_info(int fd, int64_t *rtt_us, int64_t *retrans, int *state) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
      len < offsetof(struct tcp_info, tcpi_total_retrans) + sizeof ti.tcpi_total_retrans) {
    *rtt_us = -1;
    *retrans = -1;
    *state = 0;
    return;
  }
  *retrans = ti.tcpi_total_retrans;
  *rtt_us = ti.tcpi_total_retrans > 0 ? -1 : (int64_t)ti.tcpi_rtt;
  *state = ti.tcpi_state;
}

static int sock_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

static int connected(int fd) {
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  return getpeername(fd, (struct sockaddr *)&peer, &len) == 0;
}

/* Has the attempt on `fd` its answer, and which: the SO_ERROR/getpeername question, asked
 * with TCP_INFO first. SO_ERROR is read in every state: an ICMP error that arrives while
 * connect() still holds the socket (on loopback, inside the call) leaves it in SYN_SENT
 * with a soft error that only SO_ERROR reports. With no error, SYN_SENT is "still
 * waiting" and CLOSE unanswered; any other state is connected (getpeername fails in
 * exactly those two). The same call gives the record's RTT and retransmits. */
static void ask(int fd, answer_t *a) {
  int state;
  tcp_info(fd, &a->rtt_us, &a->retrans, &state);
  a->err = sock_error(fd);
  if (a->err)
    a->answered = 1;
  else if (state == TCP_SYN_SENT)
    a->answered = 0;
  else if (state)
    a->answered = state != TCP_CLOSE;
  else
    a->answered = connected(fd); /* no TCP_INFO: ask as before */
}

/* Keep a refused socket for the next attempt: connect(AF_UNSPEC) resets it, and the next
 * connect() binds a new ephemeral port of its own. 0 when kept. A socket that waited in
 * the epoll set leaves it first (a reset socket reports EPOLLHUP for ever, and the next
 * attempt adds it again). */
static int recycle(sweep_t *s, int fd, int family, int polled) {
  int f = family == AF_INET6;
  if (s->npool[f] == 64) return -1;
  if (polled && epoll_ctl(s->ep, EPOLL_CTL_DEL, fd, NULL) < 0) return -1;
  struct sockaddr unspec = {.sa_family = AF_UNSPEC};
  if (connect(fd, &unspec, sizeof unspec) < 0) return -1;
  s->pool[f][s->npool[f]++] = fd;
  return 0;
}

static void dl_unlink(sweep_t *s, int i) {
  slot_t *sl = &s->slots[i];
  if (sl->prev >= 0) s->slots[sl->prev].next = sl->next; else s->dl_first = sl->next;
  if (sl->next >= 0) s->slots[sl->next].prev = sl->prev; else s->dl_last = sl->prev;
  sl->prev = sl->next = -1;
}

/* A slot's attempt has its answer (err, with what `ask` read) or its deadline passed
 * (timed_out). */
static void complete(sweep_t *s, int i, int err, int timed_out, const answer_t *ans) {
  int64_t t1 = mono_ns();
  slot_t *sl = &s->slots[i];
  dl_unlink(s, i);
  s->inflight--;
  s->free_list[s->nfree++] = i;
  if (err == 0 && !timed_out && same_endpoint(&sl->local, &sl->dst)) {
    /* Simultaneous open with itself: the kernel chose the destination port as the
     * ephemeral port. Our artifact, not the target's answer: try again with another port,
     * unless -s fixed the port, where every try would be the same. */
    int64_t sretrans = ans->retrans;
    rst_close(sl->fd);
    s->self_connects++;
    if (!(s->has_source && s->source_port) && sl->a.self_connects < SELF_CONNECT_TRIES) {
      attempt_t again = sl->a;
      again.self_connects++;
      if (head_push_front(s, &again) == 0) return;
    }
    rec_t r = {.wall = &sl->wall, .local = &sl->local, .outcome = O_ERROR, .err = SELF_CONNECT,
               .latency_ns = (uint64_t)(t1 - sl->t0), .rtt_us = -1, .syn_retransmits = sretrans};
    emit(s, &sl->a, &r);
    return;
  }
  int64_t rtt = err == 0 && !timed_out ? ans->rtt_us : -1, retrans = ans->retrans;
  if (err == 0 && !timed_out && !s->graceful)
    rst_close(sl->fd);
  else if (err == ECONNREFUSED && s->reuse && !recycle(s, sl->fd, sl->dst.ss_family, sl->polled))
    ;
  else
    close(sl->fd);
  if (s->limit < s->ceiling) s->limit++;
  rec_t r = {.wall = &sl->wall, .local = &sl->local,
             .outcome = timed_out ? O_TIMEOUT : outcome_of(err), .err = err,
             .timed_out = timed_out, .latency_ns = (uint64_t)(t1 - sl->t0), .rtt_us = rtt,
             .syn_retransmits = retrans};
  emit(s, &sl->a, &r);
}

enum { STARTED, SHORT, FATAL };

/* Issue one connect. SHORT: a local shortage, the attempt goes back to the queue. */
static int start(sweep_t *s, const attempt_t *a, int64_t now) {
  struct sockaddr_storage dst;
  socklen_t dlen = destination(a, &dst);
  int family = dst.ss_family;
  int f = family == AF_INET6;
  int fd = s->npool[f] ? (s->reused++, s->pool[f][--s->npool[f]])
                       : socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    if (is_shortage(err)) {
      shortage(s, now);
      return SHORT;
    }
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    rec_t r = {.wall = &wall, .local = NULL, .outcome = outcome_of(err), .err = err,
               .latency_ns = 0, .rtt_us = -1, .syn_retransmits = -1};
    s->started++;
    emit(s, a, &r);
    return STARTED;
  }
  if (s->has_source) {
    int one = 1;
    if (s->source_port)
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    else if (family == AF_INET)
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&s->source, s->source_len) < 0) {
      int err = errno;
      close(fd);
      if (err == EADDRNOTAVAIL) { /* the address left this machine */
        snprintf(s->fail_text, sizeof s->fail_text, "source address %s: %s",
                 s->source_text, strerror(err));
        s->fail = s->fail_text;
        return FATAL;
      }
      shortage(s, now); /* the fixed port is busy for now */
      return SHORT;
    }
  }
  int i = s->free_list[--s->nfree];
  slot_t *sl = &s->slots[i];
  sl->a = *a;
  sl->fd = fd;
  sl->polled = 0;
  memcpy(&sl->dst, &dst, dlen);
  clock_gettime(CLOCK_REALTIME, &sl->wall);
  sl->t0 = mono_ns();
  int err = connect(fd, (struct sockaddr *)&dst, dlen) < 0 ? errno : 0;
  socklen_t ll = sizeof sl->local;
  if (err != EINPROGRESS && err != 0) {
    int64_t t1 = mono_ns();
    if (getsockname(fd, (struct sockaddr *)&sl->local, &ll) < 0)
      memset(&sl->local, 0, sizeof sl->local), sl->local.ss_family = (sa_family_t)family;
    if (is_shortage_at_connect(err)) {
      close(fd);
      s->free_list[s->nfree++] = i;
      shortage(s, now);
      return SHORT;
    }
    int64_t rtt, retrans = -1;
    int state;
    tcp_info(fd, &rtt, &retrans, &state);
    close(fd);
    s->free_list[s->nfree++] = i;
    s->started++;
    rec_t r = {.wall = &sl->wall, .local = &sl->local, .outcome = outcome_of(err), .err = err,
               .latency_ns = (uint64_t)(t1 - sl->t0), .rtt_us = -1,
               .syn_retransmits = retrans};
    emit(s, a, &r);
    return STARTED;
  }
  if (getsockname(fd, (struct sockaddr *)&sl->local, &ll) < 0) {
    memset(&sl->local, 0, sizeof sl->local);
    sl->local.ss_family = (sa_family_t)family;
  }
  s->backoff_ns = 0;
  s->stuck_since = -1;
  s->inflight++;
  s->started++;
  /* link into the deadline FIFO (one timeout per sweep: appending keeps it ordered) */
  sl->deadline = sl->t0 + s->timeout_ns;
  sl->next = -1;
  sl->prev = s->dl_last;
  if (s->dl_last >= 0) s->slots[s->dl_last].next = i; else s->dl_first = i;
  s->dl_last = i;
  /* Often the answer is already in: on loopback the whole handshake, or the reset, happens
   * inside connect(). Taking it here spares the poller and an inflated latency. */
  answer_t ans;
  ask(fd, &ans);
  if (ans.answered) {
    complete(s, i, ans.err, 0, &ans);
    return STARTED;
  }
  struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
  if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    /* ENOMEM/ENOSPC: the kernel could not watch it; treat as a shortage */
    dl_unlink(s, i);
    s->inflight--;
    s->started--;
    close(fd);
    s->free_list[s->nfree++] = i;
    shortage(s, now);
    return SHORT;
  }
  sl->polled = 1;
  return STARTED;
}

/* A deadline passed: ask the socket before calling it a timeout. (complete() closes the
 * socket, which takes it out of the epoll set, or takes it out before keeping it.) */
static void expire(sweep_t *s, int i) {
  answer_t ans;
  ask(s->slots[i].fd, &ans);
  if (!ans.answered) {
    complete(s, i, ETIMEDOUT, 1, &ans);
    return;
  }
  s->late++;
  complete(s, i, ans.err, 0, &ans);
}

/* Stopped: close what is in flight and let go of every target still held. */
static void drop_everything(sweep_t *s) {
  for (int i = s->dl_first; i >= 0;) {
    int next = s->slots[i].next;
    close(s->slots[i].fd);
    attempt_t *a = &s->slots[i].a;
    if (a->g && --a->g->pending == 0) free(a->g);
    release(a->t);
    i = next;
  }
  s->dl_first = s->dl_last = -1;
  s->inflight = 0;
  while (s->head_len) {
    attempt_t a;
    pop_pending(s, &a);
    if (a.g && --a.g->pending == 0) free(a.g);
    release(a.t);
  }
  if (s->cur) release(s->cur);
  s->cur = NULL;
  while (s->ibatch < s->nbatch) release(s->batch[s->ibatch++]);
}

/* epoll_wait for at most `ns`. epoll_pwait2 (Linux 5.11) keeps the sub-millisecond part:
 * with epoll_wait's milliseconds (rounded up, never early) each wave of deadlines would be
 * taken up to 1 ms late, and a slot's next attempt with it: 10 ms over a 10-wave sweep. */
static int wait_events(int ep, struct epoll_event *evs, int n, int64_t ns) {
#ifdef SYS_epoll_pwait2
  static int without_pwait2;
  if (!without_pwait2) {
    struct __kernel_timespec t = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    long r = syscall(SYS_epoll_pwait2, ep, evs, n, &t, NULL, 0);
    if (r >= 0 || (errno != ENOSYS && errno != EPERM)) return (int)r;
    without_pwait2 = 1; /* an older kernel, or a seccomp filter that does not know it */
  }
#endif
  return epoll_wait(ep, evs, n, (int)((ns + 999999) / 1000000));
}

#define LAG_TICK_NS 5000000LL
/* --rate starts the slots due by the pacer's next tick together, then: a wake-up per
 * attempt, or one every lag tick, cost as much CPU as the attempts themselves (an idle
 * core woken costs its process tens of microseconds). The grid stays exact: a start is
 * at most this late, and keeps its slot (RATE_SLACK makes up far more). */
#define PACE_TICK_NS 20000000LL

/* Sustained lag (two samples running over the limit) lowers the limit to 3/4 of what is in
 * flight, never below the floor; each completion adds one back. One late sample is the
 * machine (another process had the core), not this loop. As engine/core.py's _on_lag, of
 * the lag this loop's own work made (see lag_sample). */
static void on_lag(sweep_t *s, double ms) {
  if (s->lag_limit_ms <= 0 || ms <= s->lag_limit_ms) {
    s->lagging = 0;
    return;
  }
  s->lagging++;
  if (s->lagging < 2 || s->inflight <= s->lag_floor) return;
  int lowered = s->inflight * 3 / 4;
  if (lowered < s->lag_floor) lowered = s->lag_floor;
  if (lowered < s->limit) {
    s->limit = lowered;
    s->lag_throttles++;
  }
}

static inline int64_t thread_cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* A sample of how late the loop got to its lag timer (every 5 ms while attempts are in
 * flight): into the histogram (the figure the summary reports), and, as far as this loop's
 * own work made it late, to the throttle: a loop that was off the CPU (a loaded machine's
 * other processes had it, or it waited for answers) is not made less late by fewer
 * attempts in flight. Its own share: the CPU this thread used since the last sample
 * beyond the timer's period (5 ms, or the nap's), at most the lag. */
static void lag_sample(sweep_t *s, int64_t now) {
  if (now < s->lag_due) return;
  double ms = (double)(now - s->lag_due) / 1e6;
  int i = 0;
  while (i < n_lag_bounds && ms > lag_bounds[i]) i++;
  s->lag_counts[i]++;
  if (ms > s->lag_max_ms) s->lag_max_ms = ms;
  int64_t cpu = thread_cpu_ns(), used = cpu - s->lag_cpu - s->lag_period;
  s->lag_due = now + LAG_TICK_NS;
  s->lag_period = LAG_TICK_NS;
  s->lag_cpu = cpu;
  double own = used > 0 ? (double)used / 1e6 : 0.0;
  on_lag(s, own < ms ? own : ms);
}

/* Start the next pending attempt, if the limit, --rate and a shortage's back-off allow one
 * now. 1: one went out (or met a shortage, which sets the back-off); 0: none now, *wake =
 * when pacing or the back-off allows the next.
 *
 * --rate keeps a fixed grid from its epoch (engine/core.py's rule): a start made late by
 * less than a step (or the slack) keeps its slot, so a loaded machine's late wake-ups are
 * made up; after a longer stall the missed slots are skipped, on the same grid. */
static int start_next(sweep_t *s, int64_t now, int64_t *wake) {
  if (s->fail || s->inflight >= s->limit || !have_pending(s)) return 0;
  if (s->resume_at > now) {
    *wake = s->resume_at;
    return 0;
  }
  if (s->rate_step) {
    if (s->rate_next > now) {
      /* Ahead of the grid: the slots due by the pacer's next tick start then; a slot
       * beyond that tick wakes the loop itself. */
      *wake = s->rate_next > s->pace_due ? s->rate_next : s->pace_due;
      return 0;
    }
    if (now >= s->pace_due) s->pace_due = now + PACE_TICK_NS;
    int64_t slack = s->rate_step > s->rate_slack ? s->rate_step : s->rate_slack;
    int64_t behind = now - slack - s->rate_next;
    if (behind > 0) s->rate_next += (behind + s->rate_step - 1) / s->rate_step * s->rate_step;
    s->rate_next += s->rate_step;
  }
  attempt_t a;
  pop_pending(s, &a);
  int r = start(s, &a, now);
  if (r == SHORT) {
    head_push_front(s, &a);
    if (s->rate_step) s->rate_next -= s->rate_step;
  } else if (r == FATAL) {
    head_push_front(s, &a); /* dropped with the rest */
  }
  return r != FATAL;
}

#define EV_STOP UINT64_MAX
#define EV_WAKE (UINT64_MAX - 1)

/* The attempt loop; returns 0, or -1 with a Python exception set (progress callback). */
static int run(sweep_t *s, PyObject *progress) {
  struct epoll_event evs[1024];
  int64_t next_tick = mono_ns() + TICK_NS;
  s->lag_due = mono_ns() + LAG_TICK_NS;
  s->lag_period = LAG_TICK_NS;
  s->lag_cpu = thread_cpu_ns();
  for (;;) {
    int64_t now = mono_ns();
    lag_sample(s, now);
    /* deadlines: each freed slot takes its next attempt at once, not after the whole batch
     * (a wave of timeouts would otherwise start its next wave later with every one) */
    int64_t wake = -1; /* when pacing or back-off allows the next start */
    while (s->dl_first >= 0 && s->slots[s->dl_first].deadline <= now) {
      expire(s, s->dl_first);
      start_next(s, now, &wake);
    }
    /* starts */
    for (int budget = START_BATCH; start_next(s, now, &wake); now = mono_ns()) {
      if (--budget == 0) {
        wake = now;
        break;
      }
    }
    if (s->write_errno) return 0;
    if (s->fail || s->feed_failed) break;
    if (s->inflight == 0 && all_done(s)) break;
    /* wait; the lag timer only while attempts are in flight (their latencies carry the
     * lag): a loop with none, waiting for its pacer or its feed, is not woken by it, and
     * its sample is how late it got to the wake-up it asked for */
    int lag_timer = s->inflight > 0;
    int64_t until = lag_timer && s->lag_due < next_tick ? s->lag_due : next_tick;
    if (s->dl_first >= 0 && s->slots[s->dl_first].deadline + DEADLINE_SLACK_NS < until)
      until = s->slots[s->dl_first].deadline + DEADLINE_SLACK_NS;
    if (wake >= 0 && wake < until) until = wake;
    now = mono_ns();
    int n = wait_events(s->ep, evs, 1024, until > now ? until - now : 0);
    if (n < 0 && errno != EINTR) n = 0;
    for (int k = 0; k < n; k++) {
      uint64_t d = evs[k].data.u64;
      if (d == EV_STOP) {
        s->stopped = 1;
        continue;
      }
      if (d == EV_WAKE) {
        char sink[256]; /* one read: the pipe need not be non-blocking */
        if (read(s->wake_fd, sink, sizeof sink) < 0) {
          /* nothing (EAGAIN) or gone: the feed is asked again either way */
        }
        s->feed_wait = 0;
        continue;
      }
      int i = (int)d;
      answer_t ans;
      ask(s->slots[i].fd, &ans);
      if (ans.answered) complete(s, i, ans.err, 0, &ans); /* (epoll reports nothing else) */
    }
    if (s->write_errno) return 0;
    if (s->stopped) break;
    now = mono_ns();
    if (!lag_timer && s->lag_due < until) {
      s->lag_period += until - s->lag_due;
      s->lag_due = until;
    }
    lag_sample(s, now);
    if (now >= next_tick) {
      next_tick = now + TICK_NS;
      if (flush_out(s) < 0) return 0;
      PyEval_RestoreThread(s->tstate);
      int bad = 0;
      if (PyErr_CheckSignals() < 0) {
        bad = 1;
      } else if (progress != Py_None) {
        uint64_t records = 0;
        for (int o = 0; o < N_OUTCOMES; o++) records += s->outcomes[o];
        PyObject *res = PyObject_CallFunction(progress, "KK", (unsigned long long)records,
                                              (unsigned long long)s->outcomes[O_OPEN]);
        if (res == NULL) bad = 1;
        Py_XDECREF(res);
      }
      s->tstate = PyEval_SaveThread();
      if (bad) {
        s->stopped = 1;
        return -1;
      }
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Python glue                                                                                */

/* An IP literal (a zone after '%' is left to the scope id) into sa; its family, or -1. */
static int parse_sockaddr(const char *text, int port, uint32_t scope,
                          struct sockaddr_storage *sa, socklen_t *len) {
  memset(sa, 0, sizeof *sa);
  struct sockaddr_in *a4 = (void *)sa;
  struct sockaddr_in6 *a6 = (void *)sa;
  char bare[INET6_ADDRSTRLEN + 1];
  size_t n = strcspn(text, "%");
  if (n >= sizeof bare) return -1;
  memcpy(bare, text, n);
  bare[n] = 0;
  if (inet_pton(AF_INET, bare, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    return AF_INET;
  }
  if (inet_pton(AF_INET6, bare, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    a6->sin6_scope_id = scope;
    *len = sizeof *a6;
    return AF_INET6;
  }
  return -1;
}

static char *escaped_copy(PyObject *str, size_t *len) {
  Py_ssize_t n;
  const char *u = PyUnicode_AsUTF8AndSize(str, &n);
  if (!u) return NULL;
  char *out = malloc((size_t)n * 6 + 1);
  if (!out) {
    PyErr_NoMemory();
    return NULL;
  }
  *len = escape(u, (size_t)n, out);
  return out;
}

static int parse_ranges(PyObject *ranges, target_t *t) {
  PyObject *rf = PySequence_Fast(ranges, "ranges must be a sequence");
  if (!rf) return -1;
  t->nranges = (int)PySequence_Fast_GET_SIZE(rf);
  t->ranges = malloc(sizeof *t->ranges * (t->nranges ? (size_t)t->nranges : 1));
  for (int r = 0; t->ranges && r < t->nranges; r++) {
    int lo, hi;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(rf, r), "ii", &lo, &hi) || lo < 1 ||
        hi > 65535 || hi < lo) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad port range");
      Py_DECREF(rf);
      return -1;
    }
    t->ranges[r][0] = lo;
    t->ranges[r][1] = hi;
  }
  Py_DECREF(rf);
  if (!t->ranges) {
    PyErr_NoMemory();
    return -1;
  }
  return 0;
}

static u128 u128_of(PyObject *bytes) {
  u128 v = 0;
  const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(bytes);
  for (int i = 0; i < 16; i++) v = v << 8 | p[i];
  return v;
}

/* One target of a batch (its walk reference taken):
 *   ("A", host, bracketed, ((address, scope_id), ...), ranges, dns_thousandths, error|None)
 *     an address or a name: its addresses as Python writes them; none and an error: a
 *     name that did not resolve;
 *   ("R", bracketed, ranges, ((lo, hi),) * 4)  an IPv4 octet range or CIDR;
 *   ("R6", bracketed, ranges, lo16, hi16)       an IPv6 CIDR (16-byte big-endian bounds);
 * each with a last, optional `whole`: this worker's alone, every endpoint of it. */
static target_t *parse_target(sweep_t *s, PyObject *item) {
  target_t *t = calloc(1, sizeof *t);
  if (!t) return (target_t *)PyErr_NoMemory();
  t->refs = 1;
  const char *kind;
  PyObject *host, *addresses, *ranges, *error, *segs, *lo, *hi;
  unsigned long long dns_k;
  if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 1) {
    PyErr_SetString(PyExc_TypeError, "a target is a tuple");
    goto fail;
  }
  kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 0));
  if (!kind) goto fail;
  if (!strcmp(kind, "A")) {
    if (!PyArg_ParseTuple(item, "sUpOOKO|p;address target", &kind, &host, &t->bracketed,
                          &addresses, &ranges, &dns_k, &error, &t->whole))
      goto fail;
    if (!(t->host = escaped_copy(host, &t->host_len))) goto fail;
    Py_ssize_t raw_len;
    const char *raw = PyUnicode_AsUTF8AndSize(host, &raw_len);
    if (!raw) goto fail;
    if ((size_t)raw_len != t->host_len || memcmp(raw, t->host, t->host_len)) {
      if (!(t->host_raw = malloc((size_t)raw_len + 1))) goto fail;
      memcpy(t->host_raw, raw, (size_t)raw_len);
      t->host_raw_len = (size_t)raw_len;
    }
    if (parse_ranges(ranges, t) < 0) goto fail;
    t->dns_k = dns_k;
    t->dns_left = 1;
    if (error != Py_None) {
      const char *e = PyUnicode_AsUTF8(error);
      if (!e || !(t->error = strdup(e))) goto fail;
    }
    PyObject *af = PySequence_Fast(addresses, "addresses must be a sequence");
    if (!af) goto fail;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(af);
    t->addrs = calloc(n ? (size_t)n : 1, sizeof *t->addrs);
    for (Py_ssize_t i = 0; t->addrs && i < n; i++) {
      PyObject *text;
      unsigned int scope;
      addr_t *ad = &t->addrs[i];
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(af, i), "UI", &text, &scope)) {
        Py_DECREF(af);
        goto fail;
      }
      const char *u = PyUnicode_AsUTF8(text);
      if (!u || parse_sockaddr(u, 0, scope, &ad->sa, &ad->salen) < 0) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "not an IP address: %R", text);
        Py_DECREF(af);
        goto fail;
      }
      if (!(ad->text = escaped_copy(text, &ad->text_len))) {
        Py_DECREF(af);
        goto fail;
      }
      t->naddr++;
      ad->live = !excluded(s->exclude, ad->sa.ss_family, sa_ip(&ad->sa));
      t->nlive += ad->live;
    }
    Py_DECREF(af);
    if (!t->addrs) {
      PyErr_NoMemory();
      goto fail;
    }
    return t;
  }
  t->is_range = 1;
  if (!strcmp(kind, "R")) {
    if (!PyArg_ParseTuple(item, "spOO|p;range target", &kind, &t->bracketed, &ranges, &segs,
                          &t->whole))
      goto fail;
    if (parse_ranges(ranges, t) < 0) goto fail;
    t->version = 4;
    t->nhosts = 1;
    PyObject *sf = PySequence_Fast(segs, "segments must be a sequence");
    if (!sf) goto fail;
    if (PySequence_Fast_GET_SIZE(sf) != 4) {
      Py_DECREF(sf);
      PyErr_SetString(PyExc_ValueError, "an IPv4 range has four octet ranges");
      goto fail;
    }
    for (int o = 0; o < 4; o++) {
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(sf, o), "II", &t->seg[o][0],
                            &t->seg[o][1]) ||
          t->seg[o][1] > 255 || t->seg[o][0] > t->seg[o][1]) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad octet range");
        Py_DECREF(sf);
        goto fail;
      }
      t->nhosts *= t->seg[o][1] - t->seg[o][0] + 1;
    }
    Py_DECREF(sf);
    return t;
  }
  if (!strcmp(kind, "R6")) {
    if (!PyArg_ParseTuple(item, "spOSS|p;range target", &kind, &t->bracketed, &ranges, &lo,
                          &hi, &t->whole))
      goto fail;
    if (parse_ranges(ranges, t) < 0) goto fail;
    if (PyBytes_GET_SIZE(lo) != 16 || PyBytes_GET_SIZE(hi) != 16) {
      PyErr_SetString(PyExc_ValueError, "IPv6 bounds are 16 bytes");
      goto fail;
    }
    t->version = 6;
    t->lo6 = u128_of(lo);
    u128 top = u128_of(hi);
    if (top < t->lo6) {
      PyErr_SetString(PyExc_ValueError, "bad IPv6 range");
      goto fail;
    }
    t->nhosts = top - t->lo6 + 1; /* ::/0 wraps to 0: nothing (never asked for) */
    return t;
  }
  PyErr_Format(PyExc_ValueError, "unknown target kind %s", kind);
fail:
  target_free(t);
  return NULL;
}

static int parse_exclusions(PyObject *obj, exclusions_t *x) {
  PyObject *v4, *v6, *pat;
  if (!PyArg_ParseTuple(obj, "OOO;exclude is (v4, v6, patterns)", &v4, &v6, &pat)) return -1;
  PyObject *f4 = PySequence_Fast(v4, "v4"), *f6 = PySequence_Fast(v6, "v6"),
           *fp = PySequence_Fast(pat, "patterns");
  int rc = -1;
  if (!f4 || !f6 || !fp) goto done;
  x->n4 = (size_t)PySequence_Fast_GET_SIZE(f4);
  x->n6 = (size_t)PySequence_Fast_GET_SIZE(f6);
  x->npat = (size_t)PySequence_Fast_GET_SIZE(fp);
  x->v4 = malloc((x->n4 + 1) * sizeof *x->v4);
  x->v6 = malloc((x->n6 + 1) * sizeof *x->v6);
  x->pat = malloc((x->npat + 1) * sizeof *x->pat);
  if (!x->v4 || !x->v6 || !x->pat) {
    PyErr_NoMemory();
    goto done;
  }
  for (size_t i = 0; i < x->n4; i++) {
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(f4, i), "II", &x->v4[i][0], &x->v4[i][1]))
      goto done;
  }
  for (size_t i = 0; i < x->n6; i++) {
    PyObject *lo, *hi;
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(f6, i), "SS", &lo, &hi)) goto done;
    if (PyBytes_GET_SIZE(lo) != 16 || PyBytes_GET_SIZE(hi) != 16) {
      PyErr_SetString(PyExc_ValueError, "IPv6 bounds are 16 bytes");
      goto done;
    }
    x->v6[i][0] = u128_of(lo);
    x->v6[i][1] = u128_of(hi);
  }
  for (size_t i = 0; i < x->npat; i++) {
    PyObject *segs = PySequence_Fast(PySequence_Fast_GET_ITEM(fp, i), "pattern");
    if (!segs) goto done;
    int ok = PySequence_Fast_GET_SIZE(segs) == 4;
    for (int o = 0; ok && o < 4; o++)
      ok = PyArg_ParseTuple(PySequence_Fast_GET_ITEM(segs, o), "II", &x->pat[i][o][0],
                            &x->pat[i][o][1]);
    Py_DECREF(segs);
    if (!ok) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a pattern is 4 octet ranges");
      goto done;
    }
  }
  rc = 0;
done:
  Py_XDECREF(f4);
  Py_XDECREF(f6);
  Py_XDECREF(fp);
  return rc;
}

static void free_exclusions(exclusions_t *x) {
  free(x->v4);
  free(x->v6);
  free(x->pat);
}

PyDoc_STRVAR(sweep_doc,
"sweep(fd, feed, shard_index, shard_count, timeout, concurrency, rate, rate_epoch, retries,\n"
"      source, graceful, stop_fd, wake_fd, progress, giveup, reuse, lag_limit, lag_floor,\n"
"      file_fd, open_only_out, open_only_file, exclude, rate_slack) -> dict\n\n"
"Probe every endpoint of this shard of the targets `feed()` hands in batches (a list; an\n"
"empty list: none yet, `wake_fd` becomes readable when there are; None: the end), once,\n"
"writing JSON records to fd (and to file_fd). `source` is None or (address, port); `rate`\n"
"0 = unlimited, on a grid from `rate_epoch` (CLOCK_MONOTONIC seconds; < 0: now);\n"
"`stop_fd` readable ends the call; `progress(records, open)` every 0.2 s; `giveup`:\n"
"seconds of local shortage with nothing in flight before it returns an error (< 0: never);\n"
"`lag_limit`: ms of loop lag, twice running, that lowers concurrency (to `lag_floor` at\n"
"least; 0: never); `exclude`: (IPv4 intervals, IPv6 intervals as 16-byte bounds, IPv4\n"
"octet-range patterns), addresses never probed.");

static PyObject *sweep(PyObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"fd", "feed", "shard_index", "shard_count", "timeout",
                           "concurrency", "rate", "rate_epoch", "retries", "source",
                           "graceful", "stop_fd", "wake_fd", "progress", "giveup", "reuse",
                           "lag_limit", "lag_floor", "file_fd", "open_only_out",
                           "open_only_file", "exclude", "rate_slack", "csv", NULL};
  int fd, shard_index = 0, shard_count = 1, concurrency = 1000, retries = 0, graceful = 0;
  int reuse = 0, lag_floor = 8, file_fd = -1, open_only_out = 0, open_only_file = 0, csv = 0;
  int stop_fd = -1, wake_fd = -1;
  double timeout = 1.0, rate = 0.0, rate_epoch = -1.0, giveup = 30.0, lag_limit = 0.0;
  double rate_slack = 0.05;
  PyObject *feed, *source = Py_None, *progress = Py_None, *exclude = Py_None;
  if (!PyArg_ParseTupleAndKeywords(
          args, kw, "iO|iididdiOpiiOdpdiippOdp", kwlist, &fd, &feed, &shard_index,
          &shard_count, &timeout, &concurrency, &rate, &rate_epoch, &retries, &source,
          &graceful, &stop_fd, &wake_fd, &progress, &giveup, &reuse, &lag_limit, &lag_floor,
          &file_fd, &open_only_out, &open_only_file, &exclude, &rate_slack, &csv))
    return NULL;
  if (shard_count < 1 || shard_index < 0 || shard_index >= shard_count || concurrency < 1 ||
      !(timeout > 0) || rate < 0 || retries < 0 || !PyCallable_Check(feed)) {
    PyErr_SetString(PyExc_ValueError, "bad sweep parameters");
    return NULL;
  }
  PyObject *result = NULL;
  exclusions_t excl = {0};
  sweep_t *s = calloc(1, sizeof *s);
  if (!s) return PyErr_NoMemory();
  s->ep = -1;
  s->feed = feed;
  if (exclude != Py_None) {
    if (parse_exclusions(exclude, &excl) < 0) goto fail;
    s->exclude = &excl;
  }
  if (source != Py_None) {
    const char *saddr;
    int sport;
    if (!PyArg_ParseTuple(source, "si;source is (address, port)", &saddr, &sport)) goto fail;
    if (parse_sockaddr(saddr, sport, 0, &s->source, &s->source_len) < 0) {
      PyErr_SetString(PyExc_ValueError, "source is not an IP address");
      goto fail;
    }
    s->has_source = 1;
    s->source_port = sport;
    snprintf(s->source_text, sizeof s->source_text, "%s", saddr);
  }
  s->shard_index = shard_index;
  s->shard_count = shard_count;
  s->timeout_ns = (int64_t)(timeout * 1e9);
  s->ceiling = s->limit = concurrency;
  s->rate_step = rate > 0 ? (int64_t)(1e9 / rate) : 0;
  s->rate_next = rate_epoch >= 0 ? (int64_t)(rate_epoch * 1e9) : mono_ns();
  s->rate_slack = (int64_t)(rate_slack * 1e9);
  s->retries = retries;
  s->graceful = graceful;
  s->reuse = reuse && source == Py_None;
  s->lag_limit_ms = lag_limit > 0 ? lag_limit : 0;
  s->lag_floor = lag_floor < 1 ? 1 : lag_floor;
  s->giveup_ns = giveup < 0 ? -1 : (int64_t)(giveup * 1e9);
  s->out_fd = fd;
  s->file_fd = file_fd;
  s->open_only_out = open_only_out;
  s->open_only_file = open_only_file;
  s->csv = csv;
  s->stop_fd = stop_fd;
  s->wake_fd = wake_fd;
  s->gport = -1;
  s->stuck_since = -1;
  s->dl_first = s->dl_last = -1;
  s->ts.sec = -1;
  s->slots = calloc((size_t)concurrency, sizeof *s->slots);
  s->free_list = malloc((size_t)concurrency * sizeof *s->free_list);
  s->out.p = malloc(OUT_SIZE);
  s->out.cap = OUT_SIZE;
  s->file.p = malloc(OUT_SIZE);
  s->file.cap = OUT_SIZE;
  if (!s->slots || !s->free_list || !s->out.p || !s->file.p) {
    PyErr_NoMemory();
    goto fail;
  }
  for (int i = 0; i < concurrency; i++) s->free_list[i] = concurrency - 1 - i;
  s->nfree = concurrency;
  s->ep = epoll_create1(EPOLL_CLOEXEC);
  if (s->ep < 0) {
    PyErr_SetFromErrno(PyExc_OSError);
    goto fail;
  }
  int watched[2] = {stop_fd, wake_fd};
  uint64_t tags[2] = {EV_STOP, EV_WAKE};
  for (int w = 0; w < 2; w++) {
    if (watched[w] < 0) continue;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tags[w]};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, watched[w], &ev) < 0) {
      PyErr_SetFromErrno(PyExc_OSError);
      goto fail;
    }
  }

  s->tstate = PyEval_SaveThread();
  int rc = run(s, progress);
  drop_everything(s);
  for (int f = 0; f < 2; f++)
    while (s->npool[f]) close(s->pool[f][--s->npool[f]]);
  if (!s->write_errno) flush_out(s);
  PyEval_RestoreThread(s->tstate);
  /* a stop's signal handler runs now, while the caller's handlers are still the ones set */
  if (PyErr_CheckSignals() < 0) rc = -1;

  if (rc < 0) goto fail;
  if (s->feed_failed) {
    PyErr_Restore(s->et, s->ev, s->etb);
    goto fail;
  }
  if (s->write_errno == EAGAIN && s->unwritten) { /* stopped, the reader not reading */
    /* the words of output/writer.py's Stalled */
    PyObject *text = PyUnicode_FromFormat("its reader stopped reading, %llu records not written",
                                          (unsigned long long)s->unwritten);
    PyObject *exc_args = text ? Py_BuildValue("(iN)", EAGAIN, text) : NULL;
    if (exc_args) {
      PyErr_SetObject(PyExc_OSError, exc_args);
      Py_DECREF(exc_args);
    }
    goto fail;
  }
  if (s->write_errno) {
    errno = s->write_errno;
    PyErr_SetFromErrno(PyExc_OSError);
    goto fail;
  }
  PyObject *lag_counts = PyList_New(n_lag_bounds + 1);
  if (!lag_counts) goto fail;
  for (int i = 0; i <= n_lag_bounds; i++)
    PyList_SET_ITEM(lag_counts, i, PyLong_FromUnsignedLongLong(s->lag_counts[i]));
  PyObject *outcomes = PyDict_New();
  if (!outcomes) {
    Py_DECREF(lag_counts);
    goto fail;
  }
  for (int o = 0; o < N_OUTCOMES; o++) {
    if (!s->outcomes[o]) continue;
    PyObject *v = PyLong_FromUnsignedLongLong(s->outcomes[o]);
    if (!v || PyDict_SetItemString(outcomes, outcome_names[o], v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(outcomes);
      Py_DECREF(lag_counts);
      goto fail;
    }
    Py_DECREF(v);
  }
  result = Py_BuildValue(
      "{s:K,s:N,s:N,s:d,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O,s:s}", "lag_throttles",
      (unsigned long long)s->lag_throttles, "outcomes", outcomes, "lag_counts", lag_counts,
      "lag_max_ms", s->lag_max_ms, "reused", (unsigned long long)s->reused, "targets",
      (unsigned long long)s->targets_done, "targets_without_open",
      (unsigned long long)s->targets_without_open, "started", (unsigned long long)s->started,
      "shortages", (unsigned long long)s->shortages, "self_connects",
      (unsigned long long)s->self_connects, "late", (unsigned long long)s->late, "seen",
      (unsigned long long)s->seen, "excluded", (unsigned long long)s->excluded_endpoints,
      "stopped", s->stopped ? Py_True : Py_False, "error", s->fail);
fail:
  if (s->ep >= 0) close(s->ep);
  free(s->batch);
  free(s->slots);
  free(s->free_list);
  free(s->out.p);
  free(s->file.p);
  free(s->head);
  free_exclusions(&excl);
  free(s);
  return result;
}

/* ---- set-up and test hooks ---------------------------------------------------------------- */

PyDoc_STRVAR(configure_doc,
"configure(errnames, outcomes, by_errno, keys, lag_bounds)\n\n"
"What records and results hold, from the Python side's one definition: errno.errorcode;\n"
"the outcome names in the order open, refused, timeout, unreachable, error; for each errno\n"
"below 256 the index of its outcome; the record's\n"
"keys in order (each must be one this writer knows, every one of them present); the lag\n"
"histogram's bounds in ms. Raises ValueError when the two disagree.");

static PyObject *configure(PyObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"errnames", "outcomes", "by_errno", "keys", "lag_bounds", NULL};
  PyObject *mapping, *outcomes, *by_errno, *keys, *bounds;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OOOO", kwlist, &PyDict_Type, &mapping,
                                   &outcomes, &by_errno, &keys, &bounds))
    return NULL;
  PyObject *ef = PySequence_Fast(by_errno, "by_errno");
  if (!ef) return NULL;
  if (PySequence_Fast_GET_SIZE(ef) != N_ERRNAMES) {
    Py_DECREF(ef);
    PyErr_Format(PyExc_ValueError, "by_errno holds the outcome of errnos 0 to %d", N_ERRNAMES - 1);
    return NULL;
  }
  for (int e = 0; e < N_ERRNAMES; e++) {
    long o = PyLong_AsLong(PySequence_Fast_GET_ITEM(ef, e));
    if (o < 0 || o >= N_OUTCOMES) {
      Py_DECREF(ef);
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "an outcome index out of range");
      return NULL;
    }
    errno_outcome[e] = (unsigned char)o;
  }
  Py_DECREF(ef);
  /* the core's own rules lean on these: a connect that succeeded, a timeout to retry */
  if (errno_outcome[0] != O_OPEN || errno_outcome[ETIMEDOUT] != O_TIMEOUT) {
    PyErr_SetString(PyExc_ValueError, "errno 0 must be open and ETIMEDOUT a timeout");
    return NULL;
  }
  errno_outcome_set = 1;
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(mapping, &pos, &key, &value)) {
    long n = PyLong_AsLong(key);
    if (n == -1 && PyErr_Occurred()) return NULL;
    const char *name = PyUnicode_AsUTF8(value);
    if (!name) return NULL;
    if (n > 0 && n < N_ERRNAMES) {
      free(errnames[n]);
      errnames[n] = strdup(name);
    }
  }
  PyObject *of = PySequence_Fast(outcomes, "outcomes"), *kf = PySequence_Fast(keys, "keys"),
           *bf = PySequence_Fast(bounds, "lag_bounds");
  PyObject *ret = NULL;
  if (!of || !kf || !bf) goto done;
  if (PySequence_Fast_GET_SIZE(of) != N_OUTCOMES) {
    PyErr_Format(PyExc_ValueError, "the native core has %d outcomes", N_OUTCOMES);
    goto done;
  }
  for (int o = 0; o < N_OUTCOMES; o++) {
    const char *name = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(of, o));
    if (!name) goto done;
    free(outcome_names[o]);
    outcome_names[o] = strdup(name);
  }
  if (PySequence_Fast_GET_SIZE(kf) != N_KEYS) {
    PyErr_Format(PyExc_ValueError, "the native core writes %d record keys, not %zd", N_KEYS,
                 PySequence_Fast_GET_SIZE(kf));
    goto done;
  }
  int order[N_KEYS], seen[N_KEYS] = {0};
  for (int k = 0; k < N_KEYS; k++) {
    const char *name = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(kf, k));
    if (!name) goto done;
    int found = -1;
    for (int j = 0; j < N_KEYS; j++)
      if (!strcmp(name, KEY_NAMES[j])) found = j;
    if (found < 0 || seen[found]) {
      PyErr_Format(PyExc_ValueError, "record key %s unknown to the native core", name);
      goto done;
    }
    seen[found] = 1;
    order[k] = found;
  }
  memcpy(key_order, order, sizeof order);
  make_key_heads();
  Py_ssize_t nb = PySequence_Fast_GET_SIZE(bf);
  if (nb < 1 || nb > 31) {
    PyErr_SetString(PyExc_ValueError, "1 to 31 lag bounds");
    goto done;
  }
  for (Py_ssize_t i = 0; i < nb; i++) {
    lag_bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(bf, i));
    if (PyErr_Occurred()) goto done;
  }
  n_lag_bounds = (int)nb;
  ret = Py_None;
  Py_INCREF(ret);
done:
  Py_XDECREF(of);
  Py_XDECREF(kf);
  Py_XDECREF(bf);
  return ret;
}

static PyObject *py_escape(PyObject *self, PyObject *arg) {
  size_t n;
  char *e = escaped_copy(arg, &n);
  if (!e) return NULL;
  PyObject *out = PyBytes_FromStringAndSize(e, (Py_ssize_t)n);
  free(e);
  return out;
}

static PyObject *py_format_latency(PyObject *self, PyObject *arg) {
  unsigned long long ns = PyLong_AsUnsignedLongLong(arg);
  if (ns == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  char tmp[64];
  buf_t b = {tmp, 0, sizeof tmp};
  put_thousandths(&b, ms_thousandths(ns));
  return PyBytes_FromStringAndSize(tmp, (Py_ssize_t)b.len);
}

static PyObject *py_format_rtt(PyObject *self, PyObject *arg) {
  unsigned long long us = PyLong_AsUnsignedLongLong(arg);
  if (us == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  char tmp[64];
  buf_t b = {tmp, 0, sizeof tmp};
  put_thousandths(&b, us);
  return PyBytes_FromStringAndSize(tmp, (Py_ssize_t)b.len);
}

static PyObject *py_ipv6_text(PyObject *self, PyObject *arg) {
  if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) != 16) {
    PyErr_SetString(PyExc_ValueError, "16 bytes");
    return NULL;
  }
  char text[64];
  size_t n = ipv6_text((const uint8_t *)PyBytes_AS_STRING(arg), text);
  return PyUnicode_FromStringAndSize(text, (Py_ssize_t)n);
}

/* _record(wall_s, wall_ns, host, bracketed, address, port, local, err, timed_out,
 *         latency_ns, rtt_us, syn_retransmits, attempt) -> bytes: one line, as sweep writes it.
 * local: None or (address, port). err: errno (0 = open), -1 = SELF_CONNECT. */
static PyObject *py_record(PyObject *self, PyObject *args) {
  long long wall_s, wall_ns, latency_ns, rtt_us, retrans;
  PyObject *host, *address, *local;
  int bracketed, port, err, timed_out;
  unsigned attempt;
  if (!PyArg_ParseTuple(args, "LLUpUiOipLLLI", &wall_s, &wall_ns, &host, &bracketed,
                        &address, &port, &local, &err, &timed_out, &latency_ns, &rtt_us,
                        &retrans, &attempt))
    return NULL;
  struct sockaddr_storage sa, la;
  socklen_t len;
  int family = parse_sockaddr(PyUnicode_AsUTF8(address), port, 0, &sa, &len);
  if (family < 0) {
    PyErr_SetString(PyExc_ValueError, "address is not an IP literal");
    return NULL;
  }
  if (local != Py_None) {
    const char *ladr;
    int lport;
    if (!PyArg_ParseTuple(local, "si", &ladr, &lport)) return NULL;
    if (parse_sockaddr(ladr, lport, 0, &la, &len) < 0) {
      PyErr_SetString(PyExc_ValueError, "local is not an IP literal");
      return NULL;
    }
  }
  size_t hl, al;
  char *h = escaped_copy(host, &hl);
  char *a = h ? escaped_copy(address, &al) : NULL;
  if (!a) {
    free(h);
    return NULL;
  }
  rec_target_t t = {.host = h, .host_len = hl, .address = a, .address_len = al,
                    .bracketed = bracketed, .family = family};
  struct timespec wall = {(time_t)wall_s, (long)wall_ns};
  rec_t r = {.wall = &wall, .port = port, .local = local == Py_None ? NULL : &la,
             .outcome = timed_out ? O_TIMEOUT : (err == SELF_CONNECT ? O_ERROR : outcome_of(err)),
             .err = err, .timed_out = timed_out, .latency_ns = (uint64_t)latency_ns,
             .rtt_us = rtt_us, .syn_retransmits = retrans, .attempt = attempt};
  char *mem = malloc(OUT_ROOM + hl * 2 + al);
  buf_t b = {mem, 0, OUT_ROOM};
  tscache_t ts = {.sec = -1};
  put_record(&b, &ts, &t, &r);
  PyObject *out = PyBytes_FromStringAndSize(mem, (Py_ssize_t)b.len);
  free(mem);
  free(h);
  free(a);
  return out;
}

static PyMethodDef methods[] = {
    {"sweep", (PyCFunction)(void (*)(void))sweep, METH_VARARGS | METH_KEYWORDS, sweep_doc},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     configure_doc},
    {"_escape", py_escape, METH_O, "Test hook: a str as the writer escapes it."},
    {"_format_latency", py_format_latency, METH_O,
     "Test hook: latency_ms for an elapsed time in ns, as written."},
    {"_format_rtt", py_format_rtt, METH_O, "Test hook: rtt_ms for tcpi_rtt in us, as written."},
    {"_ipv6_text", py_ipv6_text, METH_O, "Test hook: a range's IPv6 address as written."},
    {"_record", py_record, METH_VARARGS, "Test hook: one record line, as written."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The native sweep core of probe check (Linux).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) {
  make_key_heads();
  return PyModule_Create(&module);
}
