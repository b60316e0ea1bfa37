/*-------------------------------------------------------------------------
 *
 * execution.c
 *		The execution state machine: every transition of an execution, one
 *		function each, in C with kept plans.
 *
 *		queued						enqueue()
 *		queued -> running			admit_connector(): an executor's
 *									sc_admit_next(), an external runner's claim
 *		running -> success, partial_success, failed, cancelled
 *									sc_end_execution(), and sc_end_current() for
 *									the session's own run (executor, finish())
 *		queued -> cancelled			cancel_execution()
 *		running -> (cancel_requested), and for an external runner -> cancelled
 *									cancel_execution()
 *		running -> failed			sc_end_dead_runs(): the runner is gone
 *									(crashed, terminated for max_duration)
 *		queued -> running -> failed	sc_fail_next(): no executor can run it
 *
 * Each end queues what follows it in the same transaction: the deliveries
 * (outbox.c) and the executions of chained connectors.  The SQL functions
 * (enqueue, claim, finish, cancel_impl) are thin wrappers at the end of this
 * file.
 *
 * Rules:
 *  - Admission takes the connector's admission lock (locks.c), then reads
 *    its status and limit and counts its running executions in a statement
 *    that starts after the lock, hence with a snapshot in which an admission
 *    that held the lock before us has committed and is counted.  Status,
 *    limit and handler changes take the same lock (in the settings
 *    trigger), so they and admissions serialise.  Hence READ COMMITTED
 *    (require_read_committed()).
 *  - Which connectors may run now is smartconnector_internal.may_run(), the
 *    one definition, called by every statement here that asks.
 *  - An end is one UPDATE that only finds the execution while it is
 *    running, so it ends once even when a cancel or the launcher races it.
 *  - Lock order: queue row before execution row (admission and cancel).
 *
 * Both hot steps were PL/pgSQL.  In an executor every execution is two short
 * transactions, and PL/pgSQL re-initialises each simple expression and
 * revalidates each plan in every new transaction, and switched user and
 * settings again for each nested SECURITY DEFINER call: a third of an
 * executor's time went to that glue rather than to the statements.  Here
 * each statement is prepared once per backend and run with SPI, with the
 * settings of sc_pin_settings() (plans.c).
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

PG_FUNCTION_INFO_V1(enqueue);
PG_FUNCTION_INFO_V1(claim);
PG_FUNCTION_INFO_V1(finish);
PG_FUNCTION_INFO_V1(cancel_impl);

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
/* How admit_connector() admits */
#define ADMIT_FOR_EXECUTOR	0x01	/* only connectors with a handler; keep queue heads */
#define ADMIT_WAIT			0x02	/* for the admission lock (and, for claim(), the head) */
#define ADMIT_OCCUPY		0x04	/* this backend becomes the runner */
#define ADMIT_SCHEMA_0_1	0x08	/* the installed schema is 0.1's (compat.c) */
#define ADMIT_TO_GROUP		0x10	/* and joins this executor's group (executor.c) */

/*
 * The statement that reads whether a connector may admit now, under its
 * admission lock, given the rule on statuses: 0.2's one definition, or,
 * for a 0.1 schema that lacks it, 0.1's rule as it was frozen.
 */
#define CONNECTOR_ADMITS_SQL(status_rule) \
	"SELECT x.max_concurrent_executions::bigint," \
	"       (SELECT count(*) FROM smartconnector.execution e" \
	"         WHERE e.connector_id = x.id AND e.state = 'running')" \
	"  FROM smartconnector.connector x" \
	" WHERE x.id = $1 AND " status_rule \
	"   AND (x.handler IS NOT NULL) = $2"

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
static SPIPlanPtr chains_plan = NULL;
static SPIPlanPtr connector_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr queue_plan = NULL;
static SPIPlanPtr new_head_plan = NULL;
static SPIPlanPtr unqueue_plan = NULL;
static SPIPlanPtr cancelled_plan = NULL;
static SPIPlanPtr lock_running_plan = NULL;
static SPIPlanPtr cancel_requested_plan = NULL;
static SPIPlanPtr running_plan = NULL;
static SPIPlanPtr hold_plan = NULL;
static SPIPlanPtr dead_cancel_plan = NULL;
static SPIPlanPtr count_all_plan = NULL;
static SPIPlanPtr state_plan = NULL;
static SPIPlanPtr runner_connector_plan = NULL;
static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr claim_id_plan = NULL;
static SPIPlanPtr chain_enqueue_plan = NULL;

/* The first queued execution admit_connector() took */
typedef struct Admitted
{
	int64		id;				/* or 0, ADMIT_BUSY, ADMIT_HEAD_LOCKED */
	int64		next_head;		/* the connector's next queued execution, or 0 */
	bool		diff_check;
	bool		dry_run;
} Admitted;

static void require_read_committed(const char *what);
static int64 enqueue_execution(int64 connector_id, Datum input, bool disable_diff_check,
							   bool dry_run, const char *trigger_type, Datum initiated_by);
static int64 count_running(int64 connector_id);
static void update_queue_head(int64 connector_id, int64 next_head);
static void admit_connector(int64 connector_id, int flags, Admitted *admitted);
static void load_candidates(Oid role);
static void reposition_candidate(int i, bool admitted, int64 next_head);
static int	candidate_index(int64 connector_id);
static int64 admit_from_candidates(ScGroupFilter may_join, int64 *connector_id);
static void queue_followers(int64 execution_id, HeapTuple tup, TupleDesc desc, int first);
static const char *bounded_error(const char *error);
static bool cancel_execution(int64 execution_id);
static void end_dead_run(void *arg);
static bool forget_deleted_current(void);
static Datum execution_state(int64 execution_id, bool *found);

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
 * The isolation rule of admission: it counts running executions as of now,
 * which a transaction snapshot older than the admission lock cannot see.
 */
static void
require_read_committed(const char *what)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("%s must run at isolation level READ COMMITTED", what),
				 errdetail("Admission counts running executions as of now, which an older snapshot cannot see.")));
}

/*
 * queued: queue an execution of a connector, in the caller's transaction;
 * returns its id.  input is a jsonb ((Datum) 0: {}), initiated_by a name
 * ((Datum) 0: NULL, which the table refuses, as it refuses a NULL
 * trigger_type).
 * Executors find connectors with work by their queue head, of those that
 * may run now; a connector paused now gets its head when it is resumed (the
 * trigger connector_queue_head).
 */
static int64
enqueue_execution(int64 connector_id, Datum input, bool disable_diff_check, bool dry_run,
				  const char *trigger_type, Datum initiated_by)
{
	Oid			types[6] = {INT8OID, TEXTOID, NAMEOID, BOOLOID, BOOLOID, JSONBOID};
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			head_types[3] = {INT8OID, INT8OID, BOOLOID};
	Datum		head_args[3];
	int			nest = sc_pin_settings();
	char	   *text;
	size_t		len;
	bool		isnull;
	bool		runnable;
	int64		id;

	sc_spi_connect();
	if (input == (Datum) 0)
		input = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	/* the real size: the stored one is compressed, and 40 MB of repeats compress well */
	text = DatumGetCString(DirectFunctionCall1(jsonb_out, input));
	len = strlen(text);
	pfree(text);
	if (len > SC_MAX_INPUT_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("execution input is too large"),
				 errdetail("The input takes %zu bytes as text; at most 1 MB is allowed.", len),
				 errhint("Pass a reference to the data instead of the data itself.")));

	/* the connector, read once */
	args[0] = Int64GetDatum(connector_id);
	if (SPI_execute_plan(sc_keep_plan(&connector_plan,
		"SELECT c.diff_check, smartconnector_internal.may_run(c)"
		"  FROM smartconnector.connector c WHERE c.id = $1",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read connector %lld", (long long) connector_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("connector with id %lld does not exist", (long long) connector_id)));
	args[3] = BoolGetDatum(DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 1, &isnull))
						   && !disable_diff_check);
	runnable = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
										  &isnull));

	args[1] = trigger_type ? CStringGetTextDatum(trigger_type) : (Datum) 0;
	nulls[1] = trigger_type ? ' ' : 'n';
	args[2] = initiated_by;
	nulls[2] = initiated_by ? ' ' : 'n';
	args[4] = BoolGetDatum(dry_run);
	args[5] = input;
	if (SPI_execute_plan(sc_keep_plan(&insert_plan,
		"INSERT INTO smartconnector.execution"
		"  (connector_id, trigger_type, initiated_by, diff_check, dry_run, input)"
		" VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
		6, types), args, nulls, false, 1) != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not queue an execution of connector %lld", (long long) connector_id);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	if (runnable)
		sc_lock_enqueue(connector_id);
	head_args[0] = Int64GetDatum(connector_id);
	head_args[1] = Int64GetDatum(id);
	/* an older snapshot may still see a head row an executor has deleted: add one then */
	head_args[2] = BoolGetDatum(IsolationUsesXactSnapshot());
	if (SPI_execute_plan(sc_keep_plan(&queue_plan,
		"INSERT INTO smartconnector_internal.queue (connector_id, execution_id) VALUES ($1, $2)",
		2, head_types), head_args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not queue execution %lld", (long long) id);
	if (runnable &&
		SPI_execute_plan(sc_keep_plan(&new_head_plan,
			"INSERT INTO smartconnector_internal.queue_head (connector_id, head)"
			" SELECT $1, $2"
			"  WHERE $3 OR NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue_head h"
			"                           WHERE h.connector_id = $1)",
			3, head_types), head_args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not add the queue head of connector %lld", (long long) connector_id);
	sc_wake_at_commit();

	SPI_finish();
	sc_unpin_settings(nest);
	return id;
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
 * (locks.c): the row then stays, and the next attempt forgets it.  The
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
 * limit allow; admitted->id is its id, 0 if nothing may start, or, without
 * ADMIT_WAIT, ADMIT_BUSY when another transaction holds the connector's
 * admission lock (another admission, or a change of its status, limit,
 * handler or run_as); and, for executors or without ADMIT_WAIT,
 * ADMIT_HEAD_LOCKED when a cancel() not yet committed holds the oldest
 * queued execution (which may stay so for any time).
 * An executor (ADMIT_FOR_EXECUTOR) admits only connectors that have a
 * handler, claim() only those without one, as of the lock (a handler
 * given meanwhile wins).  With ADMIT_OCCUPY, this backend becomes the execution's runner
 * (its progress slot names it); without, the caller ends it in this same
 * transaction.
 * admitted->next_head is the connector's next queued execution (0 if none).
 *
 * The lock is kept to the end of the transaction only when something was
 * admitted; otherwise it is given back at once (nothing was written).
 */
static void
admit_connector(int64 connector_id, int flags, Admitted *admitted)
{
	static SPIPlanPtr lock_plan_0_1 = NULL;
	bool		for_executor = (flags & ADMIT_FOR_EXECUTOR) != 0;
	bool		wait = (flags & ADMIT_WAIT) != 0;
	Oid			types[2] = {INT8OID, BOOLOID};
	Datum		args[2] = {Int64GetDatum(connector_id), BoolGetDatum(for_executor)};
	bool		isnull;
	int64		limit;
	int			ret;

	memset(admitted, 0, sizeof(Admitted));
	require_read_committed("admission");
	if (!sc_lock_admissions(connector_id, wait))
	{
		admitted->id = ADMIT_BUSY;
		return;
	}

	/* a statement that starts after the lock: it sees every admission before ours */
	if (flags & ADMIT_SCHEMA_0_1)
		ret = SPI_execute_plan(sc_keep_plan(&lock_plan_0_1,
			CONNECTOR_ADMITS_SQL("x.status IN ('operational', 'need_attention')"),
			2, types), args, NULL, false, 1);
	else
		ret = SPI_execute_plan(sc_keep_plan(&lock_plan,
			CONNECTOR_ADMITS_SQL("smartconnector_internal.status_executable(x.status)"),
			2, types), args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read connector %lld", (long long) connector_id);
	if (SPI_processed == 0)
	{
		sc_unlock_admissions(connector_id);
		return;					/* gone, or may not execute now */
	}
	limit = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)) >= limit)
	{
		sc_unlock_admissions(connector_id);
		return;
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
			"                   WHERE n.connector_id = $1 AND n.execution_id > x.id),"
			"           x.diff_check, x.dry_run",
			1, types), args, NULL, false, 1);
		if (ret != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not admit an execution of connector %lld",
				 (long long) connector_id);
		if (SPI_processed == 1)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			Datum		next = SPI_getbinval(tup, desc, 2, &isnull);

			admitted->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			admitted->next_head = isnull ? 0 : DatumGetInt64(next);
			admitted->diff_check = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
			admitted->dry_run = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
			if (for_executor)
				update_queue_head(connector_id, admitted->next_head);

			if (flags & ADMIT_OCCUPY)
				sc_occupy_slot(admitted->id);
			if (flags & ADMIT_TO_GROUP)
				sc_add_to_group(admitted->id);
			return;
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
			return;
		}
		if (!wait || for_executor)
		{
			/* executors (and the launcher) never wait for a head: they serve others */
			sc_unlock_admissions(connector_id);
			admitted->id = ADMIT_HEAD_LOCKED;
			return;
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
admit_from_candidates(ScGroupFilter may_join, int64 *connector_id)
{
	int64		busy = 0;
	Admitted	admitted;
	int64		id;
	int			i;
	int			flags = ADMIT_FOR_EXECUTOR |
		(may_join != NULL ? ADMIT_TO_GROUP : ADMIT_OCCUPY);

	for (i = 0; i < n_candidates; i++)
	{
		if (may_join != NULL && !may_join(candidates[i].connector_id))
			continue;
		/* (with one candidate there is nothing to skip to) */
		if (n_candidates > 1 &&
			count_running(candidates[i].connector_id) >= candidates[i].limit)
			continue;
		admit_connector(candidates[i].connector_id, flags, &admitted);
		id = admitted.id;
		if (id == ADMIT_HEAD_LOCKED)
			continue;			/* a cancel in progress: try it again later */
		if (id == ADMIT_BUSY)
		{
			if (busy == 0 && sc_admissions_locked_by_executors(candidates[i].connector_id))
				busy = candidates[i].connector_id;
			continue;
		}
		*connector_id = candidates[i].connector_id;
		reposition_candidate(i, id != 0, admitted.next_head);
		if (id != 0)
			return id;
		i--;					/* the next candidate moved into place i */
	}
	/* a group only takes what is free now */
	if (busy == 0 || may_join != NULL || enqueues_locked_out == MyProc->lxid)
		return 0;
	admit_connector(busy, ADMIT_FOR_EXECUTOR | ADMIT_WAIT | ADMIT_OCCUPY, &admitted);
	id = admitted.id;
	if (id == ADMIT_HEAD_LOCKED)
		return 0;
	*connector_id = busy;
	i = candidate_index(busy);
	if (i >= 0)
		reposition_candidate(i, id != 0, admitted.next_head);
	return id;
}

/*
 * Admit the next admissible execution of any connector with a handler that
 * runs as role (an executor serves one role), from a connector with nothing
 * running first, otherwise the oldest queued first (see candidates): mark
 * it running and make this backend its runner.  Returns its id and sets
 * *connector_id, or returns 0 when nothing may start now.  Runs in the
 * caller's transaction.
 *
 * With may_join, the execution joins the group of executions this executor
 * admitted in the transaction (executor.c), from a connector may_join
 * accepts, without waiting for any lock; its progress slot names it as one
 * of its group.
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
sc_admit_next(Oid role, ScGroupFilter may_join, int64 *connector_id)
{
	int64		admitted = 0;
	int			nest = sc_pin_settings();
	bool		fresh = false;

	sc_spi_connect();

	if (n_candidates == 0 ||
		TimestampDifferenceExceeds(candidates_loaded_at, GetCurrentTimestamp(),
								   CANDIDATES_MAX_AGE_MS))
	{
		load_candidates(role);
		fresh = true;
	}
	admitted = admit_from_candidates(may_join, connector_id);
	if (admitted == 0 && !fresh && may_join == NULL)
	{
		load_candidates(role);
		admitted = admit_from_candidates(may_join, connector_id);
	}

	SPI_finish();
	sc_unpin_settings(nest);
	return admitted;
}

/*
 * What follows the end of an execution, as columns of a statement that
 * reads it as x joined to its connector as c: its deliveries
 * (SC_OUTBOX_COLUMNS), then whether the connector is chained to others.
 */
#define FOLLOWER_COLUMNS \
	SC_OUTBOX_COLUMNS "," \
	" EXISTS (SELECT 1 FROM smartconnector.chain ch" \
	"          WHERE ch.from_connector_id = x.connector_id)"
#define FOLLOWER_CHAINED (SC_OUTBOX_NCOLUMNS)

/*
 * Queue the webhook and emails of an ended execution and queue the
 * executions of the connectors chained to it, in the caller's transaction.
 * tup holds FOLLOWER_COLUMNS from column first on.  Expects SPI to be
 * connected and the settings to be pinned.
 */
static void
queue_followers(int64 execution_id, HeapTuple tup, TupleDesc desc, int first)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	bool		isnull;
	int			ret;
	uint64		n;

	sc_queue_deliveries(execution_id, tup, desc, first);
	if (!DatumGetBool(SPI_getbinval(tup, desc, first + FOLLOWER_CHAINED, &isnull)))
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

		/*
		 * Through enqueue()'s SQL wrapper, which is 0.1's own enqueue() while
		 * a 0.1 schema runs under this library (compat.c); chains are rare.
		 */
		for (uint64 i = 0; i < n; i++)
		{
			Datum		eargs[4];

			for (int k = 0; k < 4; k++)
				eargs[k] = SPI_getbinval(chains->vals[i], chains->tupdesc, k + 1, &isnull);
			if (SPI_execute_plan(sc_keep_plan(&chain_enqueue_plan,
				"SELECT smartconnector_internal.enqueue($1, $2, false, $4, 'chain', $3)",
				4, enqueue_types), eargs, NULL, false, 1) != SPI_OK_SELECT)
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

	sc_spi_connect();

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
	Admitted	admitted;
	int64		id;

	sc_spi_connect();
	admit_connector(connector_id, ADMIT_FOR_EXECUTOR, &admitted);
	id = admitted.id;
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
 * running -> an end state, for this session's own run (an executor's
 * handler, an external runner's finish()): write its buffered report, end
 * it (sc_end_execution()), and on success store its record hashes, in the
 * current transaction.  The slot is given up and the buffers forgotten when
 * this commits; if it aborts, nothing is lost and the caller may try again.
 *
 * Returns the end state's label (and its enum value, if state_oid is not
 * NULL), or NULL when the execution had already ended (cancelled while an
 * external runner worked on it).
 */
char *
sc_end_current(const char *error, const char *metadata_json, const char *handler_result_json,
			   ScCommitted committed, Oid *state_oid)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	ScRunInfo	run;
	char	   *state;

	if (!sc_current_run(&run))
		elog(ERROR, "no current smartconnector execution to complete");

	sc_spi_connect();
	sc_flush_report();
	state = sc_end_execution(run.execution_id, run.counts, error, metadata_json,
							 handler_result_json, committed, state_oid);
	if (state != NULL && strcmp(state, "success") == 0 && !run.dry_run)
		sc_flush_hashes();
	/* the label was allocated in SPI's context, which SPI_finish() deletes */
	if (state != NULL)
		state = MemoryContextStrdup(caller_cxt, state);
	SPI_finish();

	sc_clear_current_at_commit();
	return state;
}

/*
 * queued -> cancelled, or running -> cancel requested: cancel an
 * execution.  A queued one ends cancelled at once; a running one is
 * interrupted (at commit) and ends cancelled when its runner records the
 * outcome, keeping what it committed; an external runner cannot be made to
 * stop, so its execution ends cancelled now and its slot is free.  Returns
 * false (with a NOTICE) when it had already ended.
 */
static bool
cancel_execution(int64 execution_id)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	bool		isnull;
	int64		connector_id;
	char	   *state;
	bool		external;

	if (SPI_execute_plan(sc_keep_plan(&runner_connector_plan,
		"SELECT x.connector_id FROM smartconnector.execution x WHERE x.id = $1",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read execution %lld", (long long) execution_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("execution %lld does not exist", (long long) execution_id)));
	connector_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											   &isnull));

	/*
	 * Queued: take it out of the queue.  Like admission, lock the queue row
	 * before the execution row, so the two never deadlock; if admission got
	 * there first, the execution is running by the time we look again.
	 */
	{
		Oid			qtypes[2] = {INT8OID, INT8OID};
		Datum		qargs[2] = {Int64GetDatum(connector_id), Int64GetDatum(execution_id)};

		if (SPI_execute_plan(sc_keep_plan(&unqueue_plan,
			"DELETE FROM smartconnector_internal.queue q"
			" WHERE q.connector_id = $1 AND q.execution_id = $2",
			2, qtypes), qargs, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not take execution %lld out of the queue", (long long) execution_id);
	}
	if (SPI_processed > 0)
	{
		if (SPI_execute_plan(sc_keep_plan(&cancelled_plan,
			"UPDATE smartconnector.execution x"
			"   SET state = 'cancelled', ended_at = pg_catalog.clock_timestamp(),"
			"       cancel_requested = true,"
			"       metadata = x.metadata"
			"           || jsonb_build_object('cancelled_by', smartconnector.calling_role())"
			"  FROM smartconnector.connector c"
			" WHERE x.id = $1 AND c.id = x.connector_id"
			" RETURNING" FOLLOWER_COLUMNS,
			1, types), args, NULL, false, 1) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not cancel execution %lld", (long long) execution_id);
		if (SPI_processed == 1)
			queue_followers(execution_id, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		/* also marks the transaction: a PREPAREd cancel would hold the queue's head */
		sc_wake_at_commit();
		return true;
	}

	/* an executor committing the handler's work holds the row: interrupt it first */
	(void) sc_signal_runner(execution_id, true);
	if (SPI_execute_plan(sc_keep_plan(&lock_running_plan,
		"SELECT x.state::text, c.handler IS NULL"
		"  FROM smartconnector.execution x"
		"  JOIN smartconnector.connector c ON c.id = x.connector_id"
		" WHERE x.id = $1"
		"   FOR UPDATE OF x",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not lock execution %lld", (long long) execution_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("execution %lld does not exist", (long long) execution_id)));
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	external = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
										  &isnull));
	if (strcmp(state, "running") != 0)
	{
		ereport(NOTICE,
				(errmsg("execution %lld has already ended: %s", (long long) execution_id, state)));
		return false;
	}
	if (SPI_execute_plan(sc_keep_plan(&cancel_requested_plan,
		"UPDATE smartconnector.execution x"
		"   SET cancel_requested = true,"
		"       metadata = x.metadata"
		"           || jsonb_build_object('cancelled_by', smartconnector.calling_role())"
		" WHERE x.id = $1",
		1, types), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not cancel execution %lld", (long long) execution_id);
	if (external)
	{
		int64		counts[SC_NUM_ACTIONS] = {0};

		(void) sc_runner_counts(execution_id, counts);
		(void) sc_end_execution(execution_id, counts, NULL, NULL, NULL,
								SC_COMMITTED_UNKNOWN, NULL);
	}
	sc_signal_runner_at_commit(execution_id);
	return true;
}

/* One execution for end_dead_run() */
typedef struct DeadRun
{
	int64		execution_id;
	bool		in_database;	/* run by an executor (whose transaction died with it) */
	const ScStopReason *stop;	/* why the launcher stopped it, or NULL */
} DeadRun;

/*
 * running -> failed (or cancelled), for one execution whose runner is
 * gone, with what the runner published of its counts.  A row someone holds
 * is left for the next pass: the dying runner's own transaction, or a
 * cancel() waiting for it, which then ends it as cancelled.
 */
static void
end_dead_run(void *arg)
{
	DeadRun    *dead = (DeadRun *) arg;
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(dead->execution_id)};
	int64		counts[SC_NUM_ACTIONS] = {0};
	StringInfoData metadata;

	if (SPI_execute_plan(sc_keep_plan(&hold_plan,
		"SELECT 1 FROM smartconnector.execution x"
		" WHERE x.id = $1 AND x.state::text = 'running' FOR UPDATE SKIP LOCKED",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not lock execution %lld", (long long) dead->execution_id);
	if (SPI_processed == 0)
		return;
	(void) sc_runner_counts(dead->execution_id, counts);
	if (dead->stop != NULL && dead->stop->cancelled &&
		SPI_execute_plan(sc_keep_plan(&dead_cancel_plan,
			"UPDATE smartconnector.execution x SET cancel_requested = true WHERE x.id = $1",
			1, types), args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not cancel execution %lld", (long long) dead->execution_id);
	initStringInfo(&metadata);
	appendStringInfoChar(&metadata, '{');
	if (dead->stop != NULL)
	{
		appendStringInfoString(&metadata, "\"stopped\": ");
		escape_json(&metadata, dead->stop->reason);
	}
	appendStringInfoChar(&metadata, '}');
	(void) sc_end_execution(dead->execution_id, counts,
							dead->stop != NULL ? dead->stop->reason :
							"runner ended before the execution finished (its session or worker exited)",
							metadata.data, NULL,
							dead->in_database ? SC_COMMITTED_NO : SC_COMMITTED_UNKNOWN, NULL);
}

/*
 * The launcher's pass over running executions: end those whose runner is
 * gone (no live backend's progress slot names them), with the reason the
 * launcher gives for those whose executor it terminated (stops[]: one
 * terminated because its handler ignored cancel() ends cancelled, even
 * when that cancel() has not committed yet).  One that cannot be ended now
 * because a user's open transaction holds a lock it needs (the launcher's
 * lock_timeout) is left for the next pass.  Returns how many are running.
 */
int
sc_end_dead_runs(const ScStopReason *stops, int n_stops)
{
	int			nest = sc_pin_settings();
	bool		isnull;
	SPITupleTable *running;
	uint64		n;
	int			count;

	sc_spi_connect();
	if (SPI_execute_plan(sc_keep_plan(&running_plan,
		"SELECT e.id, c.handler IS NOT NULL"
		"  FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id"
		" WHERE e.state = 'running' ORDER BY e.id",
		0, NULL), NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the running executions");
	running = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		DeadRun		dead;

		dead.execution_id = DatumGetInt64(SPI_getbinval(running->vals[i], running->tupdesc, 1,
														&isnull));
		if (sc_runner_alive(dead.execution_id))
			continue;
		dead.in_database = DatumGetBool(SPI_getbinval(running->vals[i], running->tupdesc, 2,
													   &isnull));
		dead.stop = NULL;
		for (int k = 0; k < n_stops && dead.stop == NULL; k++)
			if (stops[k].execution_id == dead.execution_id)
				dead.stop = &stops[k];
		(void) sc_try_in_subtransaction(end_dead_run, &dead);
	}
	SPI_freetuptable(running);

	if (SPI_execute_plan(sc_keep_plan(&count_all_plan,
		"SELECT count(*)::int FROM smartconnector.execution WHERE state = 'running'",
		0, NULL), NULL, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not count the running executions");
	count = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	sc_unpin_settings(nest);
	return count;
}

/*
 * An execution's state (an enum value), or *found false.  SPI connected.
 */
static Datum
execution_state(int64 execution_id, bool *found)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	bool		isnull;

	if (SPI_execute_plan(sc_keep_plan(&state_plan,
		"SELECT e.state FROM smartconnector.execution e WHERE e.id = $1",
		1, types), args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read execution %lld", (long long) execution_id);
	*found = SPI_processed == 1;
	if (!*found)
		return (Datum) 0;
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
}

/*
 * A session's execution that was cancelled and then deleted by cleanup():
 * forget it, saying so.  Returns whether it did.  SPI connected.
 */
static bool
forget_deleted_current(void)
{
	int64		mine = sc_current_execution_id();
	bool		found;

	if (mine == 0)
		return false;
	(void) execution_state(mine, &found);
	if (found)
		return false;
	sc_clear_current();
	ereport(WARNING,
			(errmsg("execution %lld no longer exists", (long long) mine),
			 errdetail("It was cancelled, and its history was deleted (smartconnector.history_retention or cleanup()) before this session finished it; its report is lost.")));
	return true;
}

/*
 * queued -> running for an external runner: admit the next execution of a
 * connector without a handler and make this session its runner (until
 * finish(), or until the session ends); 0 if none may start now.  Waits for
 * the connector's admission lock, and for a cancel() that holds its head.
 * schema_0_1: called by 0.1's claim() (compat.c).
 */
int64
sc_claim_next(int64 connector_id, bool schema_0_1, bool *diff_check, bool *dry_run)
{
	int			nest = sc_pin_settings();
	Admitted	admitted;

	sc_spi_connect();
	admit_connector(connector_id, ADMIT_WAIT | ADMIT_OCCUPY | (schema_0_1 ? ADMIT_SCHEMA_0_1 : 0),
					&admitted);
	SPI_finish();
	sc_unpin_settings(nest);
	*diff_check = admitted.diff_check;
	*dry_run = admitted.dry_run;
	return Max(admitted.id, 0);
}

/*
 * The deliveries and chained executions of an execution that has just
 * ended outside sc_end_execution() (0.1's cancel()); see compat.c.
 */
void
sc_queue_followers_of(int64 execution_id)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	int			nest = sc_pin_settings();

	sc_spi_connect();
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
}

/* ---- SQL-callable wrappers ---- */

/*
 * enqueue(connector_id bigint, input jsonb, disable_diff_check boolean,
 * dry_run boolean, trigger_type text, initiated_by name) returns bigint:
 * trigger(), schedules and chain tests queue through it.
 */
Datum
enqueue(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connector_id must not be NULL")));
	PG_RETURN_INT64(enqueue_execution(PG_GETARG_INT64(0),
									  PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
									  !PG_ARGISNULL(2) && PG_GETARG_BOOL(2),
									  !PG_ARGISNULL(3) && PG_GETARG_BOOL(3),
									  PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4)),
									  PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5)));
}

/*
 * claim(api_name text) returns bigint: the next execution of a connector
 * without a handler, which this session then runs until finish(); NULL if
 * none may start now.
 */
Datum
claim(PG_FUNCTION_ARGS)
{
	Oid			types[1] = {TEXTOID};
	Oid			id_types[1] = {INT8OID};
	Datum		args[1];
	char		nulls[1] = {' '};
	int			nest;
	bool		isnull;
	bool		diff_check;
	bool		dry_run;
	int64		connector_id;
	int64		mine;
	int64		id;

	require_read_committed("smartconnector.claim()");
	nest = sc_pin_settings();
	sc_spi_connect();
	args[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	/*
	 * connector_id() resolves aliases and raises the errors of a bad name; in
	 * a statement of its own, so that it runs (and warns of an alias) once
	 */
	if (SPI_execute_plan(sc_keep_plan(&claim_id_plan,
		"SELECT smartconnector.connector_id($1)",
		1, types), args, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not resolve the connector to claim from");
	connector_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
											   &isnull));
	args[0] = Int64GetDatum(connector_id);
	if (SPI_execute_plan(sc_keep_plan(&claim_plan,
		"SELECT c.id, c.handler IS NOT NULL, c.api_name"
		"  FROM smartconnector.connector c WHERE c.id = $1",
		1, id_types), args, NULL, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read connector %lld", (long long) connector_id);
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connector \"%s\" is run by its handler",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3)),
				 errhint("claim() is for connectors without a handler, run by an external program.")));
	mine = sc_current_execution_id();
	if (mine != 0 && forget_deleted_current())
		mine = 0;
	if (mine != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this session already runs execution %lld", (long long) mine),
				 errhint("Call smartconnector.finish(%lld) first.", (long long) mine)));
	SPI_finish();
	sc_unpin_settings(nest);

	id = sc_claim_next(connector_id, false, &diff_check, &dry_run);
	if (id == 0)
		PG_RETURN_NULL();
	sc_begin_current(id, connector_id, diff_check, dry_run, SC_PHASE_EXTERNAL);
	sc_forget_current_on_abort();
	/* the launcher watches running executions for dead runners */
	sc_wake_at_commit();
	PG_RETURN_INT64(id);
}

/*
 * finish(execution_id bigint, error text, metadata jsonb) returns
 * execution_state: end the execution this session claimed.
 */
Datum
finish(PG_FUNCTION_ARGS)
{
	int64		id;
	int			nest;
	bool		found;
	Datum		state;
	Oid			final;
	ScRunInfo	run;
	char	   *error = NULL;
	char	   *metadata = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("execution_id must not be NULL")));
	id = PG_GETARG_INT64(0);
	nest = sc_pin_settings();
	sc_spi_connect();
	if (sc_current_execution_id() == 0 || sc_current_execution_id() != id)
	{
		state = execution_state(id, &found);
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("execution %lld does not exist", (long long) id)));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("execution %lld is not run by this session", (long long) id),
				 errdetail("Its state is %s.",
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
				 errhint("Only the session that claimed an execution can finish it.")));
	}
	if (forget_deleted_current())
	{
		SPI_finish();
		sc_unpin_settings(nest);
		PG_RETURN_NULL();
	}
	(void) sc_current_run(&run);
	if (!run.external)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("execution %lld is run by its handler", (long long) id),
				 errhint("finish() is for external runners; a handler ends its execution by returning, or by raising an error.")));
	if (run.ending)
	{
		/* finished already in this transaction: its report is written */
		state = execution_state(id, &found);
		ereport(WARNING,
				(errmsg("execution %lld was already finished in this transaction", (long long) id)));
		SPI_finish();
		sc_unpin_settings(nest);
		PG_RETURN_DATUM(state);
	}
	SPI_finish();
	sc_unpin_settings(nest);

	if (!PG_ARGISNULL(1))
		error = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
		metadata = DatumGetCString(DirectFunctionCall1(jsonb_out, PG_GETARG_DATUM(2)));
	if (sc_end_current(error, metadata, NULL, SC_COMMITTED_UNKNOWN, &final) != NULL)
		PG_RETURN_OID(final);

	/* cancelled while this session worked on it */
	nest = sc_pin_settings();
	sc_spi_connect();
	state = execution_state(id, &found);
	ereport(WARNING,
			(errmsg("execution %lld had already ended: %s", (long long) id,
					found ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : "deleted")));
	SPI_finish();
	sc_unpin_settings(nest);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(state);
}

/*
 * cancel_impl(execution_id bigint) returns boolean: cancel() (see
 * cancel_execution()).
 */
Datum
cancel_impl(PG_FUNCTION_ARGS)
{
	int			nest = sc_pin_settings();
	bool		cancelled;

	sc_spi_connect();
	cancelled = cancel_execution(PG_GETARG_INT64(0));
	SPI_finish();
	sc_unpin_settings(nest);
	PG_RETURN_BOOL(cancelled);
}
