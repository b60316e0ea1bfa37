/*-------------------------------------------------------------------------
 *
 * run.c
 *		The session's run: its current execution (an executor's handler, or
 *		an external runner between claim() and finish()), with its progress
 *		slot, and what a run calls: record(), lock_record(), the diff-check
 *		hashes, progress().
 *
 * A session has at most one current execution: an executor worker while it
 * runs a handler, or an external runner between claim() and finish().
 * record() does not write to tables: the report rows and the new record
 * hashes are buffered in tuplestores that outlive transactions (interXact,
 * so they spill to temporary files that survive an abort).  That is what
 * keeps the report of a failed handler, whose own writes are rolled back,
 * and of a dry run, whose writes are rolled back on purpose.  The buffers
 * are written in the transaction that ends the execution, and forgotten
 * only once that transaction has committed.  Ending is the state
 * machine's (execution.c, sc_end_current()), which writes the buffers
 * through sc_flush_report() and sc_flush_hashes(); this file calls nothing
 * above it.
 *
 * Counts are mirrored into this backend's shared progress slot, so other
 * sessions see progress while the execution runs.  The slot is also the
 * execution's liveness (shmem.c): it is taken in the admitting transaction
 * (sc_occupy_slot), and given up when the ending transaction commits, when
 * the backend exits, or when an external runner's session runs DISCARD ALL
 * (as a connection pooler does when its client has gone).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "common/hashfn.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(record);
PG_FUNCTION_INFO_V1(lock_record);
PG_FUNCTION_INFO_V1(current_execution);
PG_FUNCTION_INFO_V1(current_execution_info);
PG_FUNCTION_INFO_V1(remember_hash);
PG_FUNCTION_INFO_V1(progress);

/* Rows per INSERT when writing buffered report rows and hashes */
#define FLUSH_BATCH 1000

static const char *const action_names[SC_NUM_ACTIONS] = {
	"created", "updated", "skipped", "failed"
};

typedef struct CurrentExecution
{
	int64		execution_id;
	int64		connector_id;
	bool		diff_check;
	bool		dry_run;
	bool		external;		/* claim()ed by this session, not a handler's */
	bool		ending;			/* ended by this transaction, not committed yet */
	int64		counts[SC_NUM_ACTIONS];
	int32		next_seq;
	MemoryContext cxt;			/* everything below lives here */
	TupleDesc	report_desc;	/* (seq int4, record_key text, action text, detail text) */
	Tuplestorestate *report;
	TupleDesc	hash_desc;		/* (record_key text, hash bytea) */
	Tuplestorestate *hashes;
} CurrentExecution;

static CurrentExecution *current = NULL;
static SPIPlanPtr report_plan = NULL;
static SPIPlanPtr hash_plan = NULL;
static bool exit_callback_registered = false;
static ProcessUtility_hook_type prev_utility_hook = NULL;

static void release_slot_at_exit(int code, Datum arg);
static void utility_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						 ProcessUtilityContext context, ParamListInfo params,
						 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc);
static CurrentExecution *require_current(const char *caller);
static void publish_counts(void);
static void clear_current_action(int64 arg);

/*
 * The id of this session's current execution, or 0.
 */
int64
sc_current_execution_id(void)
{
	return current ? current->execution_id : 0;
}

/*
 * before_shmem_exit: this backend runs no execution any more.
 */
static void
release_slot_at_exit(int code, Datum arg)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot != NULL)
		pg_atomic_write_u64(&slot->execution_id, 0);
	sc_remove_from_group(0);
}

/*
 * Claim this backend's progress slot for an execution it is admitting: from
 * here on (once the admission commits) the execution is alive as long as
 * this backend is.  Given up again if the transaction aborts.
 */
void
sc_occupy_slot(int64 execution_id)
{
	ScProgressSlot *slot = sc_my_progress_slot();
	int64		held;

	if (slot == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("smartconnector must be loaded via \"shared_preload_libraries\"")));
	held = (int64) pg_atomic_read_u64(&slot->execution_id);
	if (held != 0 && held != execution_id)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this session already runs execution %lld", (long long) held)));
	if (!exit_callback_registered)
	{
		before_shmem_exit(release_slot_at_exit, (Datum) 0);
		exit_callback_registered = true;
	}
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
		pg_atomic_write_u64(&slot->counts[k], 0);
	SpinLockAcquire(&sc_shared->mutex);
	slot->pid = MyProcPid;
	slot->phase = SC_PHASE_ADMITTED;
	slot->stop_by = 0;
	slot->stop_for_cancel = false;
	slot->cancel_pending = false;
	slot->overran[0] = '\0';
	SpinLockRelease(&sc_shared->mutex);
	pg_atomic_write_u64(&slot->execution_id, (uint64) execution_id);
	sc_forget_current_on_abort();
}

static void
clear_current_action(int64 arg)
{
	sc_clear_current();
}

static void
not_ending_action(int64 execution_id)
{
	if (current != NULL && current->execution_id == execution_id)
		current->ending = false;
}

/*
 * Forget this session's current execution when the transaction that ends
 * it commits; until then it is "ending" (unless that (sub)transaction
 * aborts), or when it aborts (its admission).
 */
void
sc_clear_current_at_commit(void)
{
	current->ending = true;
	sc_at_commit(clear_current_action, 0);
	sc_on_abort(not_ending_action, current->execution_id);
}

void
sc_forget_current_on_abort(void)
{
	sc_on_abort(clear_current_action, 0);
}

/*
 * What the state machine needs of the current execution; false if none.
 */
bool
sc_current_run(ScRunInfo *info)
{
	if (current == NULL)
		return false;
	info->execution_id = current->execution_id;
	info->connector_id = current->connector_id;
	info->dry_run = current->dry_run;
	info->external = current->external;
	info->ending = current->ending;
	info->counts = current->counts;
	return true;
}

/*
 * ProcessUtility hook: DISCARD ALL in an external runner's session ends its
 * claim, as the session's end would.  (A handler cannot run DISCARD ALL:
 * it runs inside a transaction.)
 */
static void
utility_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			 ProcessUtilityContext context, ParamListInfo params,
			 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	bool		discard_all = IsA(stmt, DiscardStmt) &&
		((DiscardStmt *) stmt)->target == DISCARD_ALL;

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
	if (discard_all && current != NULL)
	{
		ereport(WARNING,
				(errmsg("DISCARD ALL ended this session's run of execution %lld",
						(long long) current->execution_id),
				 errdetail("It fails as an execution whose runner ended.")));
		sc_clear_current();
	}
}

/*
 * Install the ProcessUtility hook (from _PG_init).
 */
void
sc_install_utility_hook(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = utility_hook;
}

/*
 * Make execution_id this session's current execution, with empty buffers.
 */
void
sc_begin_current(int64 execution_id, int64 connector_id, bool diff_check,
				 bool dry_run, ScPhase phase)
{
	MemoryContext cxt;
	MemoryContext old;
	ScProgressSlot *slot;

	if (current != NULL)
		sc_clear_current();

	cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector execution",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	current = palloc0(sizeof(CurrentExecution));
	current->cxt = cxt;
	current->execution_id = execution_id;
	current->connector_id = connector_id;
	current->diff_check = diff_check;
	current->dry_run = dry_run;
	current->external = phase == SC_PHASE_EXTERNAL;

	current->report_desc = CreateTemplateTupleDesc(4);
	TupleDescInitEntry(current->report_desc, 1, "seq", INT4OID, -1, 0);
	TupleDescInitEntry(current->report_desc, 2, "record_key", TEXTOID, -1, 0);
	TupleDescInitEntry(current->report_desc, 3, "action", TEXTOID, -1, 0);
	TupleDescInitEntry(current->report_desc, 4, "detail", TEXTOID, -1, 0);
	current->report = tuplestore_begin_heap(false, true, work_mem);

	current->hash_desc = CreateTemplateTupleDesc(2);
	TupleDescInitEntry(current->hash_desc, 1, "record_key", TEXTOID, -1, 0);
	TupleDescInitEntry(current->hash_desc, 2, "hash", BYTEAOID, -1, 0);
	current->hashes = tuplestore_begin_heap(false, true, work_mem);
	MemoryContextSwitchTo(old);

	slot = sc_my_progress_slot();
	if (slot != NULL)
	{
		for (int k = 0; k < SC_NUM_ACTIONS; k++)
			pg_atomic_write_u64(&slot->counts[k], 0);
		pg_atomic_write_u64(&slot->execution_id, (uint64) execution_id);
		SpinLockAcquire(&sc_shared->mutex);
		slot->pid = MyProcPid;
		slot->phase = phase;
		SpinLockRelease(&sc_shared->mutex);
	}
}

/*
 * Say what this session does with its current execution (for cancel()).
 * Returns whether a cancel came while the execution was on its way to a
 * phase that runs user code (see sc_signal_runner), which the caller then
 * honours.
 */
bool
sc_set_phase(ScPhase phase)
{
	ScProgressSlot *slot = sc_my_progress_slot();
	bool		pending = false;

	if (slot == NULL)
		return false;
	SpinLockAcquire(&sc_shared->mutex);
	slot->phase = phase;
	if (SC_PHASE_RUNS_USER_CODE(phase))
	{
		pending = slot->cancel_pending;
		slot->cancel_pending = false;
	}
	SpinLockRelease(&sc_shared->mutex);
	return pending;
}

/*
 * Forget the current execution and its buffers (temporary files included).
 */
void
sc_clear_current(void)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot != NULL)
	{
		SpinLockAcquire(&sc_shared->mutex);
		slot->phase = SC_PHASE_IDLE;
		slot->stop_by = 0;
		slot->stop_for_cancel = false;
		slot->cancel_pending = false;
		slot->overran[0] = '\0';
		SpinLockRelease(&sc_shared->mutex);
		pg_atomic_write_u64(&slot->execution_id, 0);
	}
	if (current == NULL)
		return;
	tuplestore_end(current->report);
	tuplestore_end(current->hashes);
	MemoryContextDelete(current->cxt);
	current = NULL;
}

/*
 * The current execution, or an error telling the caller where it may be
 * called from.
 */
static CurrentExecution *
require_current(const char *caller)
{
	if (current == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s can only be called while an execution runs", caller),
				 errhint("Call it from a connector's handler, or after smartconnector.claim() in an external runner.")));
	return current;
}

/*
 * Copy the local counts into the shared progress slot.
 */
static void
publish_counts(void)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot == NULL)
		return;
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
		pg_atomic_write_u64(&slot->counts[k], (uint64) current->counts[k]);
}

/*
 * record(record_key text, action text, detail text DEFAULT NULL) returns void
 *
 * Count a record and add it to the output report.
 */
Datum
record(PG_FUNCTION_ARGS)
{
	CurrentExecution *cur = require_current("smartconnector.record()");
	text	   *key;
	char	   *action;
	int			which = -1;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	MemoryContext old;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("record_key and action must not be NULL")));
	key = PG_GETARG_TEXT_PP(0);
	action = text_to_cstring(PG_GETARG_TEXT_PP(1));
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
	{
		if (strcmp(action, action_names[k]) == 0)
			which = k;
	}
	if (which < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid record action: \"%s\"", action),
				 errhint("Use created, updated, skipped or failed.")));
	if (VARSIZE_ANY_EXHDR(key) > SC_MAX_RECORD_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("record_key is longer than %d bytes", SC_MAX_RECORD_KEY_LENGTH)));
	if (!PG_ARGISNULL(2) &&
		VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(2)) > SC_MAX_RECORD_DETAIL_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("record detail is longer than %d bytes", SC_MAX_RECORD_DETAIL_LENGTH)));

	values[0] = Int32GetDatum(++cur->next_seq);
	values[1] = PointerGetDatum(key);
	values[2] = CStringGetTextDatum(action_names[which]);
	if (PG_ARGISNULL(2))
		nulls[3] = true;
	else
		values[3] = PointerGetDatum(PG_GETARG_TEXT_PP(2));

	old = MemoryContextSwitchTo(cur->cxt);
	tuplestore_putvalues(cur->report, cur->report_desc, values, nulls);
	MemoryContextSwitchTo(old);

	cur->counts[which]++;
	publish_counts();
	PG_RETURN_VOID();
}

/*
 * lock_record(record_key text) returns void
 *
 * Serialise executions of the same connector that touch the same record:
 * a transaction-level lock on (connector, hash of the key), waited for.
 * Hash collisions can only make two records wait for each other, never let
 * two writers of one record through.
 */
Datum
lock_record(PG_FUNCTION_ARGS)
{
	CurrentExecution *cur = require_current("smartconnector.lock_record()");
	text	   *key = PG_GETARG_TEXT_PP(0);
	uint32		hash;
	LOCKTAG		tag;

	hash = DatumGetUInt32(hash_any((unsigned char *) VARDATA_ANY(key),
								   VARSIZE_ANY_EXHDR(key)));
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) cur->connector_id, hash,
						 SC_LOCKSPACE_RECORD);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	PG_RETURN_VOID();
}

/*
 * current_execution() returns bigint: this session's execution, or NULL.
 */
Datum
current_execution(PG_FUNCTION_ARGS)
{
	if (current == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64(current->execution_id);
}

/*
 * current_execution_info(OUT execution_id bigint, OUT connector_id bigint,
 *						  OUT diff_check boolean, OUT dry_run boolean)
 */
Datum
current_execution_info(PG_FUNCTION_ARGS)
{
	CurrentExecution *cur = require_current("smartconnector.unchanged()");
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "current_execution_info must return a composite type");
	values[0] = Int64GetDatum(cur->execution_id);
	values[1] = Int64GetDatum(cur->connector_id);
	values[2] = BoolGetDatum(cur->diff_check);
	values[3] = BoolGetDatum(cur->dry_run);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * remember_hash(record_key text, hash bytea) returns void: the hash to store
 * for the record if this execution succeeds.
 */
Datum
remember_hash(PG_FUNCTION_ARGS)
{
	CurrentExecution *cur = require_current("smartconnector.unchanged()");
	Datum		values[2];
	bool		nulls[2] = {false, false};
	MemoryContext old;

	/* refused now, like record() does, not by the index when finish() stores it */
	if (VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)) > SC_MAX_RECORD_KEY_LENGTH)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("record_key is longer than %d bytes", SC_MAX_RECORD_KEY_LENGTH)));
	values[0] = PointerGetDatum(PG_GETARG_TEXT_PP(0));
	values[1] = PointerGetDatum(PG_GETARG_BYTEA_PP(1));
	old = MemoryContextSwitchTo(cur->cxt);
	tuplestore_putvalues(cur->hashes, cur->hash_desc, values, nulls);
	MemoryContextSwitchTo(old);
	PG_RETURN_VOID();
}

/*
 * Write the buffered report rows, FLUSH_BATCH at a time (for the state
 * machine, which ends the execution in the same transaction).  SPI
 * connected.
 */
void
sc_flush_report(void)
{
	Oid			types[5] = {INT8OID, INT4ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	SPIPlanPtr	plan = sc_keep_plan(&report_plan,
									"INSERT INTO smartconnector.execution_record"
									" (execution_id, seq, record_key, action, detail)"
									" SELECT $1, u.* FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3),"
									" pg_catalog.unnest($4), pg_catalog.unnest($5)) AS u",
									5, types);
	MemoryContext batch_cxt = AllocSetContextCreate(CurrentMemoryContext,
													"smartconnector report batch",
													ALLOCSET_DEFAULT_SIZES);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(current->report_desc, &TTSOpsMinimalTuple);
	Datum		cols[4][FLUSH_BATCH];
	bool		col_nulls[4][FLUSH_BATCH];
	int			n = 0;
	bool		more = true;

	tuplestore_rescan(current->report);
	while (more)
	{
		more = tuplestore_gettupleslot(current->report, true, true, slot);
		if (more)
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);

			slot_getallattrs(slot);
			for (int c = 0; c < 4; c++)
			{
				col_nulls[c][n] = slot->tts_isnull[c];
				if (slot->tts_isnull[c])
					cols[c][n] = (Datum) 0;
				else if (c == 0)
					cols[c][n] = slot->tts_values[c];
				else
					cols[c][n] = datumCopy(slot->tts_values[c], false, -1);
			}
			n++;
			MemoryContextSwitchTo(old);
		}
		if (n == FLUSH_BATCH || (!more && n > 0))
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);
			Datum		args[5];
			int			dims[1] = {n};
			int			lbs[1] = {1};
			int			ret;

			args[0] = Int64GetDatum(current->execution_id);
			args[1] = PointerGetDatum(construct_md_array(cols[0], col_nulls[0], 1, dims, lbs,
														 INT4OID, 4, true, TYPALIGN_INT));
			for (int c = 1; c < 4; c++)
				args[c + 1] = PointerGetDatum(construct_md_array(cols[c], col_nulls[c], 1, dims, lbs,
																 TEXTOID, -1, false, TYPALIGN_INT));
			MemoryContextSwitchTo(old);
			ret = SPI_execute_plan(plan, args, NULL, false, 0);
			if (ret != SPI_OK_INSERT)
				elog(ERROR, "could not write the output report: %s", SPI_result_code_string(ret));
			MemoryContextReset(batch_cxt);
			n = 0;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(batch_cxt);
}

/*
 * Store the hashes of the records this successful execution processed;
 * the last hash given for a key wins.  SPI connected.
 */
void
sc_flush_hashes(void)
{
	Oid			types[4] = {INT8OID, INT8OID, TEXTARRAYOID, BYTEAARRAYOID};
	SPIPlanPtr	plan = sc_keep_plan(&hash_plan,
									"INSERT INTO smartconnector.record_hash AS h"
									" (connector_id, record_key, hash, execution_id)"
									" SELECT DISTINCT ON (u.k) $1, u.k, u.h, $2"
									"   FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4))"
									"        WITH ORDINALITY AS u(k, h, n)"
									"  ORDER BY u.k, u.n DESC"
									" ON CONFLICT (connector_id, record_key) DO UPDATE"
									"   SET hash = excluded.hash, execution_id = excluded.execution_id",
									4, types);
	MemoryContext batch_cxt = AllocSetContextCreate(CurrentMemoryContext,
													"smartconnector hash batch",
													ALLOCSET_DEFAULT_SIZES);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(current->hash_desc, &TTSOpsMinimalTuple);
	Datum		cols[2][FLUSH_BATCH];
	int			n = 0;
	bool		more = true;

	tuplestore_rescan(current->hashes);
	while (more)
	{
		more = tuplestore_gettupleslot(current->hashes, true, true, slot);
		if (more)
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);

			slot_getallattrs(slot);
			cols[0][n] = datumCopy(slot->tts_values[0], false, -1);
			cols[1][n] = datumCopy(slot->tts_values[1], false, -1);
			n++;
			MemoryContextSwitchTo(old);
		}
		if (n == FLUSH_BATCH || (!more && n > 0))
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);
			Datum		args[4];
			int			ret;

			args[0] = Int64GetDatum(current->connector_id);
			args[1] = Int64GetDatum(current->execution_id);
			args[2] = PointerGetDatum(construct_array(cols[0], n, TEXTOID, -1, false, TYPALIGN_INT));
			args[3] = PointerGetDatum(construct_array(cols[1], n, BYTEAOID, -1, false, TYPALIGN_INT));
			MemoryContextSwitchTo(old);
			ret = SPI_execute_plan(plan, args, NULL, false, 0);
			if (ret != SPI_OK_INSERT)
				elog(ERROR, "could not store record hashes: %s", SPI_result_code_string(ret));
			MemoryContextReset(batch_cxt);
			n = 0;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(batch_cxt);
}

/*
 * progress() returns setof (execution_id, pid, records_created, ...)
 *
 * The live counts of every execution some session is running now.
 */
Datum
progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (sc_shared == NULL)
		return (Datum) 0;

	for (int i = 0; i < sc_shared->num_progress_slots; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};
		int64		id = (int64) pg_atomic_read_u64(&slot->execution_id);
		int64		total = 0;
		pid_t		pid;

		if (id == 0)
			continue;
		SpinLockAcquire(&sc_shared->mutex);
		pid = slot->pid;
		SpinLockRelease(&sc_shared->mutex);
		values[0] = Int64GetDatum(id);
		values[1] = Int32GetDatum(pid);
		for (int k = 0; k < SC_NUM_ACTIONS; k++)
		{
			int64		count = (int64) pg_atomic_read_u64(&slot->counts[k]);

			values[2 + k] = Int64GetDatum(count);
			total += count;
		}
		values[6] = Int64GetDatum(total);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
