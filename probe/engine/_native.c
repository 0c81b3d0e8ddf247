/* probe.engine._native: the sweep core of `probe check` in C (Linux).
 *
 * Why: per attempt the Python engine spends ~100 us, a third of it in the kernel; the rest
 * is Python objects around a handful of syscalls. Here one call runs a worker's whole share
 * of a sweep (literal addresses x port ranges) with the GIL released: socket, optional bind,
 * connect, getsockname at once, the answer already in at connect taken there, epoll for the
 * rest, a deadline FIFO, SO_ERROR/getpeername before calling a timeout, TCP_INFO, RST close,
 * self-connect retry, --retries, --rate pacing, and local shortages handled as the Python
 * engine handles them (never a record; back off, retry the same attempt, give up after
 * 30 s stuck with nothing in flight). Records are written as JSON lines, byte for byte as
 * the Python path writes them (record.py as_dict + msgspec), to a file descriptor in large
 * chunks of whole lines.
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <linux/time_types.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define OUT_SIZE (1 << 16)
#define OUT_ROOM 2048 /* a record is far shorter than this */
#define SELF_CONNECT_TRIES 8
#define START_BATCH 64         /* starts between two looks at completions */
#define RATE_SLACK_NS 2000000  /* timer lateness that --rate still makes up */
#define TICK_NS 200000000LL    /* flush and progress every 0.2 s */
/* Deadlines are taken in batches: the loop wakes this long after the first one due, not at
 * every one (a wave of 500 timeouts started ~10 us apart would be 500 wake-ups). Each
 * slot's next attempt starts at most this much later; epoll_wait's milliseconds were up
 * to 1 ms. */
#define DEADLINE_SLACK_NS 200000LL
#define SELF_CONNECT (-1)

enum { O_OPEN, O_REFUSED, O_TIMEOUT, O_UNREACHABLE, O_ERROR, N_OUTCOMES };
static const char *OUTCOME_NAMES[N_OUTCOMES] = {"open", "refused", "timeout", "unreachable",
                                               "error"};

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

static int outcome_of(int err) {
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
/* One record                                                                                 */

typedef struct {
  const char *host; /* escaped */
  size_t host_len;
  const char *address; /* escaped */
  size_t address_len;
  int bracketed, family;
} rec_target_t;

typedef struct {
  const struct timespec *wall;
  int port;
  const struct sockaddr_storage *local; /* NULL: never reached connect */
  int outcome, err, timed_out;
  uint64_t latency_ns;
  int64_t rtt_us;          /* < 0: null */
  int64_t syn_retransmits; /* < 0: null */
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

/* An IPv4 or IPv6 socket address as the text inet_ntop gives (into `text`, at least
 * INET6_ADDRSTRLEN bytes) and its port: the record's local endpoint, in both outputs. */
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

static void put_record(buf_t *b, tscache_t *ts, const rec_target_t *t, const rec_t *r) {
  PUTS(b, "{\"event\":\"probe\",\"timestamp\":\"");
  put_timestamp(b, ts, r->wall);
  PUTS(b, ",\"target\":\"");
  put_host_port(b, t->host, t->host_len, t->bracketed, r->port);
  PUTS(b, "\",\"host\":\"");
  put(b, t->host, t->host_len);
  PUTS(b, "\",\"port\":");
  put_uint(b, (uint64_t)r->port);
  PUTS(b, ",\"address\":\"");
  put(b, t->address, t->address_len);
  if (t->family == AF_INET6)
    PUTS(b, "\",\"family\":\"ipv6\",\"local_address\":");
  else
    PUTS(b, "\",\"family\":\"ipv4\",\"local_address\":");
  if (r->local == NULL) {
    PUTS(b, "null,\"local_port\":null");
  } else {
    char text[INET6_ADDRSTRLEN];
    int port = endpoint_text(r->local, text);
    PUTS(b, "\"");
    put(b, text, strlen(text));
    PUTS(b, "\",\"local_port\":");
    put_uint(b, (uint64_t)port);
  }
  PUTS(b, ",\"outcome\":\"");
  const char *name = OUTCOME_NAMES[r->outcome];
  put(b, name, strlen(name));
  if (r->outcome == O_OPEN) {
    PUTS(b, "\",\"error\":null");
  } else {
    char tmp[24];
    const char *e = r->timed_out ? "ETIMEDOUT" : errname(r->err, tmp);
    PUTS(b, "\",\"error\":\"");
    put(b, e, strlen(e));
    PUTS(b, "\"");
  }
  PUTS(b, ",\"latency_ms\":");
  put_thousandths(b, ms_thousandths(r->latency_ns));
  PUTS(b, ",\"rtt_ms\":");
  if (r->rtt_us < 0)
    PUTS(b, "null");
  else
    put_thousandths(b, (uint64_t)r->rtt_us);
  PUTS(b, ",\"syn_retransmits\":");
  if (r->syn_retransmits < 0)
    PUTS(b, "null");
  else
    put_uint(b, (uint64_t)r->syn_retransmits);
  PUTS(b, ",\"dns_ms\":0.0");
  PUTS(b, ",\"attempt\":");
  put_uint(b, r->attempt);
  PUTS(b, "}\n");
}

/* ------------------------------------------------------------------------------------------ */
/* The sweep                                                                                  */

typedef struct {
  char *host, *address; /* escaped JSON string bodies */
  size_t host_len, address_len;
  int bracketed, family;
  struct sockaddr_storage sa; /* port filled per attempt */
  socklen_t salen;
  int nranges;
  int (*ranges)[2];
} target_t;

typedef struct {
  uint32_t target;
  uint16_t port;
  uint16_t retry;
  uint32_t number;
  uint8_t self_connects;
} attempt_t;

typedef struct {
  attempt_t a;
  int fd;
  int polled;     /* fd is in the epoll set */
  int prev, next; /* deadline list */
  int64_t t0, deadline;
  struct timespec wall;
  struct sockaddr_storage local;
} slot_t;

typedef struct {
  /* input */
  target_t *targets;
  int ntargets;
  int shard_index, shard_count;
  int64_t timeout_ns;
  int ceiling;
  double rate;
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
  int out_fd, stop_fd;
  /* endpoint generator */
  int gt, gr;
  long gport;
  int64_t gseen;
  int gdone;
  /* attempts to start before the generator's next: retries, self-connects */
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
  int64_t rate_next, rate_step;
  int64_t backoff_ns, resume_at, stuck_since;
  /* output */
  buf_t out;
  tscache_t ts;
  /* how late the loop gets to a 5 ms timer, as engine/lag.py measures the event loop */
  uint64_t lag_counts[13];
  double lag_max_ms;
  int64_t lag_due;
  int write_errno;
  /* results */
  uint64_t outcomes[N_OUTCOMES];
  uint64_t targets_done, targets_without_open, started, shortages, self_connects, late;
  uint64_t lag_throttles;
  int stopped;
  const char *fail; /* a message for the caller (exit 2) */
  char fail_text[256];
  char source_text[INET6_ADDRSTRLEN + 8];
} sweep_t;

static inline int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int flush_out(sweep_t *s) {
  size_t off = 0;
  while (off < s->out.len) {
    ssize_t n = write(s->out_fd, s->out.p + off, s->out.len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd p = {.fd = s->out_fd, .events = POLLOUT};
        poll(&p, 1, 1000);
        continue;
      }
      s->write_errno = errno;
      s->out.len = 0;
      return -1;
    }
    off += (size_t)n;
  }
  s->out.len = 0;
  return 0;
}

/* The next endpoint of this shard, in the order of targets.shard(): every count-th
 * endpoint from `index` across all targets' ranges. */
static int next_endpoint(sweep_t *s, attempt_t *a) {
  while (!s->gdone) {
    if (s->gt >= s->ntargets) {
      s->gdone = 1;
      break;
    }
    target_t *t = &s->targets[s->gt];
    if (s->gr >= t->nranges) {
      s->gt++;
      s->gr = 0;
      s->gport = -1;
      continue;
    }
    int lo = t->ranges[s->gr][0], hi = t->ranges[s->gr][1];
    if (s->gport < 0) {
      int64_t c = s->shard_count;
      int64_t off = ((s->shard_index - s->gseen) % c + c) % c;
      s->gport = lo + off;
    }
    if (s->gport > hi) {
      s->gseen += hi - lo + 1;
      s->gr++;
      s->gport = -1;
      continue;
    }
    a->target = (uint32_t)s->gt;
    a->port = (uint16_t)s->gport;
    a->retry = 0;
    a->number = 1;
    a->self_connects = 0;
    s->gport += s->shard_count;
    return 1;
  }
  return 0;
}

static int head_push_front(sweep_t *s, const attempt_t *a) {
  if (s->head_len == s->head_cap) {
    size_t cap = s->head_cap ? s->head_cap * 2 : 64;
    attempt_t *n = malloc(cap * sizeof *n);
    if (!n) return -1;
    for (size_t i = 0; i < s->head_len; i++)
      n[i] = s->head[(s->head_start + i) % s->head_cap];
    free(s->head);
    s->head = n;
    s->head_start = 0;
    s->head_cap = cap;
  }
  s->head_start = (s->head_start + s->head_cap - 1) % s->head_cap;
  s->head[s->head_start] = *a;
  s->head_len++;
  return 0;
}

static int have_pending(sweep_t *s) {
  if (s->head_len) return 1;
  if (s->gdone) return 0;
  /* peek by pulling one into the head queue */
  attempt_t a;
  if (!next_endpoint(s, &a)) return 0;
  if (head_push_front(s, &a) < 0) return 0;
  return 1;
}

static void pop_pending(sweep_t *s, attempt_t *a) {
  *a = s->head[s->head_start];
  s->head_start = (s->head_start + 1) % s->head_cap;
  s->head_len--;
}

static void emit(sweep_t *s, const attempt_t *a, rec_t *r) {
  target_t *t = &s->targets[a->target];
  rec_target_t rt = {t->host, t->host_len, t->address, t->address_len, t->bracketed, t->family};
  r->port = a->port;
  r->attempt = a->number;
  put_record(&s->out, &s->ts, &rt, r);
  s->outcomes[r->outcome]++;
  int retry = r->outcome == O_TIMEOUT && a->retry < s->retries && !s->stopped;
  if (retry) {
    attempt_t again = *a;
    again.number++;
    again.retry++;
    again.self_connects = 0;
    head_push_front(s, &again);
  } else {
    s->targets_done++;
    if (r->outcome != O_OPEN) s->targets_without_open++;
  }
  if (s->out.len > OUT_SIZE - OUT_ROOM) flush_out(s);
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

static int same_endpoint(const struct sockaddr_storage *local, const target_t *t, int port) {
  if (local->ss_family != t->sa.ss_family) return 0;
  if (local->ss_family == AF_INET6) {
    const struct sockaddr_in6 *l = (const void *)local, *d = (const void *)&t->sa;
    return ntohs(l->sin6_port) == port && !memcmp(&l->sin6_addr, &d->sin6_addr, 16);
  }
  const struct sockaddr_in *l = (const void *)local, *d = (const void *)&t->sa;
  return ntohs(l->sin_port) == port && l->sin_addr.s_addr == d->sin_addr.s_addr;
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
  target_t *t = &s->targets[sl->a.target];
  if (err == 0 && !timed_out && same_endpoint(&sl->local, t, sl->a.port)) {
    /* Simultaneous open with itself: the kernel chose the destination port as the
     * ephemeral port. Our artifact, not the target's answer: try again with another port,
     * unless -s fixed the port, where every try would be the same. */
    int64_t sretrans = ans->retrans;
    rst_close(sl->fd);
    s->self_connects++;
    if (!(s->has_source && s->source_port) && sl->a.self_connects < SELF_CONNECT_TRIES) {
      attempt_t again = sl->a;
      again.self_connects++;
      head_push_front(s, &again);
      return;
    }
    rec_t r = {.wall = &sl->wall, .local = &sl->local, .outcome = O_ERROR, .err = SELF_CONNECT,
               .latency_ns = (uint64_t)(t1 - sl->t0), .rtt_us = -1, .syn_retransmits = sretrans};
    emit(s, &sl->a, &r);
    return;
  }
  int64_t rtt = err == 0 && !timed_out ? ans->rtt_us : -1, retrans = ans->retrans;
  if (err == 0 && !timed_out && !s->graceful)
    rst_close(sl->fd);
  else if (err == ECONNREFUSED && s->reuse && !recycle(s, sl->fd, t->family, sl->polled))
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
  target_t *t = &s->targets[a->target];
  int f = t->family == AF_INET6;
  int fd = s->npool[f] ? (s->reused++, s->pool[f][--s->npool[f]])
                       : socket(t->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
    else if (t->family == AF_INET)
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
  set_port(&t->sa, a->port);
  clock_gettime(CLOCK_REALTIME, &sl->wall);
  sl->t0 = mono_ns();
  int err = connect(fd, (struct sockaddr *)&t->sa, t->salen) < 0 ? errno : 0;
  socklen_t ll = sizeof sl->local;
  if (err != EINPROGRESS && err != 0) {
    int64_t t1 = mono_ns();
    if (getsockname(fd, (struct sockaddr *)&sl->local, &ll) < 0)
      memset(&sl->local, 0, sizeof sl->local), sl->local.ss_family = (sa_family_t)t->family;
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
    sl->local.ss_family = (sa_family_t)t->family;
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

static void close_inflight(sweep_t *s) {
  for (int i = s->dl_first; i >= 0;) {
    int next = s->slots[i].next;
    close(s->slots[i].fd);
    i = next;
  }
  s->dl_first = s->dl_last = -1;
  s->inflight = 0;
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
static const double LAG_BOUNDS_MS[12] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000};

/* Sustained lag (two samples running over the limit) lowers the limit to 3/4 of what is in
 * flight, never below the floor; each completion adds one back. One late sample is the
 * machine (another process had the core), not this loop. As engine/core.py's _on_lag. */
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

static void lag_sample(sweep_t *s, int64_t now) {
  if (now < s->lag_due) return;
  double ms = (double)(now - s->lag_due) / 1e6;
  int i = 0;
  while (i < 12 && ms > LAG_BOUNDS_MS[i]) i++;
  s->lag_counts[i]++;
  if (ms > s->lag_max_ms) s->lag_max_ms = ms;
  s->lag_due = now + LAG_TICK_NS;
  on_lag(s, ms);
}

/* Start the next pending attempt, if the limit, --rate and a shortage's back-off allow one
 * now. 1: one went out (or met a shortage, which sets the back-off); 0: none now, *wake =
 * when pacing or the back-off allows the next. */
static int start_next(sweep_t *s, int64_t now, int64_t *wake) {
  if (s->fail || s->inflight >= s->limit || !have_pending(s)) return 0;
  if (s->resume_at > now) {
    *wake = s->resume_at;
    return 0;
  }
  if (s->rate_step) {
    if (s->rate_next > now) {
      *wake = s->rate_next;
      return 0;
    }
    int64_t slack = s->rate_step > RATE_SLACK_NS ? s->rate_step : RATE_SLACK_NS;
    if (s->rate_next < now - slack) s->rate_next = now;
    s->rate_next += s->rate_step;
  }
  attempt_t a;
  pop_pending(s, &a);
  int r = start(s, &a, now);
  if (r == SHORT) {
    head_push_front(s, &a);
    if (s->rate_step) s->rate_next -= s->rate_step;
  }
  return r != FATAL;
}

/* The attempt loop; returns 0, or -1 with a Python exception set (progress callback). */
static int run(sweep_t *s, PyObject *progress, PyThreadState **ts) {
  struct epoll_event evs[1024];
  int64_t next_tick = mono_ns() + TICK_NS;
  s->lag_due = mono_ns() + LAG_TICK_NS;
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
    if (s->fail) break;
    if (s->inflight == 0 && !have_pending(s)) break;
    /* wait */
    int64_t until = next_tick < s->lag_due ? next_tick : s->lag_due;
    if (s->dl_first >= 0 && s->slots[s->dl_first].deadline + DEADLINE_SLACK_NS < until)
      until = s->slots[s->dl_first].deadline + DEADLINE_SLACK_NS;
    if (wake >= 0 && wake < until) until = wake;
    now = mono_ns();
    int n = wait_events(s->ep, evs, 1024, until > now ? until - now : 0);
    if (n < 0 && errno != EINTR) n = 0;
    for (int k = 0; k < n; k++) {
      uint64_t d = evs[k].data.u64;
      if (d == UINT64_MAX) {
        s->stopped = 1;
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
    lag_sample(s, now);
    if (now >= next_tick) {
      next_tick = now + TICK_NS;
      if (flush_out(s) < 0) return 0;
      PyEval_RestoreThread(*ts);
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
      *ts = PyEval_SaveThread();
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

static int parse_sockaddr(const char *text, int port, struct sockaddr_storage *sa,
                          socklen_t *len) {
  memset(sa, 0, sizeof *sa);
  struct sockaddr_in *a4 = (void *)sa;
  struct sockaddr_in6 *a6 = (void *)sa;
  if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    return AF_INET;
  }
  if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
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

static void free_targets(target_t *t, int n) {
  if (!t) return;
  for (int i = 0; i < n; i++) {
    free(t[i].host);
    free(t[i].address);
    free(t[i].ranges);
  }
  free(t);
}

/* targets: sequence of (host, bracketed, address, ((lo, hi), ...)) */
static target_t *parse_targets(PyObject *seq, int *count) {
  PyObject *fast = PySequence_Fast(seq, "targets must be a sequence");
  if (!fast) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  target_t *targets = calloc(n ? (size_t)n : 1, sizeof *targets);
  if (!targets) {
    Py_DECREF(fast);
    PyErr_NoMemory();
    return NULL;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *host, *address, *ranges;
    int bracketed;
    target_t *t = &targets[i];
    if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "UpUO;target tuple", &host,
                          &bracketed, &address, &ranges))
      goto fail;
    const char *addr = PyUnicode_AsUTF8(address);
    if (!addr) goto fail;
    t->family = parse_sockaddr(addr, 0, &t->sa, &t->salen);
    if (t->family < 0) {
      PyErr_Format(PyExc_ValueError, "not an IP address literal: %R", address);
      goto fail;
    }
    t->bracketed = bracketed;
    if (!(t->host = escaped_copy(host, &t->host_len))) goto fail;
    if (!(t->address = escaped_copy(address, &t->address_len))) goto fail;
    PyObject *rf = PySequence_Fast(ranges, "ranges must be a sequence");
    if (!rf) goto fail;
    t->nranges = (int)PySequence_Fast_GET_SIZE(rf);
    t->ranges = malloc(sizeof *t->ranges * (t->nranges ? (size_t)t->nranges : 1));
    for (int r = 0; r < t->nranges; r++) {
      int lo, hi;
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(rf, r), "ii", &lo, &hi) || lo < 1 ||
          hi > 65535 || hi < lo) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad port range");
        Py_DECREF(rf);
        goto fail;
      }
      t->ranges[r][0] = lo;
      t->ranges[r][1] = hi;
    }
    Py_DECREF(rf);
  }
  Py_DECREF(fast);
  *count = (int)n;
  return targets;
fail:
  Py_DECREF(fast);
  free_targets(targets, (int)n);
  return NULL;
}

PyDoc_STRVAR(sweep_doc,
"sweep(fd, targets, shard_index, shard_count, timeout, concurrency, rate, retries, source,\n"
"      graceful, stop_fd, progress, giveup, reuse, lag_limit, lag_floor) -> dict\n\n"
"Probe every endpoint of this shard of `targets` (host, bracketed, address, ranges) once,\n"
"writing JSON records to fd. `source` is None or (address, port); `rate` 0 = unlimited;\n"
"`stop_fd` readable ends the call; `progress(records, open)` every 0.2 s; `giveup`:\n"
"seconds of local shortage with nothing in flight before it returns an error (< 0: never);\n"
"`lag_limit`: ms of loop lag, twice running, that lowers concurrency (to `lag_floor` at\n"
"least; 0: never).");

static PyObject *sweep(PyObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"fd", "targets", "shard_index", "shard_count", "timeout",
                           "concurrency", "rate", "retries", "source", "graceful",
                           "stop_fd", "progress", "giveup", "reuse", "lag_limit", "lag_floor", NULL};
  int fd, shard_index = 0, shard_count = 1, concurrency = 1000, retries = 0, graceful = 0;
  int reuse = 0, lag_floor = 8;
  double lag_limit = 0.0;
  int stop_fd = -1;
  double timeout = 1.0, rate = 0.0, giveup = 30.0;
  PyObject *targets_obj, *source = Py_None, *progress = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "iO|iididiOpiOdpdi", kwlist, &fd, &targets_obj,
                                   &shard_index, &shard_count, &timeout, &concurrency, &rate,
                                   &retries, &source, &graceful, &stop_fd, &progress,
                                   &giveup, &reuse, &lag_limit, &lag_floor))
    return NULL;
  if (shard_count < 1 || shard_index < 0 || shard_index >= shard_count || concurrency < 1 ||
      !(timeout > 0) || rate < 0 || retries < 0) {
    PyErr_SetString(PyExc_ValueError, "bad sweep parameters");
    return NULL;
  }
  PyObject *result = NULL;
  sweep_t *s = calloc(1, sizeof *s);
  if (!s) return PyErr_NoMemory();
  s->ep = -1;
  s->targets = parse_targets(targets_obj, &s->ntargets);
  if (!s->targets) {
    free(s);
    return NULL;
  }
  if (source != Py_None) {
    const char *saddr;
    int sport;
    if (!PyArg_ParseTuple(source, "si;source is (address, port)", &saddr, &sport)) goto fail;
    if (parse_sockaddr(saddr, sport, &s->source, &s->source_len) < 0) {
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
  s->rate = rate;
  s->rate_step = rate > 0 ? (int64_t)(1e9 / rate) : 0;
  s->retries = retries;
  s->graceful = graceful;
  s->reuse = reuse && source == Py_None;
  s->lag_limit_ms = lag_limit > 0 ? lag_limit : 0;
  s->lag_floor = lag_floor < 1 ? 1 : lag_floor;
  s->giveup_ns = giveup < 0 ? -1 : (int64_t)(giveup * 1e9);
  s->out_fd = fd;
  s->stop_fd = stop_fd;
  s->gport = -1;
  s->stuck_since = -1;
  s->dl_first = s->dl_last = -1;
  s->ts.sec = -1;
  s->slots = calloc((size_t)concurrency, sizeof *s->slots);
  s->free_list = malloc((size_t)concurrency * sizeof *s->free_list);
  s->out.p = malloc(OUT_SIZE);
  s->out.cap = OUT_SIZE;
  if (!s->slots || !s->free_list || !s->out.p) {
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
  if (stop_fd >= 0) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, stop_fd, &ev) < 0) {
      PyErr_SetFromErrno(PyExc_OSError);
      goto fail;
    }
  }

  PyThreadState *ts = PyEval_SaveThread();
  int rc = run(s, progress, &ts);
  close_inflight(s);
  for (int f = 0; f < 2; f++)
    while (s->npool[f]) close(s->pool[f][--s->npool[f]]);
  if (!s->write_errno) flush_out(s);
  PyEval_RestoreThread(ts);

  if (rc < 0) goto fail;
  if (s->write_errno) {
    errno = s->write_errno;
    PyErr_SetFromErrno(PyExc_OSError);
    goto fail;
  }
  PyObject *lag_counts = PyList_New(13);
  if (!lag_counts) goto fail;
  for (int i = 0; i < 13; i++)
    PyList_SET_ITEM(lag_counts, i, PyLong_FromUnsignedLongLong(s->lag_counts[i]));
  PyObject *outcomes = PyDict_New();
  if (!outcomes) {
    Py_DECREF(lag_counts);
    goto fail;
  }
  for (int o = 0; o < N_OUTCOMES; o++) {
    if (!s->outcomes[o]) continue;
    PyObject *v = PyLong_FromUnsignedLongLong(s->outcomes[o]);
    if (!v || PyDict_SetItemString(outcomes, OUTCOME_NAMES[o], v) < 0) {
      Py_XDECREF(v);
      Py_DECREF(outcomes);
      Py_DECREF(lag_counts);
      goto fail;
    }
    Py_DECREF(v);
  }
  result = Py_BuildValue(
      "{s:K,s:N,s:N,s:d,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O,s:s}", "lag_throttles",
      (unsigned long long)s->lag_throttles, "outcomes", outcomes, "lag_counts",
      lag_counts, "lag_max_ms", s->lag_max_ms, "reused",
      (unsigned long long)s->reused, "targets",
      (unsigned long long)s->targets_done, "targets_without_open",
      (unsigned long long)s->targets_without_open, "started", (unsigned long long)s->started,
      "shortages", (unsigned long long)s->shortages, "self_connects",
      (unsigned long long)s->self_connects, "late", (unsigned long long)s->late, "stopped",
      s->stopped ? Py_True : Py_False, "error", s->fail);
fail:
  if (s->ep >= 0) close(s->ep);
  free_targets(s->targets, s->ntargets);
  free(s->slots);
  free(s->free_list);
  free(s->out.p);
  free(s->head);
  free(s);
  return result;
}

/* ---- set-up and test hooks ---------------------------------------------------------------- */

static PyObject *set_errnames(PyObject *self, PyObject *mapping) {
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  if (!PyDict_Check(mapping)) {
    PyErr_SetString(PyExc_TypeError, "expected errno.errorcode");
    return NULL;
  }
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
  Py_RETURN_NONE;
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
  int family = parse_sockaddr(PyUnicode_AsUTF8(address), port, &sa, &len);
  if (family < 0) {
    PyErr_SetString(PyExc_ValueError, "address is not an IP literal");
    return NULL;
  }
  if (local != Py_None) {
    const char *ladr;
    int lport;
    if (!PyArg_ParseTuple(local, "si", &ladr, &lport)) return NULL;
    if (parse_sockaddr(ladr, lport, &la, &len) < 0) {
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
  rec_target_t t = {h, hl, a, al, bracketed, family};
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
    {"set_errnames", set_errnames, METH_O, "errno -> name, from errno.errorcode."},
    {"_escape", py_escape, METH_O, "Test hook: a str as the writer escapes it."},
    {"_format_latency", py_format_latency, METH_O,
     "Test hook: latency_ms for an elapsed time in ns, as written."},
    {"_format_rtt", py_format_rtt, METH_O, "Test hook: rtt_ms for tcpi_rtt in us, as written."},
    {"_record", py_record, METH_VARARGS, "Test hook: one record line, as written."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The native sweep core of probe check (Linux).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
