/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *		The two hot steps of every execution, in C with kept plans:
 *		admission of the next queued execution, and its end (the end state,
 *		the outbox and chaining).
 *
 * Both were PL/pgSQL.  In an executor every execution is two short
 * transactions, and PL/pgSQL re-initialises each simple expression and
 * revalidates each plan in every new transaction, and switched user and
 * settings again for each nested SECURITY DEFINER call: a third of an
 * executor's time went to that glue rather than to the statements.  Here
 * each statement is prepared once per backend and run with SPI.
 *
 * What the statements guarantee:
 *  - Admission takes the connector's admission lock (a lock-manager lock,
 *    sc_lock_admissions()), then reads its status and limit and counts its
 *    running executions in a statement that starts after the lock, hence
 *    with a snapshot in which an admission that held the lock before us has
 *    committed and is counted.  Status, limit and handler changes take the
 *    same lock (in the settings trigger), so they and admissions serialise.
 *  - The end is one UPDATE that only finds the execution while it is
 *    running, so it ends once even when a cancel or the launcher races it;
 *    it returns all that follows the end, queued in the same transaction.
 *
 * Every statement runs with the settings of sc_pin_settings(): search_path
 * pinned to pg_catalog, pg_temp (the SQL-callable entry points are also
 * SECURITY DEFINER with it), so a caller's search_path can neither change
 * what names resolve to nor force a re-plan; joins by nested loop; no JIT.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/formatting.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(admit);
PG_FUNCTION_INFO_V1(complete_execution);
PG_FUNCTION_INFO_V1(execution_ended);

/*
 * Connectors with queued work that admission considers: those with nothing
 * running first, then the others, each group oldest head first (fairness:
 * a connector that waits behind another's backlog gets the next free
 * executor).  The oldest 2 * max_workers + 16 by head, at most
 * MAX_CANDIDATES: a connector at its limit has at least one execution
 * running, on an executor, so no more than max_workers of them are full,
 * and the list always reaches past them to the oldest one with nothing
 * running.
 */
#define MAX_CANDIDATES 256
/* admit_connector(): the connector's admission lock is held elsewhere */
#define ADMIT_BUSY (-1)
/* admit_connector(): a cancel() in progress holds the head of its queue */
#define ADMIT_HEAD_LOCKED (-2)
/* How long an executor keeps that list between admissions */
#define CANDIDATES_MAX_AGE_MS 10

typedef struct Candidate
{
	int64		connector_id;
	int64		limit;
	int64		head;			/* oldest queued execution when last seen */
	int64		running;		/* its running executions when last seen */
} Candidate;

/* Whether candidate a comes before b: nothing running first, then by head */
#define CANDIDATE_BEFORE(a, b) \
	(((a).running == 0) != ((b).running == 0) ? (a).running == 0 : (a).head < (b).head)

static Candidate candidates[MAX_CANDIDATES];
static int	n_candidates = 0;
static TimestampTz candidates_loaded_at = 0;

static SPIPlanPtr candidates_plan = NULL;
static SPIPlanPtr head_plan = NULL;
/*
 * This admission transaction holds some connector's enqueue lock
 * exclusively (update_queue_head()): enqueue() of that connector waits for
 * its commit, so it must not wait for any lock itself (a cycle, or a
 * trigger() held up by another session's open transaction).
 */
static LocalTransactionId enqueues_locked_out = InvalidLocalTransactionId;
static SPIPlanPtr forget_head_plan = NULL;
static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr take_plan = NULL;
static SPIPlanPtr queued_plan = NULL;
static SPIPlanPtr head_lock_plan = NULL;
static SPIPlanPtr end_plan = NULL;
static SPIPlanPtr recipients_plan = NULL;
static SPIPlanPtr delivery_plan = NULL;
static SPIPlanPtr chains_plan = NULL;
static SPIPlanPtr enqueue_plan = NULL;

static int64 count_running(int64 connector_id);
static int64 admit_connector(int64 connector_id, bool for_executor, bool wait, bool occupy,
							 int64 *next_head);
static void queue_delivery(int64 execution_id, Datum connector_id, const char *channel,
						   const char *target, const char *target_host, const char *reason,
						   Datum body, HeapTuple tup, TupleDesc desc, int first);
static void queue_followers(int64 execution_id, HeapTuple tup, TupleDesc desc, int first);
static void spi_connect(void);
static const char *bounded_error(const char *error);

/*
 * An execution's error, as stored and sent: at most SC_MAX_ERROR_BYTES,
 * cut at a character boundary and saying so.  The error reaches every
 * payload and email of the execution; unbounded, one finish(id, <30 MB>)
 * kept the dispatcher busy for half a minute per fetch, delaying every
 * other connector's webhooks.
 */
static const char *
bounded_error(const char *error)
{
	size_t		len = strlen(error);
	int			keep;

	if (len <= SC_MAX_ERROR_BYTES)
		return error;
	keep = pg_mbcliplen(error, (int) Min(len, (size_t) INT_MAX), SC_MAX_ERROR_BYTES - 100);
	return psprintf("%.*s ... [truncated: the error had %zu bytes]", keep, error, len);
}

/*
 * Pin the settings our statements are planned and run with
 * (sc_apply_plan_settings()); returns the GUC nest level to restore with
 * sc_unpin_settings().  (An abort restores them by itself.)  Inside an
 * executor's privileged section they are pinned already.
 */
int
sc_pin_settings(void)
{
	int			nest;

	if (sc_plan_settings_pinned())
		return 0;
	nest = NewGUCNestLevel();
	sc_apply_plan_settings(false);
	return nest;
}

void
sc_unpin_settings(int nest)
{
	if (nest > 0)
		AtEOXact_GUC(true, nest);
}

static void
spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * How many executions of a connector are running, as of a new snapshot.
 */
static int64
count_running(int64 connector_id)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(connector_id)};
	bool		isnull;

	if (SPI_execute_plan(sc_keep_plan(&count_plan,
		"SELECT count(*) FROM smartconnector.execution e"
		" WHERE e.connector_id = $1 AND e.state = 'running'",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not count running executions of connector %lld",
			 (long long) connector_id);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * After an executor's admission attempt: keep the connector's queue head
 * row up to date, with its next queued execution, or with no row once
 * nothing is queued, unless an execution of it is being queued right now
 * (admission.c): the row then stays, and the next attempt forgets it.  The
 * head is only an ordering hint; what is admitted is always the queue's
 * real head, read under the admission lock.
 */
static void
update_queue_head(int64 connector_id, int64 next_head)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(connector_id), Int64GetDatum(next_head)};

	if (next_head != 0)
	{
		/* rows someone holds (a user's open transaction) are left: only a hint */
		if (SPI_execute_plan(sc_keep_plan(&head_plan,
			"UPDATE smartconnector_internal.queue_head h SET head = $2"
			" WHERE h.ctid = ANY (ARRAY(SELECT l.ctid FROM smartconnector_internal.queue_head l"
			"                           WHERE l.connector_id = $1 AND l.head <> $2"
			"                             FOR UPDATE SKIP LOCKED))",
			2, types), args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not move the queue head of connector %lld", (long long) connector_id);
	}
	else if (sc_lock_out_enqueues(connector_id))
	{
		/* held to the commit: this transaction must not wait for anyone now */
		enqueues_locked_out = MyProc->lxid;
		/* a statement that starts after the lock: it sees every queued execution */
		if (SPI_execute_plan(sc_keep_plan(&forget_head_plan,
			"DELETE FROM smartconnector_internal.queue_head h"
			" WHERE h.ctid = ANY (ARRAY(SELECT l.ctid FROM smartconnector_internal.queue_head l"
			"                           WHERE l.connector_id = $1 FOR UPDATE SKIP LOCKED))"
			"   AND NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue q"
			"                    WHERE q.connector_id = $1)",
			1, types), args, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not forget the queue head of connector %lld", (long long) connector_id);
	}
}

/*
 * Admit the oldest queued execution of one connector if its status and
 * limit allow; returns its id, 0 if nothing may start, or, if !wait,
 * ADMIT_BUSY when another transaction holds the connector's admission lock
 * (another admission, or a change of its status, limit, handler or run_as);
 * and, for executors or if !wait, ADMIT_HEAD_LOCKED when a cancel() not yet
 * committed holds the oldest queued execution (which may stay so for any
 * time).
 * An executor (for_executor) admits only connectors that have a handler.
 * With occupy, this backend becomes the execution's runner (its progress
 * slot names it); without, the caller ends it in this same transaction.
 * *next_head is set to the connector's next queued execution (0 if none).
 *
 * The lock is kept to the end of the transaction only when something was
 * admitted; otherwise it is given back at once (nothing was written).
 */
static int64
admit_connector(int64 connector_id, bool for_executor, bool wait, bool occupy, int64 *next_head)
{
	Oid			types[2] = {INT8OID, BOOLOID};
	Datum		args[2] = {Int64GetDatum(connector_id), BoolGetDatum(for_executor)};
	bool		isnull;
	int64		limit;
	int			ret;

	*next_head = 0;
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("admission must run at isolation level READ COMMITTED"),
				 errdetail("Admission counts running executions as of now, which an older snapshot cannot see.")));
	if (!sc_lock_admissions(connector_id, wait))
		return ADMIT_BUSY;

	/* a statement that starts after the lock: it sees every admission before ours */
	ret = SPI_execute_plan(sc_keep_plan(&lock_plan,
		"SELECT x.max_concurrent_executions::bigint,"
		"       (SELECT count(*) FROM smartconnector.execution e"
		"         WHERE e.connector_id = x.id AND e.state = 'running')"
		"  FROM smartconnector.connector x"
		" WHERE x.id = $1 AND x.status IN ('operational', 'need_attention')"
		"   AND (x.handler IS NOT NULL OR NOT $2)",
		2, types), args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read connector %lld", (long long) connector_id);
	if (SPI_processed == 0)
	{
		sc_unlock_admissions(connector_id);
		return 0;				/* gone, or may not execute now */
	}
	limit = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)) >= limit)
	{
		sc_unlock_admissions(connector_id);
		return 0;
	}

	for (;;)
	{
		/*
		 * Take the head of the queue and mark it running in one statement.
		 * Only cancel() removes queue rows without the connector's lock.  A
		 * head that a cancel() not yet committed holds is skipped, not
		 * waited for, and nothing behind it is taken (FIFO): this finds
		 * nothing then, and so it does when such a cancel took the head.
		 */
		ret = SPI_execute_plan(sc_keep_plan(&take_plan,
			"WITH head AS ("
			"  DELETE FROM smartconnector_internal.queue q"
			"   WHERE q.connector_id = $1"
			"     AND q.execution_id = (SELECT h.execution_id FROM smartconnector_internal.queue h"
			"                            WHERE h.connector_id = $1"
			"                            ORDER BY h.execution_id LIMIT 1"
			"                              FOR UPDATE SKIP LOCKED)"
			"     AND NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue o"
			"                      WHERE o.connector_id = $1 AND o.execution_id < q.execution_id)"
			"  RETURNING q.execution_id)"
			" UPDATE smartconnector.execution x"
			"    SET state = 'running', started_at = pg_catalog.clock_timestamp(),"
			"        runner_pid = pg_catalog.pg_backend_pid()"
			"   FROM head"
			"  WHERE x.id = head.execution_id"
			" RETURNING x.id, (SELECT min(n.execution_id) FROM smartconnector_internal.queue n"
			"                   WHERE n.connector_id = $1 AND n.execution_id > x.id)",
			1, types), args, NULL, false, 1);
		if (ret != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not admit an execution of connector %lld",
				 (long long) connector_id);
		if (SPI_processed == 1)
		{
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull));
			Datum		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

			*next_head = isnull ? 0 : DatumGetInt64(next);
			if (for_executor)
				update_queue_head(connector_id, *next_head);

			if (occupy)
				sc_occupy_slot(id);
			return id;
		}
		ret = SPI_execute_plan(sc_keep_plan(&queued_plan,
			"SELECT 1 FROM smartconnector_internal.queue q WHERE q.connector_id = $1 LIMIT 1",
			1, types), args, NULL, false, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read the queue of connector %lld", (long long) connector_id);
		if (SPI_processed == 0)
		{
			if (for_executor)
				update_queue_head(connector_id, 0);
			sc_unlock_admissions(connector_id);
			return 0;
		}
		if (!wait || for_executor)
		{
			/* executors (and the launcher) never wait for a head: they serve others */
			sc_unlock_admissions(connector_id);
			return ADMIT_HEAD_LOCKED;
		}
		/* claim(): wait for the cancel() that holds the head to end, then look again */
		if (SPI_execute_plan(sc_keep_plan(&head_lock_plan,
			"SELECT 1 FROM smartconnector_internal.queue q WHERE q.connector_id = $1"
			" ORDER BY q.execution_id LIMIT 1 FOR UPDATE",
			1, types), args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not wait for the queue of connector %lld", (long long) connector_id);
	}
}

/*
 * Read the connectors with queued work that run as role into the candidate
 * list, oldest queue head first: one index probe per connector for its
 * head, whatever the backlog.
 */
static void
load_candidates(Oid role)
{
	int			want = Min(MAX_CANDIDATES, 2 * sc_max_workers + 16);
	Oid			nsp = get_namespace_oid(SC_INTERNAL_SCHEMA, false);
	Relation	heap;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	bool		more = true;
	Candidate	found[MAX_CANDIDATES];
	int			n_found = 0;

	/*
	 * Walk the queue heads in head order with the index itself: a statement
	 * would be planned from statistics, and with every limit 0 when it was
	 * planned (a paused backlog), or a table that has grown since, it read
	 * every connector and sorted them, on every admission.  Each batch of
	 * heads is then checked against its connectors in one statement, until
	 * enough of them may admit, or the heads run out (connectors that cannot
	 * run now are passed over).
	 */
	heap = table_open(get_relname_relid("queue_head", nsp), AccessShareLock);
	index = index_open(get_relname_relid("queue_head_head_idx", nsp), AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = index_beginscan(heap, index, snapshot, 0, 0);
	index_rescan(scan, NULL, 0, NULL, 0);
	slot = table_slot_create(heap, NULL);

	/* batches grow when heads are passed over (paused connectors with a backlog) */
	for (int batch = want; more && n_found < want; batch = Min(batch * 2, MAX_CANDIDATES))
	{
		Datum		ids[MAX_CANDIDATES];
		Datum		heads[MAX_CANDIDATES];
		int			n = 0;
		Oid			types[3] = {INT8ARRAYOID, INT8ARRAYOID, OIDOID};
		Datum		args[3];

		while (n < batch && (more = index_getnext_slot(scan, ForwardScanDirection, slot)))
		{
			bool		isnull;
			Datum		id = slot_getattr(slot, 1, &isnull);
			bool		seen = false;

			/* a connector may have two rows (see the table): its oldest counts */
			for (int k = 0; k < n && !seen; k++)
				seen = DatumGetInt64(ids[k]) == DatumGetInt64(id);
			for (int k = 0; k < n_found && !seen; k++)
				seen = found[k].connector_id == DatumGetInt64(id);
			if (seen)
				continue;
			ids[n] = id;
			heads[n++] = slot_getattr(slot, 2, &isnull);
		}
		if (n == 0)
			break;
		args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));
		args[1] = PointerGetDatum(construct_array(heads, n, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));
		args[2] = ObjectIdGetDatum(role);
		if (SPI_execute_plan(sc_keep_plan(&candidates_plan,
			"SELECT c.id, c.max_concurrent_executions::bigint, u.head,"
			"       (SELECT count(*) FROM smartconnector.execution e"
			"         WHERE e.connector_id = c.id AND e.state = 'running')"
			"  FROM unnest($1, $2) WITH ORDINALITY AS u(id, head, n)"
			"  JOIN smartconnector.connector c ON c.id = u.id"
			" WHERE c.run_as_oid = $3 AND smartconnector_internal.may_run(c)"
			" ORDER BY u.n",
			3, types), args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for admissible executions");
		for (uint64 i = 0; i < SPI_processed && n_found < want; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Candidate  *c = &found[n_found++];

			c->connector_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			c->limit = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			c->head = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
			c->running = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
	}

	ExecDropSingleTupleTableSlot(slot);
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);

	/* in head order, those with nothing running first (CANDIDATE_BEFORE) */
	n_candidates = 0;
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < n_found; i++)
			if ((found[i].running == 0) == (pass == 0))
				candidates[n_candidates++] = found[i];
	candidates_loaded_at = GetCurrentTimestamp();
}

/*
 * Candidate i was tried, admitted one execution if admitted, and its next
 * head is next_head (0: queue empty): move it to its place in the list, or
 * drop it.
 */
static void
reposition_candidate(int i, bool admitted, int64 next_head)
{
	Candidate	c = candidates[i];

	memmove(&candidates[i], &candidates[i + 1], sizeof(Candidate) * (n_candidates - i - 1));
	n_candidates--;
	if (next_head == 0)
		return;
	c.head = next_head;
	if (admitted)
		c.running++;
	for (i = n_candidates; i > 0 && CANDIDATE_BEFORE(c, candidates[i - 1]); i--)
		candidates[i] = candidates[i - 1];
	candidates[i] = c;
	n_candidates++;
}

/* The place of a connector in the candidate list, or -1 */
static int
candidate_index(int64 connector_id)
{
	for (int i = 0; i < n_candidates; i++)
		if (candidates[i].connector_id == connector_id)
			return i;
	return -1;
}

/*
 * Try the candidates in order.  Connectors that look full are skipped
 * after one count, and those whose admission lock another transaction
 * holds are passed over, so that an executor queues neither behind a busy
 * connector nor behind a session that changes a connector's settings and
 * keeps its transaction open, while other connectors have work.  Only when
 * no other candidate admits anything does it wait for such a lock, and
 * only for one that executors hold (their admissions are short); a
 * settings change wakes the executors through the launcher when it
 * commits.  admit_connector() counts again under the lock, which is what
 * the limit relies on.
 */
static int64
admit_from_candidates(void)
{
	int64		busy = 0;
	int64		next_head;
	int64		id;
	int			i;

	for (i = 0; i < n_candidates; i++)
	{
		/* (with one candidate there is nothing to skip to) */
		if (n_candidates > 1 &&
			count_running(candidates[i].connector_id) >= candidates[i].limit)
			continue;
		id = admit_connector(candidates[i].connector_id, true, false, true, &next_head);
		if (id == ADMIT_HEAD_LOCKED)
			continue;			/* a cancel in progress: try it again later */
		if (id == ADMIT_BUSY)
		{
			if (busy == 0 && sc_admissions_locked_by_executors(candidates[i].connector_id))
				busy = candidates[i].connector_id;
			continue;
		}
		reposition_candidate(i, id != 0, next_head);
		if (id != 0)
			return id;
		i--;					/* the next candidate moved into place i */
	}
	if (busy == 0 || enqueues_locked_out == MyProc->lxid)
		return 0;
	id = admit_connector(busy, true, true, true, &next_head);
	if (id == ADMIT_HEAD_LOCKED)
		return 0;
	i = candidate_index(busy);
	if (i >= 0)
		reposition_candidate(i, id != 0, next_head);
	return id;
}

/*
 * Admit the next admissible execution of any connector with a handler that
 * runs as role (an executor serves one role), from a connector with nothing
 * running first, otherwise the oldest queued first (see candidates): mark
 * it running and make this backend its runner.  Returns its id, or 0 when
 * nothing may start now.  Runs in the caller's transaction.
 *
 * Reading every connector's queue head for each admission cost a third of
 * an executor's time with 100 busy connectors, so the ordered list is kept
 * for CANDIDATES_MAX_AGE_MS: each admission moves its connector to the
 * place of its next head, and the list is read again when it is older, or
 * when it offers nothing.  Other executors' admissions make the list's
 * heads too old, never too new, so a connector is at worst tried early;
 * work queued for a connector not on the list waits at most that long
 * while executors are busy (an idle executor reads the list afresh).
 */
int64
sc_admit_next(Oid role)
{
	int64		admitted = 0;
	int			nest = sc_pin_settings();
	bool		fresh = false;

	spi_connect();

	if (n_candidates == 0 ||
		TimestampDifferenceExceeds(candidates_loaded_at, GetCurrentTimestamp(),
								   CANDIDATES_MAX_AGE_MS))
	{
		load_candidates(role);
		fresh = true;
	}
	admitted = admit_from_candidates();
	if (admitted == 0 && !fresh)
	{
		load_candidates(role);
		admitted = admit_from_candidates();
	}

	SPI_finish();
	sc_unpin_settings(nest);
	return admitted;
}

/*
 * Queue one delivery of an execution's event, with a new Standard Webhooks
 * message id (also the email's Message-ID).  A webhook keeps the secret and
 * headers its connector has now (the columns of tup from first on), so that
 * whatever the connector is changed to later, every attempt sends this URL
 * its own credentials and no other's.
 */
static void
queue_delivery(int64 execution_id, Datum connector_id, const char *channel,
			   const char *target, const char *target_host, const char *reason,
			   Datum body, HeapTuple tup, TupleDesc desc, int first)
{
	Oid			types[9] = {INT8OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID,
		TEXTOID, JSONBOID};
	Datum		args[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', 'n', 'n'};
	bool		isnull;

	args[0] = Int64GetDatum(execution_id);
	args[1] = connector_id;
	args[2] = CStringGetTextDatum(channel);
	args[3] = CStringGetTextDatum(target);
	args[4] = CStringGetTextDatum(target_host);
	args[5] = CStringGetTextDatum(reason);
	args[6] = body;
	if (strcmp(channel, "webhook") == 0)
	{
		for (int k = 0; k < 2; k++)
		{
			args[7 + k] = SPI_getbinval(tup, desc, first + k, &isnull);
			nulls[7 + k] = isnull ? 'n' : ' ';
		}
	}
	if (SPI_execute_plan(sc_keep_plan(&delivery_plan,
		"INSERT INTO smartconnector.delivery"
		"  (execution_id, connector_id, channel, target, target_host, reason, webhook_id, payload,"
		"   webhook_secret, webhook_headers)"
		" VALUES ($1, $2, $3, $4, $5, $6, 'msg_' || replace(gen_random_uuid()::text, '-', ''), $7,"
		"         $8, $9)",
		9, types), args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not queue a delivery of execution %lld", (long long) execution_id);
}

/*
 * What follows the end of an execution, as columns of a statement that
 * reads it as x joined to its connector as c: the connector, the webhook's
 * URL and host, the three email addresses in order of reason (the error
 * address only for a failure), the event (event() is inlined, so it is built
 * once), whether the connector is chained to others, and the webhook's
 * credentials.
 */
#define FOLLOWER_COLUMNS \
	" x.connector_id, c.execution_ended_webhook_url," \
	" smartconnector.url_host(c.execution_ended_webhook_url)," \
	" c.notification_email," \
	" CASE WHEN x.state IN ('failed', 'partial_success')" \
	"      THEN c.error_notification_email END," \
	" (SELECT u.email FROM smartconnector.user_email u" \
	"   WHERE u.role_name = x.initiated_by)," \
	" smartconnector_internal.event(x, c)," \
	" EXISTS (SELECT 1 FROM smartconnector.chain ch" \
	"          WHERE ch.from_connector_id = x.connector_id)," \
	" c.webhook_secret, c.webhook_headers"

/*
 * Queue the webhook and emails of an ended execution and trigger the
 * connectors chained to it, in the caller's transaction; wake the
 * dispatcher at commit if anything was queued.  tup holds FOLLOWER_COLUMNS
 * from column first on.  Expects SPI to be connected and the settings to
 * be pinned.
 */
static void
queue_followers(int64 execution_id, HeapTuple tup, TupleDesc desc, int first)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	bool		isnull;
	Datum		connector_id = SPI_getbinval(tup, desc, first, &isnull);
	Datum		body = SPI_getbinval(tup, desc, first + 6, &isnull);
	/* emails in order of reason; an address gets the first that applies */
	static const char *const reasons[3] = {"notification", "error_notification", "initiator"};
	char	   *url = SPI_getvalue(tup, desc, first + 1);
	char	   *emails[3];
	char	   *folded[3];
	int			queued = 0;
	int			ret;
	uint64		n;

	/* each delivery is a plain one-row INSERT (cheaper to set up than one INSERT ... SELECT) */
	if (url != NULL)
	{
		queue_delivery(execution_id, connector_id, "webhook", url,
					   SPI_getvalue(tup, desc, first + 2), "webhook", body,
					   tup, desc, first + 8);
		queued++;
	}
	for (int k = 0; k < 3; k++)
	{
		emails[k] = SPI_getvalue(tup, desc, first + 3 + k);
		folded[k] = emails[k] ? str_tolower(emails[k], strlen(emails[k]),
											DEFAULT_COLLATION_OID) : NULL;
	}
	for (int k = 0; k < 3; k++)
	{
		bool		seen = false;

		if (emails[k] == NULL)
			continue;
		for (int j = 0; j < k && !seen; j++)
			seen = folded[j] != NULL && strcmp(folded[j], folded[k]) == 0;
		if (seen)
			continue;
		queue_delivery(execution_id, connector_id, "email", emails[k], "smtp",
					   reasons[k], body, tup, desc, first + 8);
		queued++;
	}
	if (queued > 0)
		sc_wake_dispatcher_at_commit();

	if (!DatumGetBool(SPI_getbinval(tup, desc, first + 7, &isnull)))
		return;

	/*
	 * Chained connectors start in this same transaction, with the event as
	 * input; those of a dry run are dry runs too (a rehearsal has no real
	 * effects downstream either).
	 */
	ret = SPI_execute_plan(sc_keep_plan(&chains_plan,
		"SELECT ch.to_connector_id,"
		"       pg_catalog.jsonb_build_object('chained_from', smartconnector_internal.event(e, c)),"
		"       e.initiated_by, e.dry_run"
		"  FROM smartconnector.execution e"
		"  JOIN smartconnector.connector c ON c.id = e.connector_id"
		"  JOIN smartconnector.chain ch ON ch.from_connector_id = e.connector_id"
		" WHERE e.id = $1 AND e.state = ANY (ch.on_status)"
		" ORDER BY ch.to_connector_id",
		1, types), args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read the chains of execution %lld", (long long) execution_id);
	n = SPI_processed;
	if (n > 0)
	{
		SPITupleTable *chains = SPI_tuptable;
		Oid			enqueue_types[4] = {INT8OID, JSONBOID, NAMEOID, BOOLOID};

		for (uint64 i = 0; i < n; i++)
		{
			Datum		eargs[4];

			for (int k = 0; k < 4; k++)
				eargs[k] = SPI_getbinval(chains->vals[i], chains->tupdesc, k + 1, &isnull);
			ret = SPI_execute_plan(sc_keep_plan(&enqueue_plan,
				"SELECT smartconnector_internal.enqueue($1, $2, false, $4, 'chain', $3)",
				4, enqueue_types), eargs, NULL, false, 1);
			if (ret != SPI_OK_SELECT)
				elog(ERROR, "could not trigger a chained connector");
		}
		SPI_freetuptable(chains);
	}
}

/*
 * End a running execution exactly once, in the caller's transaction: its
 * end state, counts, error and metadata; an operational connector whose
 * execution failed needs attention; then its deliveries and chained
 * connectors.  Returns the end state's label (palloc'd in the caller's
 * context) and, if state_oid is not NULL, its enum value; or NULL if it was
 * not running (someone else ended it first).
 */
char *
sc_end_execution(int64 execution_id, const int64 *counts, const char *error,
				 const char *metadata_json, const char *handler_result_json,
				 ScCommitted committed, Oid *state_oid)
{
	Oid			types[9] = {INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, TEXTOID, JSONBOID, JSONBOID,
		BOOLOID};
	Datum		args[9];
	char		nulls[9];
	MemoryContext caller_cxt = CurrentMemoryContext;
	char	   *state = NULL;
	int			nest = sc_pin_settings();
	int			ret;

	spi_connect();

	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(execution_id);
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
		args[1 + k] = Int64GetDatum(counts[k]);
	if (error)
		args[5] = CStringGetTextDatum(bounded_error(error));
	else
		nulls[5] = 'n';
	if (metadata_json)
		args[6] = DirectFunctionCall1(jsonb_in, CStringGetDatum(metadata_json));
	else
		nulls[6] = 'n';
	if (handler_result_json)
		args[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(handler_result_json));
	else
		nulls[7] = 'n';
	args[8] = BoolGetDatum(committed == SC_COMMITTED_YES);
	if (committed == SC_COMMITTED_UNKNOWN)
		nulls[8] = 'n';

	/*
	 * Only a running execution ends, once: a concurrent end makes this
	 * UPDATE find the row no longer running (it rechecks after waiting).
	 * Metadata and a handler's result that are not objects are wrapped, and
	 * cannot set cancelled_by: only cancel() writes that key.  The
	 * state is compared as text so that the plan goes by primary key: with
	 * "state = 'running'" the kept generic plan read the whole partial index
	 * of running executions, dead entries of every recent end included.
	 * The returned row carries all that follows the end (FOLLOWER_COLUMNS).
	 */
	ret = SPI_execute_plan(sc_keep_plan(&end_plan,
		"UPDATE smartconnector.execution x"
		"   SET state = CASE WHEN x.cancel_requested THEN 'cancelled'"
		"                    WHEN $6 IS NOT NULL THEN 'failed'"
		"                    WHEN $5 > 0 THEN 'partial_success'"
		"                    ELSE 'success' END::smartconnector.execution_state,"
		"       ended_at = pg_catalog.clock_timestamp(),"
		"       records_created = $2, records_updated = $3,"
		"       records_skipped = $4, records_failed = $5,"
		"       records_total = $2 + $3 + $4 + $5,"
		"       error = CASE WHEN x.cancel_requested THEN NULL ELSE $6 END,"
		"       committed = $9,"
		"       metadata = (x.metadata"
		"           || CASE WHEN $7 IS NULL THEN '{}'::jsonb"
		"                   WHEN jsonb_typeof($7) = 'object' THEN $7"
		"                   ELSE jsonb_build_object('metadata', $7) END"
		"           || CASE WHEN $8 IS NULL THEN '{}'::jsonb"
		"                   WHEN jsonb_typeof($8) = 'object' THEN $8"
		"                   ELSE jsonb_build_object('result', $8) END) - 'cancelled_by'"
		"           || jsonb_strip_nulls(jsonb_build_object('cancelled_by', x.metadata -> 'cancelled_by'))"
		"  FROM smartconnector.connector c"
		" WHERE x.id = $1 AND x.state::text = 'running' AND c.id = x.connector_id"
		" RETURNING x.state::text, x.state," FOLLOWER_COLUMNS,
		9, types), args, nulls, false, 1);
	if (ret != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not end execution %lld", (long long) execution_id);

	if (SPI_processed == 1)
	{
		SPITupleTable *ended = SPI_tuptable;
		bool		isnull;
		int64		connector_id = DatumGetInt64(SPI_getbinval(ended->vals[0], ended->tupdesc,
															   3, &isnull));

		state = MemoryContextStrdup(caller_cxt, SPI_getvalue(ended->vals[0], ended->tupdesc, 1));
		if (state_oid)
			*state_oid = DatumGetObjectId(SPI_getbinval(ended->vals[0], ended->tupdesc, 2, &isnull));
		if (strcmp(state, "failed") == 0)
		{
			Oid			t[1] = {INT8OID};
			Datum		a[1] = {Int64GetDatum(connector_id)};

			/*
			 * Rare, so prepared each time.  need_attention is a status only
			 * the system sets: the settings trigger lets it through when
			 * internal_change says so (transaction-locally).
			 */
			(void) set_config_option("smartconnector.internal_change", "status",
									 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
									 true, 0, false);
			ret = SPI_execute_with_args("UPDATE smartconnector.connector SET status = 'need_attention'"
										" WHERE id = $1 AND status = 'operational'",
										1, t, a, NULL, false, 0);
			if (ret != SPI_OK_UPDATE)
				elog(ERROR, "could not mark connector %lld as needing attention",
					 (long long) connector_id);
			(void) set_config_option("smartconnector.internal_change", "",
									 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
									 true, 0, false);
		}
		queue_followers(execution_id, ended->vals[0], ended->tupdesc, 3);
		SPI_freetuptable(ended);
	}

	SPI_finish();
	sc_unpin_settings(nest);
	return state;
}

/*
 * admit(connector_id bigint) returns bigint: admit the oldest queued
 * execution of one connector (claim()), or NULL.
 */
Datum
admit(PG_FUNCTION_ARGS)
{
	int			nest = sc_pin_settings();
	int64		id;
	int64		next_head;

	spi_connect();
	id = admit_connector(PG_GETARG_INT64(0), false, true, true, &next_head);
	SPI_finish();
	sc_unpin_settings(nest);
	if (id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}

/*
 * The error details of a failed execution as its metadata, a jsonb object
 * {"error": {"sqlstate": ..., "detail": ..., "hint": ..., "context": ...}}.
 */
char *
sc_error_metadata(const char *sqlstate, const char *detail, const char *hint,
				  const char *context)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"error\": {\"sqlstate\": ");
	escape_json(&buf, sqlstate);
	if (detail)
	{
		appendStringInfoString(&buf, ", \"detail\": ");
		escape_json(&buf, detail);
	}
	if (hint)
	{
		appendStringInfoString(&buf, ", \"hint\": ");
		escape_json(&buf, hint);
	}
	if (context)
	{
		appendStringInfoString(&buf, ", \"context\": ");
		escape_json(&buf, context);
	}
	appendStringInfoString(&buf, "}}");
	return buf.data;
}

/*
 * Admit the next execution of a connector that no executor can run (its
 * run_as role cannot be connected as) and end it failed, in the caller's
 * transaction, in queue order and under the connector's limit like any
 * admission.  Returns its id, or 0 if none may start now, or if another
 * transaction holds the connector's admission lock (the launcher, which
 * calls this, never waits for one).
 */
int64
sc_fail_next(int64 connector_id, const char *api_name, const char *problem)
{
	int			nest = sc_pin_settings();
	int64		counts[SC_NUM_ACTIONS] = {0};
	int64		next_head;
	int64		id;

	spi_connect();
	id = admit_connector(connector_id, true, false, false, &next_head);
	if (id > 0)
		(void) sc_end_execution(id, counts,
								psprintf("connector \"%s\" cannot execute", api_name),
								sc_error_metadata("55000", problem, NULL, NULL), NULL,
								SC_COMMITTED_NO, NULL);
	SPI_finish();
	sc_unpin_settings(nest);
	return Max(id, 0);
}

/*
 * complete_execution(execution_id, created, updated, skipped, failed,
 * error, metadata, handler_result, committed) returns execution_state: see
 * sc_end_execution().
 */
Datum
complete_execution(PG_FUNCTION_ARGS)
{
	int64		counts[SC_NUM_ACTIONS];
	char	   *error = NULL;
	char	   *metadata = NULL;
	char	   *result = NULL;
	ScCommitted committed = SC_COMMITTED_UNKNOWN;
	Oid			state;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
		counts[k] = PG_ARGISNULL(1 + k) ? 0 : PG_GETARG_INT64(1 + k);
	if (!PG_ARGISNULL(5))
		error = text_to_cstring(PG_GETARG_TEXT_PP(5));
	if (!PG_ARGISNULL(6))
		metadata = DatumGetCString(DirectFunctionCall1(jsonb_out, PG_GETARG_DATUM(6)));
	if (!PG_ARGISNULL(7))
		result = DatumGetCString(DirectFunctionCall1(jsonb_out, PG_GETARG_DATUM(7)));
	if (!PG_ARGISNULL(8))
		committed = PG_GETARG_BOOL(8) ? SC_COMMITTED_YES : SC_COMMITTED_NO;

	if (sc_end_execution(PG_GETARG_INT64(0), counts, error, metadata, result,
						 committed, &state) == NULL)
		PG_RETURN_NULL();
	PG_RETURN_OID(state);
}

/*
 * execution_ended(execution_id bigint) returns void: queue the deliveries
 * and chained executions of an execution that has just ended (cancel() of
 * a queued execution).
 */
Datum
execution_ended(PG_FUNCTION_ARGS)
{
	int64		execution_id = PG_GETARG_INT64(0);
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	int			nest = sc_pin_settings();

	spi_connect();
	if (SPI_execute_plan(sc_keep_plan(&recipients_plan,
		"SELECT" FOLLOWER_COLUMNS
		"  FROM smartconnector.execution x"
		"  JOIN smartconnector.connector c ON c.id = x.connector_id"
		" WHERE x.id = $1",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the recipients of execution %lld", (long long) execution_id);
	if (SPI_processed == 1)
		queue_followers(execution_id, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_finish();
	sc_unpin_settings(nest);
	PG_RETURN_VOID();
}
