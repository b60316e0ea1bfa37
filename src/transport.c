/*-------------------------------------------------------------------------
 *
 * transport.c
 *		The delivery transport: a libcurl multi handle that posts webhooks
 *		and sends emails for the dispatcher, with the rules on which
 *		addresses a webhook may reach (smartconnector.block_private_addresses
 *		and allowed_private_addresses).
 *
 * The multi handle is driven by PostgreSQL's WaitEventSet, so that the
 * dispatcher sleeps on its latch and on curl's sockets at once and wakes
 * for whichever comes first.  Transfers are independent: each completes on
 * its own and is reported through sc_transport_take_results(), so a slow
 * receiver never holds back another (there is no batch barrier).
 * Connections are reused per host and capped per host
 * (CURLMOPT_MAX_HOST_CONNECTIONS).
 *
 * Rule: no ereport(ERROR) while libcurl is running a callback, and none
 * while a curl object of a function's own is alive: every function gathers
 * what it needs from curl into palloc'd memory, releases the curl objects,
 * and only then reports.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "smartconnector.h"
#include "sc_curl.h"

/* Allow only these protocols on a transfer: "http,https" or "smtp,smtps" */
static void
allow_protocols(CURL *easy, bool web)
{
#if SC_CURL_HAS_PROTOCOLS_STR
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, web ? "http,https" : "smtp,smtps");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS,
					 web ? (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS) :
					 (long) (CURLPROTO_SMTP | CURLPROTO_SMTPS));
#endif
}

#define SC_MAX_STORED_RESPONSE	4096

typedef struct Transfer
{
	int64		delivery_id;
	TimestampTz due_at;			/* passed back in the result */
	bool		is_webhook;
	CURL	   *easy;
	MemoryContext cxt;
	struct curl_slist *headers;
	struct curl_slist *recipients;
	char	   *host;
	const char *upload;			/* email message being sent */
	size_t		upload_len;
	size_t		upload_pos;
	StringInfoData response;
	int			retry_after_s;
	int			opened;			/* sockets opened to addresses that are allowed */
	bool		no_fd;			/* a socket was refused: no file descriptor left */
	char		blocked[INET6_ADDRSTRLEN + 1];	/* the last address refused, or "" */
	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

typedef struct SocketWatch
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} SocketWatch;

static CURLM *multi = NULL;
static bool smtp_url_has_credentials = false;	/* smtp://user:password@host */
static MemoryContext transport_cxt = NULL;
static List *transfers = NIL;	/* Transfer *, in flight */
/*
 * The sockets curl wants watched, in malloc'd memory: socket_cb runs inside
 * libcurl, where an ERROR (palloc's out of memory) would longjmp through
 * curl's stack and leave it inconsistent.  So nothing there can ereport.
 */
static SocketWatch *watches = NULL;
static int	n_watches = 0;
static int	max_watches = 0;
static List *results = NIL;		/* ScTransferResult *, finished */
static bool watches_dirty = true;
static WaitEventSet *wait_set = NULL;
static TimestampTz timer_deadline = 0;	/* 0: no curl timer */

static int	socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp);
static int	timer_cb(CURLM *m, long timeout_ms, void *userp);
static curl_socket_t open_socket_cb(void *clientp, curlsocktype purpose,
									struct curl_sockaddr *address);
#if SC_CURL_HAS_PREREQ
static int	prereq_cb(void *clientp, char *conn_primary_ip, char *conn_local_ip,
					  int conn_primary_port, int conn_local_port);
#endif
static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp);
static size_t header_cb(char *data, size_t size, size_t nmemb, void *userp);
static size_t read_cb(char *buffer, size_t size, size_t nitems, void *userp);
static bool ipv4_is_private(uint32 v4);
static uint32 embedded_ipv4(const uint8 *b);
static bool ipv6_is_private(const uint8 *a);
static bool prefix_equal(const uint8 *a, const uint8 *b, int bits);
static bool address_is_allowed(int family, const uint8 *addr);
static bool address_is_private(const struct sockaddr *sa, int family, char *text, size_t textlen);
static Transfer *new_transfer(int64 delivery_id, TimestampTz due_at, const char *host,
							   bool is_webhook);
static void finish_transfer(Transfer *t, CURLcode code);
static bool append_line(struct curl_slist **list, const char *line);
static void start_transfer(Transfer *t, bool built);
static int	close_socket_cb(void *clientp, curl_socket_t fd);
static void collect_done(void);

/*
 * Create the multi handle (once per dispatcher process).
 */
void
sc_transport_init(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "curl_global_init failed");
	transport_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector transport",
										  ALLOCSET_DEFAULT_SIZES);
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "curl_multi_init failed");
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	sc_transport_configure();
}

/*
 * Apply the settings that live on the multi handle (after a reload too).
 */
void
sc_transport_configure(void)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "smartconnector smtp_url",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);

	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) sc_max_connections_per_host);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) sc_max_deliveries_in_flight);

	/* once per (re)load, not per email; the parsed parts (a password) go at once */
	smtp_url_has_credentials = sc_url_has_credentials(sc_smtp_url ? sc_smtp_url : "");
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/*
 * Release every transfer and the multi handle.
 */
void
sc_transport_shutdown(void)
{
	ListCell   *lc;

	if (multi == NULL)
		return;
	foreach(lc, transfers)
	{
		Transfer   *t = (Transfer *) lfirst(lc);

		curl_multi_remove_handle(multi, t->easy);
		curl_easy_cleanup(t->easy);
		curl_slist_free_all(t->headers);
		curl_slist_free_all(t->recipients);
	}
	curl_multi_cleanup(multi);
	multi = NULL;
	curl_global_cleanup();
}

int
sc_transport_in_flight(void)
{
	return list_length(transfers);
}

/*
 * Whether a delivery is in flight, and how many are for one host.
 */
bool
sc_transport_has(int64 delivery_id)
{
	ListCell   *lc;

	foreach(lc, transfers)
	{
		if (((Transfer *) lfirst(lc))->delivery_id == delivery_id)
			return true;
	}
	return false;
}

int
sc_transport_host_count(const char *host)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, transfers)
	{
		if (strcmp(((Transfer *) lfirst(lc))->host, host) == 0)
			n++;
	}
	return n;
}

/*
 * curl's socket callback: remember which sockets to wait on, and for what.
 */
static int
socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	for (int i = 0; i < n_watches; i++)
	{
		if (watches[i].fd == fd)
		{
			if (what == CURL_POLL_REMOVE)
				watches[i] = watches[--n_watches];
			else
				watches[i].what = what;
			watches_dirty = true;
			return 0;
		}
	}
	if (what == CURL_POLL_REMOVE)
		return 0;
	if (n_watches == max_watches)
	{
		int			n = max_watches == 0 ? 16 : max_watches * 2;
		SocketWatch *grown = realloc(watches, sizeof(SocketWatch) * n);

		if (grown == NULL)
			return -1;			/* curl fails the transfer */
		watches = grown;
		max_watches = n;
	}
	watches[n_watches].fd = fd;
	watches[n_watches].what = what;
	n_watches++;
	watches_dirty = true;
	return 0;
}

/*
 * curl's timer callback: when curl wants to be called without socket activity.
 */
static int
timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		timer_deadline = 0;
	else
		timer_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/*
 * Is this IPv4 address (host order) one a webhook must not reach: loopback,
 * private, link-local (which includes cloud metadata at 169.254.169.254),
 * carrier-grade NAT, unspecified, multicast or reserved?
 */
static bool
ipv4_is_private(uint32 v4)
{
	return (v4 >> 24) == 0 ||	/* 0.0.0.0/8 */
		(v4 >> 24) == 10 ||		/* 10/8 */
		(v4 >> 24) == 127 ||	/* loopback */
		(v4 >> 22) == (100u << 2 | 1) ||	/* 100.64/10 carrier-grade NAT */
		(v4 >> 16) == (169u << 8 | 254) ||	/* 169.254/16 link-local, metadata */
		(v4 >> 20) == (172u << 4 | 1) ||	/* 172.16/12 */
		(v4 >> 16) == (192u << 8 | 168) ||	/* 192.168/16 */
		(v4 >> 8) == (192u << 16 | 0 << 8 | 0) ||	/* 192.0.0/24 */
		(v4 >> 17) == (198u << 7 | 18 >> 1) ||	/* 198.18/15 benchmarking */
		(v4 >> 8) == (192u << 16 | 0 << 8 | 2) ||	/* 192.0.2/24 documentation */
		(v4 >> 8) == (198u << 16 | 51 << 8 | 100) ||	/* 198.51.100/24 */
		(v4 >> 8) == (203u << 16 | 0 << 8 | 113) ||	/* 203.0.113/24 */
		(v4 >> 28) >= 14;		/* 224/4 multicast, 240/4 reserved, broadcast */
}

/* The IPv4 address in four bytes of an IPv6 address, in host order */
static uint32
embedded_ipv4(const uint8 *b)
{
	return ((uint32) b[0] << 24) | ((uint32) b[1] << 16) | ((uint32) b[2] << 8) | b[3];
}

/*
 * The same for IPv6: loopback, unspecified, unique and link/site-local,
 * multicast, Teredo and local-use NAT64 (which reach networks we cannot
 * judge), and every form that embeds an IPv4 address, judged by that
 * address: IPv4-compatible (::a.b.c.d), mapped (::ffff:a.b.c.d), translated
 * (::ffff:0:a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::).
 */
static bool
ipv6_is_private(const uint8 *a)
{
	static const uint8 mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const uint8 translated[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
	static const uint8 nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
	static const uint8 nat64_local[6] = {0, 0x64, 0xff, 0x9b, 0, 0x01};
	static const uint8 teredo[4] = {0x20, 0x01, 0, 0};
	static const uint8 benchmarking[6] = {0x20, 0x01, 0, 0x02, 0, 0};
	static const uint8 discard[8] = {0x01, 0, 0, 0, 0, 0, 0, 0};
	static const uint8 documentation[4] = {0x20, 0x01, 0x0d, 0xb8};
	bool		zero_prefix = true;

	for (int i = 0; i < 12; i++)
		zero_prefix &= (a[i] == 0);
	if (zero_prefix)
		return true;			/* ::, ::1 and IPv4-compatible ::a.b.c.d (deprecated) */
	if ((a[0] & 0xfe) == 0xfc)
		return true;			/* fc00::/7 unique local */
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return true;			/* fe80::/10 link-local */
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
		return true;			/* fec0::/10 site-local */
	if (a[0] == 0xff)
		return true;			/* multicast */
	if (memcmp(a, nat64_local, 6) == 0 || memcmp(a, teredo, 4) == 0)
		return true;			/* 64:ff9b:1::/48, 2001::/32 */
	if (memcmp(a, benchmarking, 6) == 0 || memcmp(a, discard, 8) == 0 ||
		memcmp(a, documentation, 4) == 0 ||
		(a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 &&
		 ((a[3] & 0xf0) == 0x10 || (a[3] & 0xf0) == 0x20)) ||
		(a[0] == 0x3f && a[1] == 0xff && (a[2] & 0xf0) == 0))
		return true;			/* 2001:2::/48, 100::/64, 2001:db8::/32, ORCHID
								 * 2001:10::/28 and 2001:20::/28, 3fff::/20 */
	if (memcmp(a, mapped, 12) == 0 || memcmp(a, translated, 12) == 0 ||
		memcmp(a, nat64, 12) == 0)
		return ipv4_is_private(embedded_ipv4(a + 12));
	if (a[0] == 0x20 && a[1] == 0x02)
		return ipv4_is_private(embedded_ipv4(a + 2));	/* 2002::/16 6to4 */
	return false;
}

/*
 * smartconnector.allowed_private_addresses, parsed: networks a webhook may
 * reach although they are private.  Kept in malloc'd memory (GUC extra).
 */
static const uint8 v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

typedef struct AllowedNetwork
{
	int			family;			/* AF_INET or AF_INET6 */
	int			bits;
	uint8		addr[16];
} AllowedNetwork;

typedef struct AllowedNetworks
{
	int			n;
	AllowedNetwork net[FLEXIBLE_ARRAY_MEMBER];
} AllowedNetworks;

static AllowedNetworks *allowed_networks = NULL;

/*
 * check hook: a comma-separated list of addresses or CIDR networks.
 */
bool
sc_check_allowed_networks(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	char	   *item;
	char	   *save = NULL;
	AllowedNetworks *nets;

	nets = malloc(offsetof(AllowedNetworks, net) +
				  sizeof(AllowedNetwork) * (strlen(copy) / 2 + 1));
	if (nets == NULL)
		return false;
	nets->n = 0;
	for (item = strtok_r(copy, ", ", &save); item != NULL; item = strtok_r(NULL, ", ", &save))
	{
		AllowedNetwork *net = &nets->net[nets->n];
		char	   *slash = strchr(item, '/');
		int			max_bits;

		if (slash != NULL)
			*slash = '\0';
		memset(net, 0, sizeof(*net));
		if (inet_pton(AF_INET, item, net->addr) == 1)
			net->family = AF_INET, max_bits = 32;
		else if (inet_pton(AF_INET6, item, net->addr) == 1)
			net->family = AF_INET6, max_bits = 128;
		else
		{
			GUC_check_errdetail("\"%s\" is not an IPv4 or IPv6 address.", item);
			free(nets);
			pfree(copy);
			return false;
		}
		net->bits = max_bits;
		if (slash != NULL)
		{
			char	   *end;
			long		bits = strtol(slash + 1, &end, 10);

			if (end == slash + 1 || *end != '\0' || bits < 0 || bits > max_bits)
			{
				GUC_check_errdetail("\"%s\" is not a prefix length for %s.", slash + 1, item);
				free(nets);
				pfree(copy);
				return false;
			}
			net->bits = (int) bits;
		}

		/*
		 * An IPv4-mapped network (::ffff:10.0.0.0/104) means the IPv4 one;
		 * a shorter prefix would reach far more than the writer meant.
		 */
		if (net->family == AF_INET6 && memcmp(net->addr, v4_mapped_prefix, 12) == 0)
		{
			if (net->bits < 96)
			{
				GUC_check_errdetail("\"%s/%d\" covers more than IPv4-mapped addresses; write the IPv4 network instead.",
									item, net->bits);
				free(nets);
				pfree(copy);
				return false;
			}
			memmove(net->addr, net->addr + 12, 4);
			memset(net->addr + 4, 0, 12);
			net->family = AF_INET;
			net->bits -= 96;
			max_bits = 32;
		}
		/* host bits must be zero, as for the cidr type: 10.1.2.3/8 is likely a typo */
		for (int bit = net->bits; bit < max_bits; bit++)
		{
			if (net->addr[bit / 8] & (0x80 >> (bit % 8)))
			{
				GUC_check_errdetail("\"%s/%d\" has bits set to the right of the prefix length.",
									item, net->bits);
				free(nets);
				pfree(copy);
				return false;
			}
		}
		nets->n++;
	}
	pfree(copy);
	*extra = nets;
	return true;
}

void
sc_assign_allowed_networks(const char *newval, void *extra)
{
	allowed_networks = (AllowedNetworks *) extra;
}

/*
 * Whether the first bits of two addresses are equal.
 */
static bool
prefix_equal(const uint8 *a, const uint8 *b, int bits)
{
	int			whole = bits / 8;
	int			rest = bits % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	return rest == 0 || ((a[whole] ^ b[whole]) & (0xff << (8 - rest))) == 0;
}

/*
 * Whether smartconnector.allowed_private_addresses lets a webhook reach this
 * address.
 */
static bool
address_is_allowed(int family, const uint8 *addr)
{
	if (allowed_networks == NULL)
		return false;
	for (int i = 0; i < allowed_networks->n; i++)
	{
		const AllowedNetwork *net = &allowed_networks->net[i];

		if (net->family == family && prefix_equal(net->addr, addr, net->bits))
			return true;
	}
	return false;
}

/*
 * Is this an address a webhook must not reach (see above), and not one the
 * administrator allowed?  Writes the address as text for the error message.
 */
static bool
address_is_private(const struct sockaddr *sa, int family, char *text, size_t textlen)
{
	if (family == AF_INET)
	{
		const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

		inet_ntop(AF_INET, &in->sin_addr, text, textlen);
		return ipv4_is_private(ntohl(in->sin_addr.s_addr)) &&
			!address_is_allowed(AF_INET, (const uint8 *) &in->sin_addr);
	}
	else if (family == AF_INET6)
	{
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

		const uint8 *a = in6->sin6_addr.s6_addr;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, textlen);
		if (!ipv6_is_private(a))
			return false;
		/* ::ffff:a.b.c.d is a connection to a.b.c.d */
		if (memcmp(a, v4_mapped_prefix, 12) == 0)
			return !address_is_allowed(AF_INET, a + 12);
		return !address_is_allowed(AF_INET6, a);
	}
	strlcpy(text, "(unknown address family)", textlen);
	return true;
}

/*
 * curl's open-socket callback: the last moment before connecting, after name
 * resolution, so no DNS trick can slip a private address past it.
 */
static curl_socket_t
open_socket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	Transfer   *t = (Transfer *) clientp;
	char		text[INET6_ADDRSTRLEN + 1];
	curl_socket_t fd;

	if (t->is_webhook && sc_block_private_addresses &&
		address_is_private(&address->addr, address->family, text, sizeof(text)))
	{
		strlcpy(t->blocked, text, sizeof(t->blocked));
		return CURL_SOCKET_BAD;
	}
	/* counted against max_files_per_process, as every file the backend opens */
	if (!AcquireExternalFD())
	{
		t->no_fd = true;
		return CURL_SOCKET_BAD;
	}
	fd = socket(address->family, address->socktype, address->protocol);
	if (fd == CURL_SOCKET_BAD)
		ReleaseExternalFD();
	else
		t->opened++;
	return fd;
}

/*
 * curl's close-socket callback, for the sockets open_socket_cb opened (a
 * pooled connection may outlive its transfer: no transfer data here).
 */
static int
close_socket_cb(void *clientp, curl_socket_t fd)
{
	int			rc = close(fd);

	ReleaseExternalFD();
	return rc;
}

#if SC_CURL_HAS_PREREQ
/*
 * curl's pre-request callback: a reused connection opens no socket, so the
 * address it is connected to is checked again before every request.
 */
static int
prereq_cb(void *clientp, char *conn_primary_ip, char *conn_local_ip,
		  int conn_primary_port, int conn_local_port)
{
	Transfer   *t = (Transfer *) clientp;
	struct sockaddr_storage ss;
	char		text[INET6_ADDRSTRLEN + 1];

	if (!t->is_webhook || !sc_block_private_addresses)
		return CURL_PREREQFUNC_OK;
	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, conn_primary_ip, &((struct sockaddr_in *) &ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, conn_primary_ip, &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	if (address_is_private((struct sockaddr *) &ss, ss.ss_family, text, sizeof(text)))
	{
		strlcpy(t->blocked, text, sizeof(t->blocked));
		return CURL_PREREQFUNC_ABORT;
	}
	return CURL_PREREQFUNC_OK;
}
#endif

/*
 * Keep the first SC_MAX_STORED_RESPONSE bytes of a response; accept the rest.
 * (Allocation here cannot fail softly, but the buffer is capped and
 * preallocated, so it never grows.)
 */
static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	Transfer   *t = (Transfer *) userp;
	size_t		n = size * nmemb;
	size_t		room = SC_MAX_STORED_RESPONSE - t->response.len;

	if (room > 0)
	{
		size_t		take = Min(n, room);

		memcpy(t->response.data + t->response.len, data, take);
		t->response.len += take;
		t->response.data[t->response.len] = '\0';
	}
	return n;
}

/*
 * Pick Retry-After (seconds or an HTTP date) out of the response headers.
 */
static size_t
header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	Transfer   *t = (Transfer *) userp;
	size_t		n = size * nmemb;
	char		value[128];

	if (n > 12 && n < sizeof(value) + 12 && pg_strncasecmp(data, "retry-after:", 12) == 0)
	{
		char	   *end;
		long		seconds;

		memcpy(value, data + 12, n - 12);
		value[n - 12] = '\0';
		seconds = strtol(value, &end, 10);
		if (end != value && seconds >= 0)
			t->retry_after_s = (int) Min(seconds, 86400L);
		else
		{
			time_t		when = curl_getdate(value, NULL);

			if (when > 0)
			{
				long		delta = (long) (when - time(NULL));

				t->retry_after_s = (int) Max(0L, Min(delta, 86400L));
			}
		}
	}
	return n;
}

/*
 * Feed an email message to curl's SMTP upload.
 */
static size_t
read_cb(char *buffer, size_t size, size_t nitems, void *userp)
{
	Transfer   *t = (Transfer *) userp;
	size_t		room = size * nitems;
	size_t		left = t->upload_len - t->upload_pos;
	size_t		take = Min(room, left);

	memcpy(buffer, t->upload + t->upload_pos, take);
	t->upload_pos += take;
	return take;
}

/*
 * A transfer with its own memory context and the options common to all.
 */
static Transfer *
new_transfer(int64 delivery_id, TimestampTz due_at, const char *host, bool is_webhook)
{
	MemoryContext cxt = AllocSetContextCreate(transport_cxt, "smartconnector transfer",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Transfer   *t = palloc0(sizeof(Transfer));

	t->cxt = cxt;
	t->delivery_id = delivery_id;
	t->due_at = due_at;
	t->is_webhook = is_webhook;
	t->host = pstrdup(host);
	t->retry_after_s = -1;
	initStringInfo(&t->response);
	enlargeStringInfo(&t->response, SC_MAX_STORED_RESPONSE + 1);
	MemoryContextSwitchTo(old);

	t->easy = curl_easy_init();
	if (t->easy == NULL)
		elog(ERROR, "curl_easy_init failed");
	curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long) sc_webhook_timeout_ms);
	curl_easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(t->easy, CURLOPT_PROXY, "");	/* ignore *_proxy variables */
	curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETFUNCTION, open_socket_cb);
	curl_easy_setopt(t->easy, CURLOPT_OPENSOCKETDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETFUNCTION, close_socket_cb);
	curl_easy_setopt(t->easy, CURLOPT_CLOSESOCKETDATA, NULL);
#if SC_CURL_HAS_PREREQ
	curl_easy_setopt(t->easy, CURLOPT_PREREQFUNCTION, prereq_cb);
	curl_easy_setopt(t->easy, CURLOPT_PREREQDATA, t);
#else
	if (is_webhook && sc_block_private_addresses)
		curl_easy_setopt(t->easy, CURLOPT_FORBID_REUSE, 1L);
#endif
	curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
	return t;
}

/*
 * Start posting a webhook.  headers are "Name: value" strings.
 */
void
sc_transport_add_webhook(int64 delivery_id, TimestampTz due_at, const char *host,
						 const char *url, const char *body, List *headers)
{
	Transfer   *t = new_transfer(delivery_id, due_at, host, true);
	MemoryContext old = MemoryContextSwitchTo(t->cxt);
	char	   *copy = pstrdup(body);
	ListCell   *lc;

	bool		built = true;

	MemoryContextSwitchTo(old);
	foreach(lc, headers)
		built = built && append_line(&t->headers, (char *) lfirst(lc));
	built = built && append_line(&t->headers, "Expect:");

	curl_easy_setopt(t->easy, CURLOPT_URL, url);
	allow_protocols(t->easy, true);
	curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, copy);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(copy));
	curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
	start_transfer(t, built);
}

/*
 * Start sending an email over SMTP (smartconnector.smtp_url).
 */
void
sc_transport_add_email(int64 delivery_id, TimestampTz due_at, const char *to,
					   const char *message)
{
	Transfer   *t = new_transfer(delivery_id, due_at, "smtp", false);
	MemoryContext old = MemoryContextSwitchTo(t->cxt);
	char	   *from = psprintf("<%s>", sc_smtp_from);
	char	   *rcpt = psprintf("<%s>", to);
	bool		has_credentials;
	bool		built;

	t->upload = pstrdup(message);
	t->upload_len = strlen(message);
	MemoryContextSwitchTo(old);
	built = append_line(&t->recipients, rcpt);

	curl_easy_setopt(t->easy, CURLOPT_URL, sc_smtp_url);
	allow_protocols(t->easy, false);
	curl_easy_setopt(t->easy, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(t->easy, CURLOPT_MAIL_RCPT, t->recipients);
	curl_easy_setopt(t->easy, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(t->easy, CURLOPT_READFUNCTION, read_cb);
	curl_easy_setopt(t->easy, CURLOPT_READDATA, t);
	curl_easy_setopt(t->easy, CURLOPT_INFILESIZE, (long) t->upload_len);
	/*
	 * smtps:// is TLS from the start.  On smtp:// STARTTLS is used when the
	 * server offers it; with credentials it is required (curl then refuses to
	 * go on without it, before AUTH), unless plain text was allowed for a
	 * trusted relay.
	 */
	if (sc_smtp_user != NULL && sc_smtp_user[0] != '\0')
	{
		curl_easy_setopt(t->easy, CURLOPT_USERNAME, sc_smtp_user);
		curl_easy_setopt(t->easy, CURLOPT_PASSWORD, sc_smtp_password ? sc_smtp_password : "");
		has_credentials = true;
	}
	else
		has_credentials = smtp_url_has_credentials;
	if (pg_strncasecmp(sc_smtp_url, "smtps://", 8) != 0)
		curl_easy_setopt(t->easy, CURLOPT_USE_SSL,
						 (long) (has_credentials && !sc_smtp_allow_plaintext_auth ?
								 CURLUSESSL_ALL : CURLUSESSL_TRY));
	start_transfer(t, built);
}

/*
 * Append a line to a curl list; false if curl could not (out of memory),
 * which leaves the list as it was.
 */
static bool
append_line(struct curl_slist **list, const char *line)
{
	struct curl_slist *longer = curl_slist_append(*list, line);

	if (longer == NULL)
		return false;
	*list = longer;
	return true;
}

/*
 * Hand a transfer to curl; one that could not be built (built false) or
 * that curl does not take fails at once, as an attempt that is retried.
 */
static void
start_transfer(Transfer *t, bool built)
{
	MemoryContext old = MemoryContextSwitchTo(transport_cxt);
	CURLMcode	rc;

	transfers = lappend(transfers, t);
	MemoryContextSwitchTo(old);
	if (!built)
	{
		strlcpy(t->errbuf, "out of memory building the request", sizeof(t->errbuf));
		finish_transfer(t, CURLE_OUT_OF_MEMORY);
		return;
	}
	rc = curl_multi_add_handle(multi, t->easy);
	if (rc != CURLM_OK)
	{
		strlcpy(t->errbuf, curl_multi_strerror(rc), sizeof(t->errbuf));
		finish_transfer(t, CURLE_FAILED_INIT);
	}
}

/*
 * A transfer ended: turn it into a result and free everything it held.
 */
static void
finish_transfer(Transfer *t, CURLcode code)
{
	MemoryContext old = MemoryContextSwitchTo(transport_cxt);
	ScTransferResult *r = palloc0(sizeof(ScTransferResult));
	long		status = 0;

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	r->delivery_id = t->delivery_id;
	r->due_at = t->due_at;
	r->finished_at = GetCurrentTimestamp();
	r->status = (int) status;
	r->retry_after_s = t->retry_after_s;
	if (t->response.len > 0)
		r->response = pstrdup(t->response.data);

	/*
	 * Decided by the outcome: a name may resolve to a refused address and an
	 * allowed one, and curl goes on to the next address after a refusal.  A
	 * failure is permanent only if every address tried was refused.
	 */
	if (code != CURLE_OK && t->blocked[0] != '\0' && t->opened == 0)
	{
		r->error = psprintf("refused to connect to private address %s (smartconnector.block_private_addresses is on)",
							t->blocked);
		r->permanent = true;
	}
	else if (code != CURLE_OK && t->blocked[0] != '\0')
		r->error = psprintf("%s%s%s (and refused private address %s)", curl_easy_strerror(code),
							t->errbuf[0] ? ": " : "", t->errbuf, t->blocked);
	else if (code != CURLE_OK && t->no_fd)
		r->error = psprintf("%s: no file descriptor left for a connection (max_files_per_process)",
							curl_easy_strerror(code));
	else if (code == CURLE_USE_SSL_FAILED && !t->is_webhook)
		r->error = psprintf("%s: the SMTP server does not offer STARTTLS, and credentials are not sent without TLS (smartconnector.smtp_allow_plaintext_auth is off)",
							curl_easy_strerror(code));
	else if (code != CURLE_OK)
		r->error = psprintf("%s%s%s", curl_easy_strerror(code),
							t->errbuf[0] ? ": " : "", t->errbuf);
	else if (t->is_webhook && (status < 200 || status > 299))
		r->error = psprintf("HTTP status %ld", status);
	else
		r->ok = true;
	results = lappend(results, r);
	MemoryContextSwitchTo(old);

	curl_multi_remove_handle(multi, t->easy);
	curl_easy_cleanup(t->easy);
	curl_slist_free_all(t->headers);
	curl_slist_free_all(t->recipients);
	transfers = list_delete_ptr(transfers, t);
	MemoryContextDelete(t->cxt);
}

/*
 * Turn every transfer curl reports done into a result.
 */
static void
collect_done(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		Transfer   *t = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		if (t != NULL)
			finish_transfer(t, msg->data.result);
	}
}

/*
 * Wait up to timeout_ms for the latch, postmaster death or curl socket
 * activity, and let curl make progress.  Returns true if the latch was set
 * (it is reset here).
 */
bool
sc_transport_wait(long timeout_ms)
{
	WaitEvent	events[64];
	int			nevents;
	int			running;
	bool		latch_set = false;
	long		curl_ms = -1;

	if (watches_dirty || wait_set == NULL)
	{
		if (wait_set != NULL)
			FreeWaitEventSet(wait_set);
		wait_set = CreateWaitEventSet(transport_cxt, 2 + n_watches);
		AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (int i = 0; i < n_watches; i++)
		{
			SocketWatch *w = &watches[i];
			uint32		ev = 0;

			if (w->what & CURL_POLL_IN)
				ev |= WL_SOCKET_READABLE;
			if (w->what & CURL_POLL_OUT)
				ev |= WL_SOCKET_WRITEABLE;
			AddWaitEventToSet(wait_set, ev, w->fd, NULL, NULL);
		}
		watches_dirty = false;
	}

	if (timer_deadline != 0)
	{
		long		secs;
		int			usecs;

		TimestampDifference(GetCurrentTimestamp(), timer_deadline, &secs, &usecs);
		curl_ms = secs * 1000 + (usecs + 999) / 1000;
		if (GetCurrentTimestamp() >= timer_deadline)
			curl_ms = 0;
		timeout_ms = (timeout_ms < 0) ? curl_ms : Min(timeout_ms, curl_ms);
	}

	nevents = WaitEventSetWait(wait_set, timeout_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	for (int i = 0; i < nevents; i++)
	{
		WaitEvent  *e = &events[i];

		if (e->events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (e->events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			flags = 0;

			if (e->events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (e->events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			curl_multi_socket_action(multi, e->fd, flags, &running);
		}
	}
	if (timer_deadline != 0 && GetCurrentTimestamp() >= timer_deadline)
	{
		timer_deadline = 0;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	collect_done();
	return latch_set;
}

/*
 * The transfers that finished since the last call, in transport memory;
 * the caller frees them with sc_transport_free_results().
 */
List *
sc_transport_take_results(void)
{
	List	   *r = results;

	results = NIL;
	return r;
}

void
sc_transport_free_results(List *r)
{
	ListCell   *lc;

	foreach(lc, r)
	{
		ScTransferResult *res = (ScTransferResult *) lfirst(lc);

		if (res->error)
			pfree(res->error);
		if (res->response)
			pfree(res->response);
		pfree(res);
	}
	list_free(r);
}
