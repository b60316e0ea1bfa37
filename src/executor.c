/*-------------------------------------------------------------------------
 *
 * executor.c
 *		Executor background workers: long-lived sessions, each of one role,
 *		that admit the next execution of a connector running as that role,
 *		run its handler, and record the outcome.
 *
 * Handlers are untrusted code with exactly the rights of their run_as role,
 * and the design gets that by construction:
 *  - An executor connects as its role (the launcher starts one pool per
 *    role, launcher.c), so the session user, the current user, the acting
 *    role of everything the handler calls, the role's own settings
 *    (ALTER ROLE ... SET) and everything the handler leaves to fire at
 *    commit (deferred triggers, held cursors) are that role's.  Nothing
 *    superuser is left in the session to regain.
 *  - The bookkeeping (admission, loading an execution, recording its end)
 *    runs in privileged sections (plans.c): the bootstrap superuser, as a
 *    security-restricted operation, with our settings pinned.  They run no
 *    user-defined code, and the role's identity is back before anything of
 *    the handler's can fire: the handler's transaction commits as the role.
 *  - Before each admission the session is reset as DISCARD ALL resets one
 *    (discard_session()), so nothing of one run reaches the next.
 *  - The handler is called by OID, and only if the connector's binding
 *    still holds (binding.c): the routine configured, under its configured
 *    name, whose owner has the privileges of run_as.
 *  - The execution's liveness is this backend's progress slot (shmem.c),
 *    which no SQL function can release.
 *
 * Transactions per execution: one to admit (ends with the execution
 * "running"), one to run the handler and record the outcome together, so
 * that the handler's writes and the end state commit atomically.  If the
 * handler raises, that transaction is rolled back and a third one records
 * the failure with the report gathered so far.  A dry run executes the
 * handler inside a subtransaction that is always rolled back.
 *
 * Short handlers share those transactions (smartconnector.group_size and
 * group_window): an executor admits a group of executions whose handlers
 * took little time on their last run here, and runs them in one
 * transaction, each in a subtransaction of its own holding its handler's
 * writes and its end (run_group()).  A failure is recorded only for the
 * first execution of a transaction; a later one is rolled back and runs
 * first in the next transaction, and if a group's commit fails, each of its
 * executions runs again alone.  The progress slot names every execution of
 * the group until the commit that ends it, so the launcher keeps them alive.
 *
 * Interrupts: cancel() interrupts a running handler with SIGINT (a query
 * cancel), as does the role's statement_timeout, which is armed for the
 * handler's call.  Query cancel is held off everywhere except while the
 * handler runs, so a late signal can never break admission or the
 * recording of an outcome; such a cancel is still honoured, because the
 * outcome is "cancelled" whenever cancel_requested is set.  A handler can
 * catch the query cancel (EXCEPTION WHEN query_canceled) and go on; the
 * launcher then terminates the executor once smartconnector.cancel_grace
 * has passed (the progress slot says by when), and ends the execution.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

/* take_next_group(): the extension is not installed, or is being dropped */
#define EXTENSION_GONE		(-2)

/* What the executor needs to know to run one execution */
typedef struct ExecInfo
{
	int64		execution_id;
	int64		connector_id;
	char	   *api_name;
	ScBinding	binding;		/* the routine, as checked just now */
	char	   *handler;		/* its signature, for messages */
	bool		dry_run;
	bool		diff_check;
	bool		cancel_requested;
	char	   *problem;		/* why it cannot execute, or NULL */
	char	   *context_json;	/* the handler's argument */
	TimestampTz handler_started;	/* while the handler runs, else 0 */
} ExecInfo;

/*
 * The executor's group: executions admitted together in one admission, and
 * run in as few transactions as smartconnector.group_window allows, each
 * in a subtransaction of its own (see run_group()).
 */
static int64 group_ids[SC_MAX_GROUP];
static int	group_n = 0;

/* What run_member() did with an execution */
typedef enum MemberOutcome
{
	MEMBER_ENDED,				/* its end is recorded in the group's transaction */
	MEMBER_AGAIN				/* it failed after others: to run first in a new one */
} MemberOutcome;

/*
 * How long each connector's handler took on its last run in this executor,
 * for grouping: by connector id modulo HANDLER_TIMES, a colliding
 * connector taking the place (it is then not grouped until it ran again).
 */
#define HANDLER_TIMES 256
typedef struct HandlerTime
{
	int64		connector_id;
	int64		us;
} HandlerTime;
static HandlerTime handler_times[HANDLER_TIMES];

static int	my_slot = -1;
static Oid	my_role = InvalidOid;	/* the role this executor's session is */
static MemoryContext executor_cxt = NULL;	/* reset for every execution */
static SPIPlanPtr load_plan = NULL;

static void executor_detach(int code, Datum arg);
static void hold_cancel(void);
static bool retiring(void);
static void begin_own_transaction(const char *activity);
static void discard_session(bool in_group);
static void remember_handler_time(int64 connector_id, TimestampTz started);
static bool may_join_group(int64 connector_id);
static int	take_next_group(void);
static MemberOutcome run_member(int64 execution_id, bool first, bool discard);
static void run_group(void);
static bool load_exec_info(int64 execution_id, ExecInfo *info);
static char *call_handler(ExecInfo *info);
static void run_execution(int64 execution_id, bool discard);
static void require_extension(void);

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
	sc_shared->executors[my_slot].retire = false;
	sc_shared->executors[my_slot].pid = 0;
	sc_shared->executors[my_slot].latch = NULL;
	SpinLockRelease(&sc_shared->mutex);
	sc_wake_launcher();
}

/*
 * Whether the launcher wants our slot for another role's work.
 */
static bool
retiring(void)
{
	bool		retire;

	SpinLockAcquire(&sc_shared->mutex);
	retire = sc_shared->executors[my_slot].retire;
	SpinLockRelease(&sc_shared->mutex);
	return retire;
}

/*
 * Start a transaction of our own bookkeeping: at READ COMMITTED and read
 * write, whatever the role's defaults say (admission counts running
 * executions as of each statement).
 */
static void
begin_own_transaction(const char *activity)
{
	int			save_iso = DefaultXactIsoLevel;
	bool		save_ro = DefaultXactReadOnly;

	DefaultXactIsoLevel = XACT_READ_COMMITTED;
	DefaultXactReadOnly = false;
	PG_TRY();
	{
		sc_work_begin(activity);
	}
	PG_FINALLY();
	{
		DefaultXactIsoLevel = save_iso;
		DefaultXactReadOnly = save_ro;
	}
	PG_END_TRY();
}

/*
 * Reset the session as DISCARD ALL would, in the current transaction:
 * portals and held cursors, role, settings (back to the role's own
 * defaults), prepared statements, LISTEN, advisory locks, temporary
 * objects and sequence caches.  The plan cache is kept: plans hold no
 * state of a run, and the plan cache checks search_path and role on every
 * use; replanning every statement of every run would cost more than the
 * rest of an execution.  Runs as the role, and runs no user-defined code.
 *
 * in_group: between two executions of a group, in its transaction.  Each
 * reset is then one a transaction block allows (CLOSE ALL, RESET ALL,
 * DEALLOCATE ALL, UNLISTEN *, pg_advisory_unlock_all(), DISCARD TEMP,
 * DISCARD SEQUENCES): advisory locks a handler took for its transaction
 * are kept until the group commits, as its row locks are.
 */
static void
discard_session(bool in_group)
{
	PortalHashTableDeleteAll();
	if (GetSessionUserId() != my_role)
		SetPGVariable("session_authorization", NIL, false);
	if (OidIsValid(GetCurrentRoleId()))
		SetPGVariable("role", NIL, false);
	ResetAllOptions();
	DropAllPreparedStatements();
	Async_UnlistenAll();
	if (in_group)
		LockReleaseSession(USER_LOCKMETHOD);
	else
		LockReleaseAll(USER_LOCKMETHOD, true);
	ResetTempTableNamespace();
	ResetSequenceCaches();
}

/*
 * Remember how long a connector's handler took, from started to now.
 */
static void
remember_handler_time(int64 connector_id, TimestampTz started)
{
	HandlerTime *t = &handler_times[(uint64) connector_id % HANDLER_TIMES];

	t->connector_id = connector_id;
	t->us = (int64) (GetCurrentTimestamp() - started);
}

/*
 * Whether an execution of the connector may join a group: its handler took
 * at most group_window / group_size on its last run here, so a whole group
 * of such runs fits in the window.  A connector not seen yet runs alone
 * first.
 */
static bool
may_join_group(int64 connector_id)
{
	HandlerTime *t = &handler_times[(uint64) connector_id % HANDLER_TIMES];

	return t->connector_id == connector_id &&
		t->us * sc_group_size <= (int64) sc_group_window_ms * 1000;
}

/*
 * Reset the session, then admit the next execution of a connector that
 * runs as our role, oldest queued first, in a transaction of its own, and
 * with it, if its handler is short (may_join_group()), up to group_size - 1
 * more of such connectors that are free now: the group.  Returns the
 * number admitted (into group_ids), 0 when nothing is admissible,
 * EXTENSION_GONE when the extension is not installed (or a DROP EXTENSION
 * waits).
 */
static int
take_next_group(void)
{
	ScPrivileged priv;
	int64		id;
	int64		connector_id = 0;

	group_n = 0;
	begin_own_transaction("smartconnector: admitting");
	if (!sc_extension_installed(false))
	{
		/* dropped, or a DROP EXTENSION waits: nothing to admit */
		sc_work_commit();
		return EXTENSION_GONE;
	}
	discard_session(false);

	/*
	 * The admission need not wait for its WAL to reach disk: if a crash
	 * loses it, the execution is simply queued again, and nothing of its run
	 * can survive a crash that lost its admission (the run commits later,
	 * and WAL is flushed in order).
	 */
	(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	sc_privileged_begin(&priv);
	id = sc_admit_next(my_role, NULL, &connector_id);
	if (id > 0)
	{
		group_ids[group_n++] = id;
		if (sc_group_size > 1 && may_join_group(connector_id))
		{
			sc_add_to_group(id);
			while (group_n < Min(sc_group_size, SC_MAX_GROUP) &&
				   (id = sc_admit_next(my_role, may_join_group, &connector_id)) > 0)
				group_ids[group_n++] = id;
		}
	}
	sc_privileged_end(&priv);
	sc_work_commit();
	return group_n;
}

/*
 * Read the execution and its connector, and check the connector's binding
 * (in a privileged section, inside the caller's transaction).  Everything
 * is copied into executor_cxt.  Returns false if the execution vanished.
 */
static bool
load_exec_info(int64 execution_id, ExecInfo *info)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(execution_id), Int64GetDatum(sc_system_identifier())};
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	MemoryContext old;
	char	   *run_as;

	ret = SPI_execute_plan(sc_keep_plan(&load_plan,
		"SELECT e.connector_id, c.api_name, c.handler, c.handler_oid, c.run_as,"
		"       c.run_as_oid, c.bound_in IS NOT DISTINCT FROM $2,"
		"       e.dry_run, e.diff_check, e.cancel_requested,"
		"       pg_catalog.jsonb_build_object('execution_id', e.id, 'api_name', c.api_name,"
		"           'input', e.input, 'diff_check', e.diff_check, 'dry_run', e.dry_run)::text"
		"  FROM smartconnector.execution e"
		"  JOIN smartconnector.connector c ON c.id = e.connector_id"
		" WHERE e.id = $1",
		2, types), args, NULL, true, 1);
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
	info->handler = SPI_getvalue(tup, desc, 3);
	run_as = SPI_getvalue(tup, desc, 5);
	info->dry_run = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	info->diff_check = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
	info->cancel_requested = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
	info->context_json = SPI_getvalue(tup, desc, 11);

	if (info->handler == NULL)
		info->problem = pstrdup("The connector's handler was removed after the execution was admitted.");
	else
	{
		Oid			handler_oid;
		Oid			run_as_oid;
		bool		bound_here;

		d = SPI_getbinval(tup, desc, 4, &isnull);
		handler_oid = isnull ? InvalidOid : DatumGetObjectId(d);
		d = SPI_getbinval(tup, desc, 6, &isnull);
		run_as_oid = isnull ? InvalidOid : DatumGetObjectId(d);
		bound_here = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		sc_check_binding(info->handler, handler_oid, run_as, run_as_oid, bound_here,
						 &info->binding);
		info->problem = info->binding.problem;
		if (info->problem == NULL && info->binding.run_as != my_role)
			info->problem = psprintf("The connector's run_as changed to \"%s\" after the execution was admitted.",
									 run_as);
	}
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * Call the handler by OID, as the session's role, with the role's
 * statement_timeout, and return its jsonb result as text (or NULL).  Every
 * setting the handler changes, even with a session-level SET, is undone
 * afterwards (AtEOXact_GUC as for an abort).
 */
static char *
call_handler(ExecInfo *info)
{
	FmgrInfo	flinfo;
	LOCAL_FCINFO(fcinfo, 1);
	Datum		value;
	int			save_nestlevel;
	char	   *result = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	ResourceOwner caller_owner = CurrentResourceOwner;

	if (info->dry_run)
	{
		BeginInternalSubTransaction("smartconnector dry run");
		MemoryContextSwitchTo(caller_cxt);
	}

	fmgr_info(info->binding.handler, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = DirectFunctionCall1(jsonb_in, CStringGetDatum(info->context_json));
	fcinfo->args[0].isnull = false;
	InvokeFunctionExecuteHook(info->binding.handler);

	save_nestlevel = NewGUCNestLevel();
	pgstat_report_activity(STATE_RUNNING,
						   psprintf("smartconnector: execution %lld: %s",
									(long long) info->execution_id, info->handler));
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());

	/*
	 * Let cancel() and statement_timeout in: only now, and only for this
	 * call.  A handler that catches the cancel they send and goes on is
	 * terminated by the launcher after smartconnector.cancel_grace.
	 */
	QueryCancelPending = false;
	if (StatementTimeout > 0)
	{
		sc_set_stop_by(GetCurrentTimestamp() +
					   ((TimestampTz) StatementTimeout + sc_cancel_grace_ms) * 1000, false);
		enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
	}
	if (sc_set_phase(SC_PHASE_HANDLER))
		InterruptPending = QueryCancelPending = true;	/* cancelled on the way */
	RESUME_CANCEL_INTERRUPTS();
	CHECK_FOR_INTERRUPTS();

	info->handler_started = GetCurrentTimestamp();
	value = FunctionCallInvoke(fcinfo);
	remember_handler_time(info->connector_id, info->handler_started);
	info->handler_started = 0;

	/* the statement timeout stays armed: the commit runs the handler's code too */
	HOLD_CANCEL_INTERRUPTS();
	sc_set_phase(SC_PHASE_COMPLETING);
	PopActiveSnapshot();

	if (!fcinfo->isnull && info->binding.rettype == JSONBOID)
		result = MemoryContextStrdup(executor_cxt,
									 DatumGetCString(DirectFunctionCall1(jsonb_out, value)));

	AtEOXact_GUC(false, save_nestlevel);

	if (info->dry_run)
	{
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller_cxt);
		CurrentResourceOwner = caller_owner;
	}
	return result;
}

/*
 * In a transaction of an admitted execution: hold the extension installed
 * (waiting for a DROP EXTENSION in progress), or fail if it is gone.
 */
static void
require_extension(void)
{
	if (!sc_extension_installed(true))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"smartconnector\" was dropped or is not at version %s", SC_VERSION)));
}

/*
 * Load an admitted execution and make it the session's current one, then
 * run its handler and record its end, in the current transaction.  Raises
 * whatever keeps it from succeeding.  The statement timeout stays armed
 * (the caller's commit runs the handler's code too).
 */
static void
load_and_run(ExecInfo *info)
{
	ScPrivileged priv;
	char	   *result;
	char		max_duration[SC_MAX_DURATION_TEXT];

	require_extension();
	sc_privileged_begin(&priv);
	if (!load_exec_info(info->execution_id, info))
		elog(ERROR, "admitted execution %lld has vanished", (long long) info->execution_id);
	sc_privileged_end(&priv);
	sc_begin_current(info->execution_id, info->connector_id, info->diff_check,
					 info->dry_run, SC_PHASE_COMPLETING);

	if (info->cancel_requested)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("execution was cancelled before its handler started")));
	if (info->problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("connector \"%s\" cannot execute", info->api_name),
				 errdetail_internal("%s", info->problem)));

	result = call_handler(info);
	if (sc_my_overrun(max_duration))	/* it caught the cancel and returned */
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling statement due to max_duration")));

	pgstat_report_activity(STATE_RUNNING, "smartconnector: recording outcome");
	sc_privileged_begin(&priv);
	(void) sc_end_current(NULL, NULL, result,
						  info->dry_run ? SC_COMMITTED_NO : SC_COMMITTED_YES, NULL);
	sc_privileged_end(&priv);
}

/*
 * Commit as the role: what the handlers left for commit (deferred
 * triggers, held cursors) runs as the role, and like a handler itself it
 * can be cancelled and is bound by the statement timeout and the
 * launcher's deadline.  An interrupt there aborts the commit.
 */
static void
commit_as_role(void)
{
	if (sc_set_phase(SC_PHASE_COMMITTING))
		InterruptPending = QueryCancelPending = true;
	RESUME_CANCEL_INTERRUPTS();
	sc_work_commit();
	HOLD_CANCEL_INTERRUPTS();
	disable_timeout(STATEMENT_TIMEOUT, false);
	sc_set_phase(SC_PHASE_COMPLETING);
	sc_set_stop_by(0, false);
}

/*
 * After an error while an execution ran (the error state already copied
 * into edata): stop its clocks, and say what it ended with.
 */
static void
describe_failure(ExecInfo *info, ErrorData *edata, char **error, char **error_meta)
{
	char		max_duration[SC_MAX_DURATION_TEXT];

	disable_timeout(STATEMENT_TIMEOUT, false);
	sc_set_phase(SC_PHASE_COMPLETING);
	sc_set_stop_by(0, false);
	if (info->handler_started != 0)
	{
		remember_handler_time(info->connector_id, info->handler_started);
		info->handler_started = 0;
	}
	*error = edata->message;
	*error_meta = sc_error_metadata(unpack_sql_state(edata->sqlerrcode), edata->detail,
									edata->hint, edata->context);
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && sc_my_overrun(max_duration))
	{
		/* the launcher's query cancel, not the handler's error */
		*error = psprintf("execution exceeded max_duration (%s)", max_duration);
		*error_meta = sc_error_metadata("57014",
										"The launcher stopped the handler: the connector's max_duration had passed.",
										NULL, edata->context);
	}
}

/*
 * Record that an execution failed or was cancelled, with the report
 * gathered so far, in the current transaction, and log what it ended as (a
 * cancelled run is not a failure).
 */
static void
record_failure(ExecInfo *info, const char *error, const char *error_meta)
{
	ScPrivileged priv;
	char	   *state;

	require_extension();
	sc_privileged_begin(&priv);
	if (sc_current_execution_id() != info->execution_id)
		sc_begin_current(info->execution_id, info->connector_id, info->diff_check,
						 info->dry_run, SC_PHASE_COMPLETING);
	state = sc_end_current(error, error_meta, NULL, SC_COMMITTED_NO, NULL);
	sc_privileged_end(&priv);
	if (state != NULL && strcmp(state, "cancelled") == 0)
		ereport(LOG,
				(errmsg("smartconnector execution %lld was cancelled",
						(long long) info->execution_id)));
	else
		ereport(LOG,
				(errmsg("smartconnector execution %lld failed: %s",
						(long long) info->execution_id, error)));
}

/*
 * Run one admitted execution to its end state, in transactions of its own;
 * with discard, after resetting the session (which its admission did
 * otherwise).
 */
static void
run_execution(int64 execution_id, bool discard)
{
	/* in memory, not on the stack: PG_TRY's longjmp may lose a local's changes */
	ExecInfo   *const info = MemoryContextAllocZero(executor_cxt, sizeof(ExecInfo));
	volatile bool completed = false;
	char	   *error = NULL;
	char	   *error_meta = NULL;

	info->execution_id = execution_id;

	PG_TRY();
	{
		/* with the role's own defaults: the handler runs in this transaction */
		sc_work_begin("smartconnector: loading execution");
		if (discard)
			discard_session(false);
		load_and_run(info);
		commit_as_role();
		completed = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(executor_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		sc_privileged_reset();
		MemoryContextSwitchTo(executor_cxt);
		hold_cancel();
		describe_failure(info, edata, &error, &error_meta);
	}
	PG_END_TRY();
	if (completed)
		return;

	/* the run failed or was cancelled: record that in a transaction of its own */
	PG_TRY();
	{
		begin_own_transaction("smartconnector: recording failure");
		record_failure(info, error, error_meta);
		sc_work_commit();
	}
	PG_CATCH();
	{
		/*
		 * Even recording the failure failed.  Give the execution up: free
		 * its slot so the launcher fails it as a runner that ended.
		 */
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		sc_privileged_reset();
		hold_cancel();
		sc_clear_current();
		sc_remove_from_group(execution_id);
	}
	PG_END_TRY();
}

/*
 * Run one execution of a group in a subtransaction of the group's
 * transaction: its handler's writes and its end are released into the
 * group's transaction together, or rolled back together.  A failure is
 * recorded only for the first execution of a transaction, which saw
 * nothing of other executions' uncommitted work and waited for none of
 * their locks: any later one is rolled back and reported as MEMBER_AGAIN,
 * to run first in a new transaction.  With discard, the session is reset
 * first (for every execution of a group but the first, whose admission did
 * that).
 */
static MemberOutcome
run_member(int64 execution_id, bool first, bool discard)
{
	ExecInfo   *const info = MemoryContextAllocZero(executor_cxt, sizeof(ExecInfo));
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool completed = false;
	char	   *error = NULL;
	char	   *error_meta = NULL;

	info->execution_id = execution_id;
	if (discard)
		discard_session(true);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(executor_cxt);
	PG_TRY();
	{
		load_and_run(info);
		/* the commit of the group's transaction arms its own */
		disable_timeout(STATEMENT_TIMEOUT, false);
		sc_set_stop_by(0, false);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(executor_cxt);
		CurrentResourceOwner = owner;
		completed = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(executor_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(executor_cxt);
		CurrentResourceOwner = owner;
		sc_privileged_reset();
		hold_cancel();
		describe_failure(info, edata, &error, &error_meta);
	}
	PG_END_TRY();

	if (completed)
		return MEMBER_ENDED;
	if (!first)
		return MEMBER_AGAIN;
	record_failure(info, error, error_meta);
	return MEMBER_ENDED;
}

/*
 * Run the group admitted by take_next_group() to its end states, as many
 * executions per transaction as fit in smartconnector.group_window.  Their
 * ends become visible, and their webhooks are sent, when that transaction
 * commits.  If it fails to commit (a handler's deferred trigger, say),
 * nothing of it has committed, and each of its executions runs again, in a
 * transaction of its own: one handler's failure never fails another's
 * execution.
 */
static void
run_group(void)
{
	int			next = 0;

	while (next < group_n)
	{
		/* in memory, not on the stack: PG_TRY's longjmp may lose a local's changes */
		int		   *const done = MemoryContextAllocZero(executor_cxt, 2 * sizeof(int));
		int			first = next;
		volatile bool failed = false;

		/* done[0]: members ended in this transaction; done[1]: members started */
		done[0] = done[1] = first;
		PG_TRY();
		{
			TimestampTz started;

			/* with the role's own defaults: the handlers run in this transaction */
			sc_work_begin("smartconnector: running a group");
			started = GetCurrentTimestamp();
			while (done[0] < group_n)
			{
				done[1] = done[0] + 1;
				if (run_member(group_ids[done[0]], done[0] == first, done[0] > 0) == MEMBER_AGAIN)
					break;
				done[0]++;
				if (TimestampDifferenceExceeds(started, GetCurrentTimestamp(), sc_group_window_ms))
					break;
			}
			if (StatementTimeout > 0)
			{
				sc_set_stop_by(GetCurrentTimestamp() +
							   ((TimestampTz) StatementTimeout + sc_cancel_grace_ms) * 1000, false);
				enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
			}
			commit_as_role();
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(executor_cxt);
			EmitErrorReport();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			sc_privileged_reset();
			hold_cancel();
			disable_timeout(STATEMENT_TIMEOUT, false);
			sc_set_phase(SC_PHASE_COMPLETING);
			sc_set_stop_by(0, false);
			failed = true;
		}
		PG_END_TRY();

		if (failed)
		{
			/* nothing of that transaction committed */
			ereport(LOG,
					(errmsg("smartconnector: a transaction of %d executions failed; each runs again alone",
							done[1] - first)));
			for (int k = first; k < done[1]; k++)
			{
				run_execution(group_ids[k], true);
				sc_remove_from_group(group_ids[k]);
			}
			next = done[1];
			continue;
		}
		for (int k = first; k < done[0]; k++)
			sc_remove_from_group(group_ids[k]);
		next = done[0];
	}
}

/*
 * Executor worker entry point; main_arg is the executor slot to occupy,
 * whose role the launcher set.
 */
void
sc_executor_main(Datum main_arg)
{
	TimestampTz idle_since;
	Oid			database;

	my_slot = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	before_shmem_exit(executor_detach, (Datum) 0);

	SpinLockAcquire(&sc_shared->mutex);
	my_role = sc_shared->executors[my_slot].role;
	database = sc_shared->database_id;
	SpinLockRelease(&sc_shared->mutex);

	/* a session of the role, with its settings, as a login would have */
	BackgroundWorkerInitializeConnectionByOid(database, my_role, 0);
	SetConfigOption("application_name", "smartconnector executor", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&sc_shared->mutex);
	sc_shared->executors[my_slot].pid = MyProcPid;
	sc_shared->executors[my_slot].latch = MyLatch;
	sc_shared->executors[my_slot].idle = false;
	SpinLockRelease(&sc_shared->mutex);

	executor_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector executor",
										 ALLOCSET_DEFAULT_SIZES);
	hold_cancel();
	idle_since = GetCurrentTimestamp();

	for (;;)
	{
		int			admitted = 0;
		long		wait_ms;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(executor_cxt);
		MemoryContextSwitchTo(executor_cxt);
		if (retiring())
			break;

		PG_TRY();
		{
			admitted = take_next_group();
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			sc_privileged_reset();
			hold_cancel();
			sc_remove_from_group(0);
			group_n = 0;
			admitted = -1;
		}
		PG_END_TRY();

		if (admitted == EXTENSION_GONE)
			break;				/* quietly; the launcher starts us once there is work again */
		if (admitted == 1)
		{
			run_execution(group_ids[0], false);
			sc_remove_from_group(group_ids[0]);
		}
		else if (admitted > 1)
			run_group();
		if (admitted > 0)
		{
			idle_since = GetCurrentTimestamp();
			continue;
		}

		/* nothing to do (or admission failed: retry in a second) */
		wait_ms = (admitted < 0) ? 1000 :
			(long) sc_executor_idle_timeout * 1000L -
			(long) ((GetCurrentTimestamp() - idle_since) / 1000);
		if (wait_ms <= 0)
			break;

		SpinLockAcquire(&sc_shared->mutex);
		sc_shared->executors[my_slot].idle = true;
		SpinLockRelease(&sc_shared->mutex);
		pgstat_report_activity(STATE_IDLE, NULL);

		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   sc_stats_nap(wait_ms), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		SpinLockAcquire(&sc_shared->mutex);
		sc_shared->executors[my_slot].idle = false;
		SpinLockRelease(&sc_shared->mutex);

		if (rc & WL_LATCH_SET)
			idle_since = GetCurrentTimestamp();
	}

	/* idle for executor_idle_timeout, or retired: leave; the launcher starts us again */
	proc_exit(0);
}
