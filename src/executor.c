/*-------------------------------------------------------------------------
 *
 * executor.c
 *		Executor background workers: long-lived processes that admit the
 *		next execution of a connector with a handler, run the handler as
 *		the connector's run_as role, and record the outcome.
 *
 * The launcher starts executors on demand (up to smartconnector.max_workers)
 * and sets their latches when work arrives.  An executor keeps its database
 * connection across executions and exits after
 * smartconnector.executor_idle_timeout without work.
 *
 * Transactions per execution: one to admit (ends with the execution
 * "running" and its session lock held), one to run the handler and record
 * the outcome together, so that the handler's writes and the end state
 * commit atomically.  If the handler raises, that transaction is rolled back
 * and a third one records the failure with the report gathered so far.  A
 * dry run executes the handler inside a subtransaction that is always rolled
 * back.
 *
 * Interrupts: cancel() interrupts a running handler with SIGINT (a query
 * cancel).  Query cancel is held off everywhere except while the handler
 * runs, so a late signal can never break admission or the recording of an
 * outcome; such a cancel is still honoured, because the outcome is
 * "cancelled" whenever cancel_requested is set.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_proc.h"
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
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

/* What the executor needs to know to run one execution */
typedef struct ExecInfo
{
	int64		execution_id;
	int64		connector_id;
	char	   *api_name;
	bool		has_handler;
	bool		is_procedure;
	Oid			handler;		/* the routine's OID, the key of its kept plan */
	char	   *call_sql;		/* "SELECT ns.fn($1::jsonb)" or "CALL ..." */
	Oid			run_as;
	bool		dry_run;
	bool		diff_check;
	bool		cancel_requested;
	char	   *problem;		/* why it cannot execute, or NULL */
	char	   *context_json;	/* the handler's argument */
} ExecInfo;

static int	my_slot = -1;
static MemoryContext executor_cxt = NULL;	/* reset for every execution */
static SPIPlanPtr load_plan = NULL;

/* Kept plans of handler calls, by handler OID (an executor serves few handlers) */
#define MAX_HANDLER_PLANS 64
typedef struct HandlerPlan
{
	Oid			handler;
	SPIPlanPtr	plan;
} HandlerPlan;
static HandlerPlan handler_plans[MAX_HANDLER_PLANS];
static int	n_handler_plans = 0;

static SPIPlanPtr handler_plan(ExecInfo *info);

/*
 * The kept plan that calls this handler; prepared on first use.  (The plan
 * cache replans it if the routine is replaced.)  When the table is full
 * the call is prepared each time, unkept.
 */
static SPIPlanPtr
handler_plan(ExecInfo *info)
{
	Oid			types[1] = {TEXTOID};
	SPIPlanPtr	plan;

	for (int i = 0; i < n_handler_plans; i++)
	{
		if (handler_plans[i].handler == info->handler)
			return handler_plans[i].plan;
	}
	plan = SPI_prepare(info->call_sql, 1, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the handler call: %s", SPI_result_code_string(SPI_result));
	if (n_handler_plans < MAX_HANDLER_PLANS)
	{
		SPI_keepplan(plan);
		handler_plans[n_handler_plans].handler = info->handler;
		handler_plans[n_handler_plans].plan = plan;
		n_handler_plans++;
	}
	return plan;
}

static void executor_detach(int code, Datum arg);
static void hold_cancel(void);
static int64 admit_next(void);
static bool load_exec_info(int64 execution_id, ExecInfo *info);
static char *call_handler(ExecInfo *info);
static void run_execution(int64 execution_id);
static char *error_metadata(ErrorData *edata);

/*
 * Hold off query cancel: only a running handler may be interrupted.  An
 * ERROR resets the holdoff count, so this is called again after each one.
 */
static void
hold_cancel(void)
{
	if (QueryCancelHoldoffCount == 0)
		HOLD_CANCEL_INTERRUPTS();
}

/*
 * before_shmem_exit: free our executor slot and tell the launcher.
 */
static void
executor_detach(int code, Datum arg)
{
	if (sc_shared == NULL || my_slot < 0)
		return;
	SpinLockAcquire(&sc_shared->mutex);
	sc_shared->executors[my_slot].in_use = false;
	sc_shared->executors[my_slot].idle = false;
	sc_shared->executors[my_slot].pid = 0;
	sc_shared->executors[my_slot].latch = NULL;
	SpinLockRelease(&sc_shared->mutex);
	sc_wake_launcher();
}

/*
 * Admit the next execution of any connector with a handler, oldest queued
 * first, in a transaction of its own.  Returns 0 when nothing is admissible.
 */
static int64
admit_next(void)
{
	int64		id;

	/*
	 * Admission counts running executions as of each statement, so it runs
	 * at READ COMMITTED whatever default_transaction_isolation says.
	 */
	{
		int			save = DefaultXactIsoLevel;

		DefaultXactIsoLevel = XACT_READ_COMMITTED;
		PG_TRY();
		{
			sc_work_begin("smartconnector: admitting");
		}
		PG_FINALLY();
		{
			DefaultXactIsoLevel = save;
		}
		PG_END_TRY();
	}

	/*
	 * The admission need not wait for its WAL to reach disk: if a crash
	 * loses it, the execution is simply queued again, and nothing of its run
	 * can survive a crash that lost its admission (the run commits later,
	 * synchronously, and WAL is flushed in order).
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION);

	id = sc_admit_next();
	sc_work_commit();
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_SESSION);
	return id;
}

/*
 * Read the execution, its connector and its handler (we run as superuser,
 * inside the caller's transaction).  Everything is copied into
 * executor_cxt.  Returns false if the execution vanished.
 */
static bool
load_exec_info(int64 execution_id, ExecInfo *info)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(execution_id)};
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	MemoryContext old;
	int			nest = sc_pin_settings();

	/* the routine's names come from the catalog caches below, not from this join */
	ret = SPI_execute_plan(sc_keep_plan(&load_plan,
		"SELECT e.connector_id, c.api_name, c.handler IS NOT NULL,"
		"       c.run_as::oid, e.dry_run, e.diff_check, e.cancel_requested,"
		"       smartconnector.handler_problem(c.handler, c.run_as),"
		"       pg_catalog.jsonb_build_object('execution_id', e.id, 'api_name', c.api_name,"
		"           'input', e.input, 'diff_check', e.diff_check, 'dry_run', e.dry_run)::text,"
		"       c.handler::oid"
		"  FROM smartconnector.execution e"
		"  JOIN smartconnector.connector c ON c.id = e.connector_id"
		" WHERE e.id = $1",
		1, types), args, NULL, true, 1);
	sc_unpin_settings(nest);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read execution %lld", (long long) execution_id);
	if (SPI_processed != 1)
		return false;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	old = MemoryContextSwitchTo(executor_cxt);
	info->execution_id = execution_id;
	info->connector_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	info->api_name = SPI_getvalue(tup, desc, 2);
	info->has_handler = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	info->run_as = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
	info->dry_run = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	info->diff_check = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	info->cancel_requested = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	info->problem = SPI_getvalue(tup, desc, 8);
	info->context_json = SPI_getvalue(tup, desc, 9);
	info->handler = DatumGetObjectId(SPI_getbinval(tup, desc, 10, &isnull));
	if (isnull)
		info->handler = InvalidOid;
	if (!info->has_handler)
		info->problem = pstrdup("The connector's handler was removed after the execution was admitted.");
	else if (info->problem == NULL)
	{
		/* it exists: handler_problem() said nothing is wrong with it */
		char	   *proname = get_func_name(info->handler);
		char	   *nspname = get_namespace_name(get_func_namespace(info->handler));

		info->is_procedure = (get_func_prokind(info->handler) == PROKIND_PROCEDURE);
		if (proname != NULL && nspname != NULL)
			info->call_sql = psprintf("%s %s.%s($1::pg_catalog.jsonb)",
									  info->is_procedure ? "CALL" : "SELECT",
									  quote_identifier(nspname), quote_identifier(proname));
		else
			info->problem = pstrdup("The handler routine no longer exists (it was dropped after it was set).");
	}
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * Run the handler as run_as and return its jsonb result as text (or NULL).
 * Every setting the handler changes, even with a session-level SET, is
 * undone afterwards (AtEOXact_GUC as for an abort), so one connector's run
 * never leaks into the next.
 */
static char *
call_handler(ExecInfo *info)
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	Datum		args[1];
	char	   *result = NULL;
	int			ret;
	MemoryContext caller_cxt = CurrentMemoryContext;
	ResourceOwner caller_owner = CurrentResourceOwner;

	args[0] = CStringGetTextDatum(info->context_json);

	if (info->dry_run)
	{
		BeginInternalSubTransaction("smartconnector dry run");
		MemoryContextSwitchTo(caller_cxt);
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(info->run_as, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	pgstat_report_activity(STATE_RUNNING, info->call_sql);

	/* let cancel() in: only now, and only for this execution */
	QueryCancelPending = false;
	sc_set_phase(SC_PHASE_HANDLER);
	RESUME_CANCEL_INTERRUPTS();
	CHECK_FOR_INTERRUPTS();

	ret = SPI_execute_plan(handler_plan(info), args, NULL, false, 0);

	HOLD_CANCEL_INTERRUPTS();
	sc_set_phase(SC_PHASE_COMPLETING);

	if (ret < 0)
		elog(ERROR, "could not run the handler: %s", SPI_result_code_string(ret));
	if (ret == SPI_OK_SELECT && SPI_processed == 1 &&
		SPI_gettypeid(SPI_tuptable->tupdesc, 1) == JSONBOID)
	{
		char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (value != NULL)
			result = MemoryContextStrdup(executor_cxt, value);
	}

	AtEOXact_GUC(false, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	if (info->dry_run)
	{
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller_cxt);
		CurrentResourceOwner = caller_owner;
	}
	return result;
}

/*
 * The error's details as a jsonb object for the execution's metadata.
 */
static char *
error_metadata(ErrorData *edata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"error\": {\"sqlstate\": ");
	escape_json(&buf, unpack_sql_state(edata->sqlerrcode));
	if (edata->detail)
	{
		appendStringInfoString(&buf, ", \"detail\": ");
		escape_json(&buf, edata->detail);
	}
	if (edata->hint)
	{
		appendStringInfoString(&buf, ", \"hint\": ");
		escape_json(&buf, edata->hint);
	}
	if (edata->context)
	{
		appendStringInfoString(&buf, ", \"context\": ");
		escape_json(&buf, edata->context);
	}
	appendStringInfoString(&buf, "}}");
	return buf.data;
}

/*
 * Run one admitted execution to its end state.
 */
static void
run_execution(int64 execution_id)
{
	ExecInfo	info;
	volatile bool completed = false;
	char	   *volatile error = NULL;
	char	   *volatile error_meta = NULL;

	memset(&info, 0, sizeof(info));
	info.execution_id = execution_id;

	PG_TRY();
	{
		char	   *result;

		sc_work_begin("smartconnector: loading execution");

		if (!load_exec_info(execution_id, &info))
			elog(ERROR, "admitted execution %lld has vanished", (long long) execution_id);
		sc_begin_current(execution_id, info.connector_id, info.diff_check,
						 info.dry_run, SC_PHASE_COMPLETING);

		if (info.cancel_requested)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("execution was cancelled before its handler started")));
		if (info.problem != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("connector \"%s\" cannot execute", info.api_name),
					 errdetail_internal("%s", info.problem)));

		result = call_handler(&info);

		pgstat_report_activity(STATE_RUNNING, "smartconnector: recording outcome");
		(void) sc_complete_current(NULL, NULL, result);
		sc_work_commit();
		completed = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(executor_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		hold_cancel();
		error = edata->message;
		error_meta = error_metadata(edata);
		ereport(LOG,
				(errmsg("smartconnector execution %lld failed: %s",
						(long long) execution_id, edata->message)));
	}
	PG_END_TRY();

	if (completed)
		return;

	/* The run failed: record that, with the report gathered so far. */
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "smartconnector: recording failure");
		if (sc_current_execution_id() != execution_id)
			sc_begin_current(execution_id, info.connector_id, info.diff_check,
							 info.dry_run, SC_PHASE_COMPLETING);
		(void) sc_complete_current(error, error_meta, NULL);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		LOCKTAG		tag;

		/*
		 * Even recording the failure failed.  Give the execution up: release
		 * its lock so the launcher fails it as a runner that ended.
		 */
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		hold_cancel();
		sc_execution_locktag(&tag, execution_id);
		LockRelease(&tag, ExclusiveLock, true);
		sc_clear_current();
	}
	PG_END_TRY();
}

/*
 * Executor worker entry point; main_arg is the executor slot to occupy.
 */
void
sc_executor_main(Datum main_arg)
{
	TimestampTz idle_since;

	my_slot = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(sc_database_name, NULL, 0);
	pgstat_report_appname("smartconnector executor");

	SpinLockAcquire(&sc_shared->mutex);
	sc_shared->executors[my_slot].pid = MyProcPid;
	sc_shared->executors[my_slot].latch = MyLatch;
	sc_shared->executors[my_slot].idle = false;
	SpinLockRelease(&sc_shared->mutex);
	before_shmem_exit(executor_detach, (Datum) 0);

	executor_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector executor",
										 ALLOCSET_DEFAULT_SIZES);
	hold_cancel();
	idle_since = GetCurrentTimestamp();

	for (;;)
	{
		int64		execution_id = 0;
		long		wait_ms;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(executor_cxt);

		PG_TRY();
		{
			execution_id = admit_next();
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			hold_cancel();
			execution_id = -1;
		}
		PG_END_TRY();

		if (execution_id > 0)
		{
			run_execution(execution_id);
			idle_since = GetCurrentTimestamp();
			continue;
		}

		/* nothing to do (or admission failed: retry in a second) */
		wait_ms = (execution_id < 0) ? 1000 :
			(long) sc_executor_idle_timeout * 1000L -
			(long) ((GetCurrentTimestamp() - idle_since) / 1000);
		if (wait_ms <= 0)
			break;

		SpinLockAcquire(&sc_shared->mutex);
		sc_shared->executors[my_slot].idle = true;
		SpinLockRelease(&sc_shared->mutex);
		pgstat_report_activity(STATE_IDLE, NULL);

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		SpinLockAcquire(&sc_shared->mutex);
		sc_shared->executors[my_slot].idle = false;
		SpinLockRelease(&sc_shared->mutex);

		if (rc & WL_LATCH_SET)
			idle_since = GetCurrentTimestamp();
	}

	/* idle for executor_idle_timeout: leave; the launcher starts us again */
	proc_exit(0);
}
