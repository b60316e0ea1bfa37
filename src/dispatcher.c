/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		The dispatcher background worker: sends completion webhooks and
 *		emails from the outbox (smartconnector.delivery), records every
 *		attempt, and retries on smartconnector.webhook_retry_schedule.
 *
 * Loop: wait (latch, curl sockets, curl's timer, the next due retry), hand
 * ready requests to the transport (transport.c) as connections free up, and now
 * and then run a short transaction that records the attempts that finished
 * and, when the ready list is empty, fetches the next batch of due
 * deliveries.  Batches are read with a cursor that continues from the last
 * fetched (next_attempt_at, id), so the cost of a fetch does not grow with
 * what was delivered before; finished attempts are recorded in groups (64
 * at a time, or after RECORD_DELAY_MS, or when nothing is in flight), so a
 * fast receiver costs a commit per group, not per delivery.  No transaction
 * is open while the network is used.  The latch is set at the commit of
 * every transaction that queued a delivery, so a completion is sent within a
 * loop turn; the loop never sleeps while something due is not in flight.
 *
 * Delivery is at least once: a crash between sending and recording sends
 * again after restart, with the same webhook-id.
 *
 * A user's open transaction never stalls the dispatcher: a delivery whose
 * row someone holds locked (an uncommitted redeliver(), a DELETE, a SELECT
 * FOR UPDATE) is passed over, never waited for.  Its attempt's result is
 * held in memory (and the row not fetched again) and recorded once the row
 * is free, if the row is still as it was fetched; if the holder changed it
 * (a redeliver() that committed), the change wins and the result is
 * dropped.  Held results are retried every HELD_RETRY_MS.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

/* Wake at least this often even with nothing due (a safety net only) */
#define DISPATCHER_MAX_NAP_MS	60000
/* Due deliveries read per fetch, and kept ready per host at most */
#define FETCH_BATCH				256
#define FETCH_PER_HOST			256
/* While every ready request waits for a busy host, look for other hosts' work this often */
#define BLOCKED_FETCH_MS		50
/* Record finished attempts in groups of this many, or after this long */
#define RECORD_GROUP			64
/* Most attempts recorded in one statement (it finds each row's values in arrays of this size) */
#define RECORD_MAX				256
#define RECORD_DELAY_MS			5
/* Retry recording the results of rows that a user's transaction holds locked this often */
#define HELD_RETRY_MS			1000
/*
 * Fetch at most once per this long: under a stream of completions every
 * commit wakes the dispatcher, and a turn per delivery cost more in
 * statement setup than the deliveries themselves.  An idle dispatcher
 * fetches at once.
 */
#define FETCH_INTERVAL_MS		1
/* next_attempt_at of emails held while smartconnector.smtp_url is empty */
#define PARKED_AT				"'9999-12-31 00:00:00+00'::timestamptz"

/* The memory of one fetched batch, freed when its last request has started */
typedef struct ReadyBatch
{
	MemoryContext cxt;
	int			live;
} ReadyBatch;

/*
 * A due delivery with its request built, waiting for a free connection.
 * A webhook is signed when it starts (start_ready), so webhook-timestamp
 * says when it was sent, however long it waited behind a busy host.
 */
typedef struct ReadyDelivery
{
	ReadyBatch *batch;
	int64		id;
	TimestampTz due_at;			/* its next_attempt_at, which its result is recorded against */
	bool		is_webhook;
	char	   *host;
	char	   *target;
	char	   *body;			/* UTF-8 JSON body, or the whole email message */
	char	   *msg_id;			/* webhook-id */
	char	   *secret;			/* the delivery's webhook_secret, or NULL */
	List	   *headers;		/* the delivery's webhook_headers, as curl lines */
} ReadyDelivery;

static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr due_plan = NULL;
static SPIPlanPtr park_plan = NULL;
static SPIPlanPtr unpark_plan = NULL;
static bool unpark_needed = true;	/* release held emails once smtp_url is set */
static MemoryContext ready_cxt = NULL;	/* the ready list; batches are its children */
static ResourceOwner sign_owner = NULL;	/* holds the HMAC contexts of signing */
static List *ready = NIL;		/* ReadyDelivery *, in fetch order */
static List *held = NIL;		/* ScTransferResult * of rows found locked, in TopMemoryContext */
static TimestampTz cursor_at = DT_NOBEGIN;	/* last fetched (next_attempt_at, id) */
static int64 cursor_id = 0;
static bool last_fetch_empty = false;	/* it found nothing due after the cursor */
static TimestampTz last_fetch_at = 0;

static void dispatcher_detach(int code, Datum arg);
static List *record_results(List *results);
static bool is_held(int64 id);
static TimestampTz fetch_due(void);
static int	ready_for_host(List *list, const char *host);
static void drop_ready_emails(void);
static void forget_outbox(void);
static bool is_ready(int64 id);
static bool ready_blocked(void);
static bool ready_can_start(void);
static long ms_until(TimestampTz now, TimestampTz then);
static void start_ready(void);
static char *replace_invalid(const char *s, int enc);
static char *valid_text(const char *s);
static char *to_utf8(char *s);
static List *header_lines(Datum headers);
static bool emails_enabled(void);

/*
 * Milliseconds from now until then, rounded up; 0 if then has passed.
 */
static long
ms_until(TimestampTz now, TimestampTz then)
{
	if (then <= now)
		return 0;
	return (long) ((then - now + 999) / 1000);
}

/*
 * s with every byte that does not begin a valid character of encoding enc
 * replaced by '?'.
 */
static char *
replace_invalid(const char *s, int enc)
{
	int			len = strlen(s);
	char	   *out = pstrdup(s);

	for (int pos = 0; pos < len;)
	{
		int			l = pg_encoding_verifymbchar(enc, out + pos, len - pos);

		if (l <= 0)
		{
			out[pos] = '?';
			l = 1;
		}
		pos += l;
	}
	return out;
}

/*
 * A receiver's response as text the database accepts: bytes that are not
 * valid in the database encoding become '?'.
 */
static char *
valid_text(const char *s)
{
	return replace_invalid(s, GetDatabaseEncoding());
}

/*
 * Text from the database as UTF-8, which is what payloads and emails are
 * labelled.  In a UTF-8 database it is already; in SQL_ASCII the bytes are
 * kept where they are valid UTF-8; otherwise it is converted.  Never fails:
 * a character without a UTF-8 form (a few exist in the Asian encodings)
 * must not keep a delivery, let alone the whole fetch, from going out, so
 * then the non-ASCII bytes become '?'.  The conversion runs in a
 * subtransaction, which only non-UTF-8 databases pay for.
 */
static char *
to_utf8(char *s)
{
	int			enc = GetDatabaseEncoding();
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile out = NULL;

	if (s == NULL || enc == PG_UTF8)
		return s;
	if (enc == PG_SQL_ASCII)
		return replace_invalid(s, PG_UTF8);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		out = pg_server_to_any(s, strlen(s), PG_UTF8);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		out = pstrdup(s);
		for (char *p = out; *p; p++)
		{
			if (IS_HIGHBIT_SET(*p))
				*p = '?';
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return out;
}

/*
 * A delivery's webhook_headers as curl header lines, in name order.  An
 * empty value (or one of white space only, which HTTP trims away) is
 * written "Name;", curl's way to send "Name:": given as "Name:" it would
 * drop the header instead.
 */
static List *
header_lines(Datum headers)
{
	Jsonb	   *jb = DatumGetJsonbP(headers);
	JsonbIterator *it = JsonbIteratorInit(&jb->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *lines = NIL;
	char	   *name = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			name = to_utf8(pnstrdup(v.val.string.val, v.val.string.len));
		else if (tok == WJB_VALUE && name != NULL && v.type == jbvString)
		{
			char	   *value = pnstrdup(v.val.string.val, v.val.string.len);

			if (value[strspn(value, " \t")] == '\0')
				lines = lappend(lines, psprintf("%s;", name));
			else
				lines = lappend(lines, psprintf("%s: %s", name, to_utf8(value)));
			name = NULL;
		}
	}
	return lines;
}

/*
 * Whether emails can be sent.  With smartconnector.smtp_url empty they
 * are held: the fetch parks them (next_attempt_at = PARKED_AT, attempts
 * untouched) so that no sweep reads them again, and they are released
 * when smtp_url is set.
 */
static bool
emails_enabled(void)
{
	return sc_smtp_url != NULL && sc_smtp_url[0] != '\0';
}

/*
 * Register the dispatcher with the postmaster (from _PG_init).  It starts
 * only once the server accepts writes, so never on a standby: a promoted
 * standby starts it and sends what the old primary left pending.
 */
void
sc_register_dispatcher(void)
{
	BackgroundWorker worker;

	sc_fill_worker(&worker, "sc_dispatcher_main", "smartconnector dispatcher",
				   "smartconnector dispatcher");
	worker.bgw_restart_time = 1;
	RegisterBackgroundWorker(&worker);
}

/*
 * before_shmem_exit: close every connection and free curl's handles.
 */
static void
dispatcher_detach(int code, Datum arg)
{
	sc_transport_shutdown();
}

/*
 * Record a group of finished attempts in one statement (the arrays are
 * parallel, one element per attempt).  A failed attempt is retried after
 * the next delay of the schedule (delays in ms), or after Retry-After if
 * that is longer; once the schedule is used up, or for a permanent failure
 * (a refused private address), the delivery fails.
 *
 * An attempt is recorded only on the row as it was fetched (pending, with
 * the same next_attempt_at): a redeliver() committed meanwhile wins.
 *
 * The plan is made once, often on an empty outbox, so it must not depend
 * on what the statistics said then: every statement here reads one table,
 * by primary key (id = ANY), and takes each attempt's values from the
 * arrays by the row's position; no join is left to plan.  A join with the
 * unnested arrays, planned on an empty table, rescanned them per row and
 * walked the whole partial index of pending rows per group (what a burst
 * of redeliver() on a server with history paid: 0.6 ms a delivery).  For
 * the same reason "pending" is checked on the rows locked by key, not by a
 * condition the partial index would answer.  Rows
 * another transaction holds locked are skipped, not waited for; returns
 * the results of those, for a later try (the caller keeps them, and frees
 * the others).
 */
static List *
record_results(List *results)
{
	Oid			types[10] = {INT8ARRAYOID, BOOLARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, BOOLARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID};
	SPIPlanPtr	plan;
	int			n = list_length(results);
	Datum	   *ids, *oks, *ats, *statuses, *errors, *responses, *retries, *perms, *delays, *dues;
	bool	   *status_nulls, *error_nulls, *response_nulls;
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Datum		args[10];
	int			i = 0;
	int			ret;
	ListCell   *lc;
	List	   *locked = NIL;

	if (results == NIL)
		return NIL;
	if (n > RECORD_MAX)
	{
		/* in statements of RECORD_MAX: the arrays are searched per row */
		List	   *part = NIL;

		foreach(lc, results)
		{
			part = lappend(part, lfirst(lc));
			if (list_length(part) == RECORD_MAX || lnext(results, lc) == NULL)
			{
				locked = list_concat(locked, record_results(part));
				list_free(part);
				part = NIL;
			}
		}
		return locked;
	}
	plan = sc_keep_plan(&record_plan,
		"WITH mine AS ("
		"  SELECT d.id, d.state FROM smartconnector.delivery d"
		"   WHERE d.id = ANY ($1) FOR UPDATE SKIP LOCKED),"
		" recorded AS ("
		" UPDATE smartconnector.delivery d"
		"   SET attempts = d.attempts + 1,"
		"       last_attempt_at = ($3)[array_position($1, d.id)],"
		"       last_status = ($4)[array_position($1, d.id)],"
		"       last_error = ($5)[array_position($1, d.id)],"
		"       last_response = ($6)[array_position($1, d.id)],"
		"       state = CASE WHEN ($2)[array_position($1, d.id)] THEN 'delivered'"
		"                    WHEN ($8)[array_position($1, d.id)]"
		"                      OR d.attempts + 1 > coalesce(array_length($9, 1), 0)"
		"                    THEN 'failed'"
		"                    ELSE 'pending' END,"
		"       delivered_at = CASE WHEN ($2)[array_position($1, d.id)]"
		"                           THEN ($3)[array_position($1, d.id)] END,"
		"       latency_ms = CASE WHEN ($2)[array_position($1, d.id)]"
		"                         THEN extract(epoch FROM ($3)[array_position($1, d.id)] - d.created_at) * 1000 END,"
		"       next_attempt_at = CASE"
		"            WHEN ($2)[array_position($1, d.id)] OR ($8)[array_position($1, d.id)]"
		"              OR d.attempts + 1 > coalesce(array_length($9, 1), 0)"
		"            THEN d.next_attempt_at"
		"            ELSE ($3)[array_position($1, d.id)]"
		"                 + GREATEST(($9)[d.attempts + 1],"
		"                            coalesce(($7)[array_position($1, d.id)], 0)::bigint * 1000)"
		"                   * interval '1 millisecond' END"
		" WHERE d.id = ANY (ARRAY(SELECT mine.id FROM mine WHERE mine.state = 'pending'))"
		"   AND d.next_attempt_at = ($10)[array_position($1, d.id)])"
		" SELECT d.id FROM smartconnector.delivery d"
		"  WHERE d.id = ANY ($1) AND d.id <> ALL (ARRAY(SELECT mine.id FROM mine))",
		10, types);

	ids = palloc(sizeof(Datum) * n);
	oks = palloc(sizeof(Datum) * n);
	ats = palloc(sizeof(Datum) * n);
	statuses = palloc(sizeof(Datum) * n);
	errors = palloc(sizeof(Datum) * n);
	responses = palloc(sizeof(Datum) * n);
	retries = palloc(sizeof(Datum) * n);
	perms = palloc(sizeof(Datum) * n);
	dues = palloc(sizeof(Datum) * n);
	status_nulls = palloc0(sizeof(bool) * n);
	error_nulls = palloc0(sizeof(bool) * n);
	response_nulls = palloc0(sizeof(bool) * n);
	foreach(lc, results)
	{
		ScTransferResult *r = (ScTransferResult *) lfirst(lc);

		ids[i] = Int64GetDatum(r->delivery_id);
		oks[i] = BoolGetDatum(r->ok);
		ats[i] = TimestampTzGetDatum(r->finished_at);
		statuses[i] = Int32GetDatum(r->status);
		status_nulls[i] = (r->status == 0);
		errors[i] = r->error ? CStringGetTextDatum(r->error) : (Datum) 0;
		error_nulls[i] = (r->error == NULL);
		responses[i] = r->response ? CStringGetTextDatum(valid_text(r->response)) : (Datum) 0;
		response_nulls[i] = (r->response == NULL);
		retries[i] = Int32GetDatum(Max(r->retry_after_s, 0));
		perms[i] = BoolGetDatum(r->permanent);
		dues[i] = TimestampTzGetDatum(r->due_at);
		i++;
	}
	delays = palloc(sizeof(Datum) * Max(sc_retry_schedule_len, 1));
	for (int k = 0; k < sc_retry_schedule_len; k++)
		delays[k] = Int64GetDatum(sc_retry_schedule_ms[k]);

	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(oks, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	args[2] = PointerGetDatum(construct_array(ats, n, TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_md_array(statuses, status_nulls, 1, dims, lbs,
												 INT4OID, 4, true, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_md_array(errors, error_nulls, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_md_array(responses, response_nulls, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[6] = PointerGetDatum(construct_array(retries, n, INT4OID, 4, true, TYPALIGN_INT));
	args[7] = PointerGetDatum(construct_array(perms, n, BOOLOID, 1, true, TYPALIGN_CHAR));
	args[8] = PointerGetDatum(sc_retry_schedule_len > 0 ?
							  construct_array(delays, sc_retry_schedule_len, INT8OID, 8, true, TYPALIGN_DOUBLE) :
							  construct_empty_array(INT8OID));
	args[9] = PointerGetDatum(construct_array(dues, n, TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE));
	ret = SPI_execute_plan(plan, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not record delivery attempts: %s", SPI_result_code_string(ret));

	/* the rows someone else holds: their results wait */
	for (uint64 k = 0; k < SPI_processed; k++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k],
													 SPI_tuptable->tupdesc, 1, &isnull));

		foreach(lc, results)
		{
			if (((ScTransferResult *) lfirst(lc))->delivery_id == id)
			{
				locked = lappend(locked, lfirst(lc));
				break;
			}
		}
	}
	return locked;
}

/*
 * Whether a delivery's result is held, waiting for its row to be free.
 */
static bool
is_held(int64 id)
{
	ListCell   *lc;

	foreach(lc, held)
	{
		if (((ScTransferResult *) lfirst(lc))->delivery_id == id)
			return true;
	}
	return false;
}

static int
compare_hosts(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * The hosts that have FETCH_PER_HOST deliveries ready, as a text[], for the
 * fetch to pass over in SQL.  Skipped after reading instead, the rows of a
 * host that never answers filled every batch: the sweep walked its whole
 * backlog, one batch per BLOCKED_FETCH_MS, before it reached the other
 * hosts' rows again, and a host at 100 ms was delivered to at 0.31 of its
 * rate alone (bench/slow_hosts.sh).
 */
static Datum
full_hosts(void)
{
	int			n = list_length(ready);
	char	  **hosts = palloc(sizeof(char *) * Max(n, 1));
	Datum	   *full = palloc(sizeof(Datum) * Max(n, 1));
	int			n_full = 0;
	int			i = 0;
	ListCell   *lc;

	foreach(lc, ready)
		hosts[i++] = ((ReadyDelivery *) lfirst(lc))->host;
	qsort(hosts, n, sizeof(char *), compare_hosts);
	for (int start = 0; start < n; start = i)
	{
		for (i = start + 1; i < n && strcmp(hosts[i], hosts[start]) == 0; i++)
			;
		if (i - start >= FETCH_PER_HOST)
			full[n_full++] = CStringGetTextDatum(hosts[start]);
	}
	return PointerGetDatum(construct_array(full, n_full, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Read the next batch of due deliveries after the cursor into the ready
 * list, building each request (signature, headers, email message) now,
 * inside the transaction.  A host that already has FETCH_PER_HOST ready is
 * passed over this sweep (full_hosts()); the next sweep picks its rows up.
 * Returns when the next not-yet-due delivery becomes due (0 if none).
 */
static TimestampTz
fetch_due(void)
{
	Oid			types[6] = {TIMESTAMPTZOID, INT8OID, INT4OID, TIMESTAMPTZOID, BOOLOID, TEXTARRAYOID};
	Datum		args[6];
	SPIPlanPtr	plan;
	int			ret;
	TimestampTz next_due = 0;
	uint64		fetched = 0;
	/* a sweep that began past the head has not looked at everything yet */
	bool		from_head = cursor_at == DT_NOBEGIN && cursor_id == 0;
	int			ready_added;
	MemoryContext old;
	ReadyBatch *batch;
	MemoryContext batch_cxt;
	List	   *added = NIL;	/* this batch's ReadyDelivery *, for the ready list */
	List	   *parked = NIL;	/* ids of emails to hold */
	TimestampTz new_cursor_at = cursor_at;
	int64		new_cursor_id = cursor_id;
	bool		emails = emails_enabled();

	if (emails && unpark_needed)
	{
		/*
		 * smtp_url is set (again): release the emails held while it was not.
		 * Rows a user's transaction holds locked are left for the next
		 * fetch (the statement says whether any were).
		 */
		bool		isnull;

		if (SPI_execute_plan(sc_keep_plan(&unpark_plan,
			"WITH parked AS ("
			"  SELECT d.id FROM smartconnector.delivery d"
			"   WHERE d.state = 'pending' AND d.channel = 'email'"
			"     AND d.next_attempt_at >= " PARKED_AT
			"     FOR UPDATE SKIP LOCKED),"
			" released AS ("
			"  UPDATE smartconnector.delivery d SET next_attempt_at = clock_timestamp()"
			"    FROM parked WHERE d.id = parked.id)"
			" SELECT EXISTS (SELECT 1 FROM smartconnector.delivery d"
			"                 WHERE d.state = 'pending' AND d.channel = 'email'"
			"                   AND d.next_attempt_at >= " PARKED_AT
			"                   AND d.id NOT IN (SELECT parked.id FROM parked))",
			0, NULL), NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not release held emails");
		unpark_needed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
	}

	/*
	 * Up to FETCH_BATCH due deliveries after the cursor ($1, $2) in
	 * (next_attempt_at, id) order, with all it takes to build the requests;
	 * one extra row, with id NULL, says when the next not-yet-due delivery
	 * becomes due.  Continuing from the cursor instead of the head of the
	 * index skips the entries that delivered rows leave there until vacuum.
	 * "Now" is a parameter ($4): only a value can bound the index scan.
	 * Hosts with enough ready ($6) are passed over.
	 * Emails are not built while there is no SMTP server ($5 false): they
	 * are parked below.
	 *
	 * Credentials: a webhook carries those of its own URL.  While the
	 * connector still posts to that URL, they are the connector's current
	 * ones (a rotated secret or token applies to pending retries too);
	 * once it posts elsewhere, those the delivery was queued with, so that
	 * one receiver's credentials never reach another.
	 */
	plan = sc_keep_plan(&due_plan,
		"WITH due AS ("
		"  SELECT d.id, d.channel, d.target, d.target_host, d.webhook_id, d.payload,"
		"         d.execution_id, d.connector_id, d.webhook_secret, d.webhook_headers,"
		"         d.next_attempt_at"
		"    FROM smartconnector.delivery d"
		"   WHERE d.state = 'pending'"
		"     AND d.next_attempt_at <= $4"
		"     AND (d.next_attempt_at, d.id) > ($1, $2)"
		"     AND d.target_host <> ALL ($6)"
		"   ORDER BY d.next_attempt_at, d.id"
		"   LIMIT $3)"
		" SELECT due.id, due.channel, due.target, due.target_host, due.webhook_id,"
		"        CASE WHEN due.channel = 'webhook' THEN due.payload::text"
		"             WHEN $5 THEN (smartconnector_internal.email_text(due.payload)).body END,"
		"        CASE WHEN c.same THEN c.webhook_secret ELSE due.webhook_secret END,"
		"        CASE WHEN c.same THEN c.webhook_headers ELSE due.webhook_headers END,"
		"        CASE WHEN due.channel = 'email' AND $5"
		"             THEN (smartconnector_internal.email_text(due.payload)).subject END,"
		"        due.execution_id, due.next_attempt_at, NULL::timestamptz"
		"   FROM due"
		"   LEFT JOIN LATERAL (SELECT true AS same, x.webhook_secret, x.webhook_headers"
		"                        FROM smartconnector.connector x"
		"                       WHERE x.id = due.connector_id AND due.channel = 'webhook'"
		"                         AND x.execution_ended_webhook_url = due.target) c ON true"
		" UNION ALL"
		" SELECT NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,"
		"        NULL::jsonb, NULL::text, NULL::bigint, NULL::timestamptz,"
		"        (SELECT d.next_attempt_at FROM smartconnector.delivery d"
		"          WHERE d.state = 'pending' AND d.next_attempt_at > $4"
		"            AND d.next_attempt_at < " PARKED_AT
		"          ORDER BY d.next_attempt_at LIMIT 1)",
		6, types);
	args[0] = TimestampTzGetDatum(cursor_at);
	args[1] = Int64GetDatum(cursor_id);
	args[2] = Int32GetDatum(FETCH_BATCH);
	args[3] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[4] = BoolGetDatum(emails);
	args[5] = full_hosts();
	/* read_only = false: see the attempts recorded just before, in this transaction */
	ret = SPI_execute_plan(plan, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read due deliveries: %s", SPI_result_code_string(ret));

	/*
	 * The batch is built in transaction memory and joins the ready list only
	 * once it is complete: an error half way leaves neither a leak nor
	 * entries pointing into freed memory, nor a cursor past unsent rows.
	 */
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "smartconnector ready batch",
									  ALLOCSET_DEFAULT_SIZES);
	batch = MemoryContextAllocZero(batch_cxt, sizeof(ReadyBatch));
	batch->cxt = batch_cxt;
	old = MemoryContextSwitchTo(batch_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		ReadyDelivery *r;
		char	   *body;

		r = palloc0(sizeof(ReadyDelivery));
		r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		if (isnull)
		{
			Datum		d = SPI_getbinval(tup, desc, 12, &isnull);

			if (!isnull)
				next_due = DatumGetTimestampTz(d);
			pfree(r);
			continue;
		}
		fetched++;
		new_cursor_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 11, &isnull));
		new_cursor_id = r->id;
		r->due_at = new_cursor_at;
		r->host = SPI_getvalue(tup, desc, 4);
		r->batch = batch;
		if (sc_transport_has(r->id) || is_ready(r->id) || is_held(r->id) ||
			ready_for_host(ready, r->host) + ready_for_host(added, r->host) >= FETCH_PER_HOST)
			continue;

		r->is_webhook = (strcmp(SPI_getvalue(tup, desc, 2), "webhook") == 0);
		if (!r->is_webhook && !emails)
		{
			parked = lappend(parked, r);
			continue;
		}
		r->target = SPI_getvalue(tup, desc, 3);
		r->msg_id = SPI_getvalue(tup, desc, 5);
		body = to_utf8(SPI_getvalue(tup, desc, 6));
		if (r->is_webhook)
		{
			Datum		headers = SPI_getbinval(tup, desc, 8, &isnull);

			r->body = body;
			r->secret = SPI_getvalue(tup, desc, 7);
			if (!isnull)
				r->headers = header_lines(headers);
		}
		else
		{
			char	   *subject = to_utf8(SPI_getvalue(tup, desc, 9));
			int64		execution_id = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));

			r->body = sc_email_message(sc_smtp_from, r->target, subject, body, r->msg_id,
									   execution_id);
		}
		added = lappend(added, r);
		batch->live++;
	}

	if (parked != NIL)
	{
		Oid			park_types[1] = {INT8ARRAYOID};
		Datum		park_args[1];
		Datum	   *ids = palloc(sizeof(Datum) * list_length(parked));
		int			n = 0;
		ListCell   *lc;

		foreach(lc, parked)
			ids[n++] = Int64GetDatum(((ReadyDelivery *) lfirst(lc))->id);
		park_args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
		if (SPI_execute_plan(sc_keep_plan(&park_plan,
			"UPDATE smartconnector.delivery"
			"   SET next_attempt_at = CASE WHEN state = 'pending' THEN " PARKED_AT
			"                              ELSE next_attempt_at END"
			" WHERE id = ANY (ARRAY(SELECT d.id FROM smartconnector.delivery d"
			"                        WHERE d.id = ANY ($1) FOR UPDATE SKIP LOCKED))",
			1, park_types), park_args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not hold emails");
	}
	MemoryContextSwitchTo(old);

	ready_added = batch->live;
	if (batch->live == 0)
		MemoryContextDelete(batch_cxt);
	else
	{
		MemoryContextSetParent(batch_cxt, ready_cxt);
		old = MemoryContextSwitchTo(ready_cxt);
		ready = list_concat(ready, added);
		MemoryContextSwitchTo(old);
	}
	cursor_at = new_cursor_at;
	cursor_id = new_cursor_id;

	/*
	 * A short batch means the sweep reached the end: the next one starts
	 * from the head again, for what this one skipped (in flight, or its host
	 * had enough ready) and for what committed behind the cursor.
	 */
	if (fetched < FETCH_BATCH)
	{
		cursor_at = DT_NOBEGIN;
		cursor_id = 0;
	}
	/*
	 * Found nothing new to send in a sweep from the head: wait for a commit,
	 * a finished transfer or next_due.  One that began past the head looks
	 * again from the head first: with every host behind the cursor full (a
	 * host that never answers), the rows of the others are all before it,
	 * and waiting for a finished transfer stalled them until the dead
	 * host's attempts timed out (bench/slow_hosts.sh).
	 */
	last_fetch_empty = (ready_added == 0) && from_head;
	last_fetch_at = GetCurrentTimestamp();
	return next_due;
}

/*
 * Drop the emails from the ready list (smtp_url was emptied): they stay
 * pending, and the next fetch holds them.
 */
static void
drop_ready_emails(void)
{
	ListCell   *lc;

	foreach(lc, ready)
	{
		ReadyDelivery *r = (ReadyDelivery *) lfirst(lc);

		if (r->is_webhook)
			continue;
		ready = foreach_delete_current(ready, lc);
		if (--r->batch->live == 0)
			MemoryContextDelete(r->batch->cxt);
	}
	cursor_at = DT_NOBEGIN;
	cursor_id = 0;
}

/*
 * The extension was dropped: forget the ready list and the held results,
 * which name deliveries that are gone (a new outbox numbers its rows from 1
 * again).  Transfers in flight finish, and their results match no row.
 */
static void
forget_outbox(void)
{
	ListCell   *lc;

	foreach(lc, ready)
	{
		ReadyDelivery *r = (ReadyDelivery *) lfirst(lc);

		if (--r->batch->live == 0)
			MemoryContextDelete(r->batch->cxt);
	}
	list_free(ready);
	ready = NIL;
	sc_transport_free_results(held);
	held = NIL;
	cursor_at = DT_NOBEGIN;
	cursor_id = 0;
	unpark_needed = true;
}

/*
 * How many deliveries of a list of ready ones are for this host.
 */
static int
ready_for_host(List *list, const char *host)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, list)
	{
		if (strcmp(((ReadyDelivery *) lfirst(lc))->host, host) == 0)
			n++;
	}
	return n;
}

/*
 * Whether a delivery is already in the ready list.
 */
static bool
is_ready(int64 id)
{
	ListCell   *lc;

	foreach(lc, ready)
	{
		if (((ReadyDelivery *) lfirst(lc))->id == id)
			return true;
	}
	return false;
}

/*
 * Whether there are free transfer slots, but every ready delivery waits for
 * a host that is full.
 */
static bool
ready_blocked(void)
{
	ListCell   *lc;

	if (ready == NIL || sc_transport_in_flight() >= sc_max_deliveries_in_flight)
		return false;
	foreach(lc, ready)
	{
		if (sc_transport_host_count(((ReadyDelivery *) lfirst(lc))->host) <
			sc_max_connections_per_host)
			return false;
	}
	return true;
}

/*
 * Whether the ready list keeps the transport busy without a fetch.  It does
 * not when it is empty; when all that is left waits for busy hosts, a fetch
 * every BLOCKED_FETCH_MS looks for other hosts' work, so a slow host's
 * backlog never keeps the others waiting (and a single busy host is not
 * re-read on every turn).
 */
static bool
ready_can_start(void)
{
	if (ready == NIL)
		return false;
	if (sc_transport_in_flight() >= sc_max_deliveries_in_flight)
		return true;			/* everything waits anyway */
	/* something can start, or all of it waits but we looked for other hosts recently */
	return GetCurrentTimestamp() < TimestampTzPlusMilliseconds(last_fetch_at, BLOCKED_FETCH_MS);
}

/*
 * Hand ready deliveries to the transport while their host, and the
 * dispatcher as a whole, have room.  The transport copies what it needs; a
 * batch's memory goes when its last request has started.
 */
static void
start_ready(void)
{
	ListCell   *lc;

	foreach(lc, ready)
	{
		ReadyDelivery *r = (ReadyDelivery *) lfirst(lc);

		if (sc_transport_in_flight() >= sc_max_deliveries_in_flight)
			break;
		if (sc_transport_host_count(r->host) >= sc_max_connections_per_host)
			continue;
		if (r->is_webhook)
		{
			/* in the batch's memory: this may run right after a commit */
			MemoryContext old = MemoryContextSwitchTo(r->batch->cxt);
			int64		now_s = (int64) time(NULL);
			List	   *headers = NIL;
			char	   *sig = NULL;

			/*
			 * Outside a transaction: OpenSSL's HMAC context is tracked by a
			 * resource owner, so signing uses one of its own.
			 */
			if (r->secret != NULL)
			{
				ResourceOwner save = CurrentResourceOwner;

				if (sign_owner == NULL)
					sign_owner = ResourceOwnerCreate(NULL, "smartconnector signing");
				CurrentResourceOwner = sign_owner;
				sig = sc_webhook_signature(r->secret, r->msg_id, now_s, r->body);
				CurrentResourceOwner = save;
			}
			headers = lappend(headers, "Content-Type: application/json");
			headers = lappend(headers, "User-Agent: smartconnector/" SC_VERSION);
			headers = lappend(headers, psprintf("webhook-id: %s", r->msg_id));
			headers = lappend(headers, psprintf("webhook-timestamp: " INT64_FORMAT, now_s));
			if (sig != NULL)
				headers = lappend(headers, psprintf("webhook-signature: %s", sig));
			headers = list_concat(headers, r->headers);
			MemoryContextSwitchTo(old);
			sc_transport_add_webhook(r->id, r->due_at, r->host, r->target, r->body, headers);
		}
		else
			sc_transport_add_email(r->id, r->due_at, r->target, r->body);
		ready = foreach_delete_current(ready, lc);
		if (--r->batch->live == 0)
			MemoryContextDelete(r->batch->cxt);
	}
}

/*
 * Dispatcher entry point.
 */
void
sc_dispatcher_main(Datum main_arg)
{
	MemoryContext pass_cxt;
	volatile bool need_fetch = true;
	volatile bool installed = false;
	volatile TimestampTz next_due = 0;
	List	   *volatile unrecorded = NIL;	/* finished, not yet recorded */
	volatile TimestampTz first_unrecorded = 0;
	volatile TimestampTz fetch_not_before = 0;	/* pacing, and a pause after an error */
	volatile TimestampTz held_retry_at = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (IsBinaryUpgrade)
		proc_exit(0);			/* pg_upgrade's servers deliver nothing */
	BackgroundWorkerInitializeConnection(sc_database_name, NULL, 0);
	pgstat_report_appname("smartconnector dispatcher");

	/*
	 * A recorded attempt lost in a crash only means that delivery is sent
	 * again (at least once, same webhook-id), so the dispatcher need not wait
	 * for its commits to reach disk.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The dispatcher runs only its own statements, with plans kept for its
	 * lifetime: they must not depend on the outbox's size when they were
	 * made.  Planned on an empty outbox they scanned the whole table and
	 * sorted, or hash-joined it, once it had grown (6-9 ms a turn with
	 * 20,000 rows).  So: the workers' plan settings (nested loops, no JIT,
	 * pinned search_path) for the whole session, and on top generic plans
	 * with every access by index.
	 */
	sc_apply_plan_settings(true);
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);

	sc_transport_init();
	before_shmem_exit(dispatcher_detach, (Datum) 0);
	sc_publish_latch(&sc_shared->dispatcher);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector dispatcher pass",
									 ALLOCSET_DEFAULT_SIZES);
	ready_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector dispatcher ready",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		List	   *results;
		long		timeout = DISPATCHER_MAX_NAP_MS;
		TimestampTz now;
		bool		record_now;
		bool		fetch_allowed;
		bool		retry_held;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			sc_transport_configure();
			need_fetch = true;
			last_fetch_empty = false;	/* emails may have become sendable */
			if (emails_enabled())
				unpark_needed = true;
			else
				drop_ready_emails();
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);

		results = sc_transport_take_results();
		if (results != NIL)
		{
			/* the list outlives this turn's pass_cxt */
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			if (unrecorded == NIL)
				first_unrecorded = GetCurrentTimestamp();
			unrecorded = list_concat(unrecorded, results);
			list_free(results);
			MemoryContextSwitchTo(old);
		}
		start_ready();			/* freed connections take ready requests at once */

		now = GetCurrentTimestamp();
		if (next_due != 0 && now >= next_due)
			need_fetch = true;
		/* nothing ready can start: fetch more, unless the last look found nothing */
		if (!ready_can_start() && !last_fetch_empty)
			need_fetch = true;
		fetch_allowed = now >= fetch_not_before;
		retry_held = held != NIL && now >= held_retry_at;
		/* results ride along with the next fetch, or wait a few ms for company */
		record_now = retry_held || (unrecorded != NIL &&
			(list_length(unrecorded) >= RECORD_GROUP ||
			 (need_fetch && fetch_allowed && !ready_can_start()) ||
			 now >= TimestampTzPlusMilliseconds(first_unrecorded, RECORD_DELAY_MS)));

		if (record_now || (need_fetch && fetch_allowed && !ready_can_start()))
		{
			volatile bool fetch = need_fetch && fetch_allowed && !ready_can_start();
			List	   *volatile still_locked = NIL;

			if (retry_held)
			{
				MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

				unrecorded = list_concat(unrecorded, held);
				MemoryContextSwitchTo(old);
				list_free(held);
				held = NIL;
			}

			PG_TRY();
			{
				sc_work_begin("smartconnector: dispatching");
				installed = sc_extension_installed(false);
				if (installed)
				{
					List	   *locked = record_results(unrecorded);
					MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

					still_locked = list_copy(locked);
					MemoryContextSwitchTo(old);
					if (fetch)
					{
						next_due = fetch_due();
						fetch_not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																	   FETCH_INTERVAL_MS);
					}
				}
				sc_work_commit();
				if (fetch)
					need_fetch = false;
			}
			PG_CATCH();
			{
				/* unrecorded attempts stay pending and are sent again */
				list_free(still_locked);
				still_locked = NIL;
				EmitErrorReport();
				FlushErrorState();
				AbortOutOfAnyTransaction();
				/* try again in a second, not in a loop that fills the log */
				fetch_not_before = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
			}
			PG_END_TRY();

			/* a failed attempt is retried later: look again by then */
			{
				ListCell   *lc;

				foreach(lc, unrecorded)
				{
					if (!((ScTransferResult *) lfirst(lc))->ok)
					{
						TimestampTz soon = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);

						if (next_due == 0 || soon < next_due)
							next_due = soon;
						break;
					}
				}
			}
			if (unrecorded != NIL)
				last_fetch_empty = false;	/* retries or freed slots: look again */
			if (still_locked != NIL)
			{
				/* keep these for a later try; free the rest */
				List	   *done = NIL;
				ListCell   *lc;
				MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

				foreach(lc, unrecorded)
				{
					if (list_member_ptr(still_locked, lfirst(lc)))
						held = lappend(held, lfirst(lc));
					else
						done = lappend(done, lfirst(lc));
				}
				MemoryContextSwitchTo(old);
				list_free(unrecorded);
				list_free(still_locked);
				unrecorded = done;
				held_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), HELD_RETRY_MS);
			}
			sc_transport_free_results(unrecorded);
			unrecorded = NIL;
			start_ready();
		}

		if (!installed)
		{
			if (ready != NIL || held != NIL)
				forget_outbox();
			timeout = 10000;
		}
		else
		{
			now = GetCurrentTimestamp();
			if (next_due > now)
				timeout = Min(timeout, ms_until(now, next_due));
			else if (next_due != 0)
			{
				/*
				 * Due work waits for a free transfer slot: a finished
				 * transfer wakes us, and blocked hosts are looked past
				 * after BLOCKED_FETCH_MS.
				 */
				timeout = Min(timeout, BLOCKED_FETCH_MS);
			}
			/*
			 * Nothing ready can start (its hosts are full) while slots are
			 * free: look for other hosts' work after BLOCKED_FETCH_MS, not
			 * when a transfer next finishes, which for a host that never
			 * answers is its timeout (the other hosts stalled for seconds:
			 * bench/slow_hosts.sh).
			 */
			if (ready_blocked())
				timeout = Min(timeout, ms_until(now, TimestampTzPlusMilliseconds(last_fetch_at,
																				  BLOCKED_FETCH_MS)));
			if (unrecorded != NIL)
				timeout = Min(timeout, RECORD_DELAY_MS);
			if (held != NIL)
				timeout = Min(timeout, ms_until(now, held_retry_at));
			if (need_fetch && !ready_can_start())
				timeout = Min(timeout, ms_until(now, fetch_not_before));
		}

		if (sc_transport_wait(sc_stats_nap(timeout)))
			need_fetch = true;
	}
}
