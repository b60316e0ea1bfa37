/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher background worker: fails executions whose runner is
 *		gone, and keeps enough executor workers running, for each role, for
 *		the executions that may start now.
 *
 * The pool: smartconnector.max_workers slots in all, shared by every role.
 * An executor serves the one role it connects as (executor.c), so the
 * launcher starts executors per role: each role with admissible work gets
 * a fair share of the slots (max-min: no role gets more than it can use, and
 * what is left is split evenly), and when every slot is taken, executors of
 * roles over their share retire (an idle one at once, a busy one after its
 * execution) to make room.  A role with work therefore never waits for
 * another role's backlog to drain, only for the execution in progress.
 *
 * When more roles have work than there are slots, the roles without one
 * take turns: for each, the executor that has served its role longest
 * retires after its execution.
 *
 * Connectors whose run_as role no executor can connect as (it was dropped,
 * renamed, or cannot log in) would wait forever: the launcher fails their
 * queued executions itself, in order and under their limits, saying why.
 * It also binds connectors restored or upgraded from another cluster again
 * (binding.c), when it starts and then every minute.
 *
 * A handler can catch the query cancel that cancel() and statement_timeout
 * send, and go on: the launcher terminates its executor once the progress
 * slot's stop_by has passed, and fails (or cancels) the execution with the
 * reason.
 *
 * The launcher runs as the bootstrap superuser, so its statements run with
 * search_path pinned (an operator of a user's on our enum types, in a
 * schema on the default path, would otherwise run as superuser), and it
 * never waits long for a lock that a user's open transaction holds: what
 * cannot be done now is skipped (lock_timeout, subtransactions) and done at
 * a later pass, while other connectors are served.
 *
 * It starts only once the server accepts writes (never on a standby), and
 * is woken through its latch at the commit of anything that may let an
 * execution start: a trigger, an ended execution, a changed status or
 * limit.  While executions run it also wakes every second to look for dead
 * runners (a session that disconnected frees its lock without telling
 * anyone), so those executions fail within about a second; after a crash
 * and restart no lock survives, and every execution left "running" fails at
 * once.
 *
 * Each pass runs in a short transaction of its own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "access/xlog.h"
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
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

/* Wait between passes while executions run (dead-runner detection) */
#define LAUNCHER_BUSY_NAPTIME_MS	1000
/* ... and when nothing runs: only a safety net, commits wake us */
#define LAUNCHER_IDLE_NAPTIME_MS	10000
/* History cleanup (smartconnector.history_retention): how often, how much per transaction */
#define CLEANUP_INTERVAL_MS			60000
#define CLEANUP_BATCH				5000

/* Fail at most this many executions of unrunnable connectors per pass */
#define FAIL_BATCH					100
/* How long the launcher waits for a lock before it leaves the work for later */
#define LAUNCHER_LOCK_TIMEOUT		"100ms"
/* Reasons of terminated executors remembered until their executions end */
#define MAX_STOPPED					64

static ScStopReason stopped[MAX_STOPPED];	/* reasons in TopMemoryContext */
static int	n_stopped = 0;

/* When each role last had an executor, for taking turns (see manage_executors) */
#define MAX_SERVED					256
typedef struct Served
{
	Oid			role;
	TimestampTz at;
} Served;
static Served served[MAX_SERVED];
static int	n_served = 0;

/* A role with executions that may start now */
typedef struct RoleDemand
{
	Oid			role;
	TimestampTz last_served;	/* when it last had an executor (0: never) */
	int			admissible;		/* executions that may start now */
	int			running;		/* executions its executors run */
	int			share;			/* slots it should have */
	int			executors;		/* slots it has (starting, busy or idle) */
	int			available;		/* of which idle or starting */
} RoleDemand;

static BackgroundWorkerHandle **executor_handles = NULL;	/* per slot */
static bool start_failure_logged = false;

static bool cleanup_batch(void);
static void bind_foreign_connectors(void *arg);
static void repair_queue_heads(void *arg);
static void remember_stop(int64 id, bool cancelled, const char *reason);
static void stop_overrunning(void);
static void stop_overdue_handlers(void);
static bool fail_unrunnable(Oid role, const char *run_as, const char *problem);
static bool launcher_pass(int *running, List **demand, bool *more);
static void fair_shares(List *demand, int slots);
static void manage_executors(List *demand);
static bool start_executor(int slot, Oid role);
static void set_latches(Latch **latches, int *n);
static void retire_all_executors(void);

/*
 * Register the launcher with the postmaster (from _PG_init).
 */
void
sc_register_launcher(void)
{
	BackgroundWorker worker;

	sc_fill_worker(&worker, "sc_launcher_main", "smartconnector launcher",
				   "smartconnector launcher");
	worker.bgw_restart_time = 1;
	RegisterBackgroundWorker(&worker);
}

/*
 * Bind connectors whose binding was made in another cluster (after
 * pg_upgrade, or a restore with triggers disabled) again, by name: an
 * UPDATE of bound_in asks connector_bind() to bind again (binding.c).
 */
static void
bind_foreign_connectors(void *arg)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(sc_system_identifier())};

	(void) set_config_option("smartconnector.internal_change", "rebind", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	if (SPI_execute_with_args("UPDATE smartconnector.connector SET bound_in = NULL"
							  " WHERE bound_in IS DISTINCT FROM $1",
							  1, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not bind connectors again");
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("smartconnector bound %llu connectors from another cluster to this one",
						(unsigned long long) SPI_processed)));
	(void) set_config_option("smartconnector.internal_change", "", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Make the queue heads (execution.c) agree with the queue and the
 * settings: a row for each connector with queued work that may run now (a
 * handler, an executable status, a limit above 0), none for the others, so
 * that executors never walk past paused backlogs.  enqueue() and the
 * executors keep them so, and a trigger on the connector table follows
 * its settings changes; this repairs what they cannot see (a queue
 * restored from a dump, an execution queued while its connector was being
 * resumed, rows lost).  Once a second: a few index probes per connector.
 */
static void
repair_queue_heads(void *arg)
{
	/* the head is looked up only for the connectors that lack a row */
	if (SPI_execute("INSERT INTO smartconnector_internal.queue_head (connector_id, head)"
					" SELECT c.id, (SELECT min(x.execution_id) FROM smartconnector_internal.queue x"
					"                WHERE x.connector_id = c.id)"
					"   FROM smartconnector.connector c"
					"  WHERE smartconnector_internal.may_run(c)"
					"    AND NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue_head h"
					"                     WHERE h.connector_id = c.id)"
					"    AND EXISTS (SELECT 1 FROM smartconnector_internal.queue x"
					"                 WHERE x.connector_id = c.id)", false, 0) != SPI_OK_INSERT ||
		SPI_execute("DELETE FROM smartconnector_internal.queue_head h"
					" WHERE NOT EXISTS (SELECT 1 FROM smartconnector.connector c"
					"                    WHERE c.id = h.connector_id"
					"                      AND smartconnector_internal.may_run(c))", false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not repair the queue heads");
}

/* One connector's queued executions to fail (fail_unrunnable) */
typedef struct FailWork
{
	int64		connector_id;
	const char *api_name;
	const char *problem;
	int			failed;
} FailWork;

static void
fail_connector(void *arg)
{
	FailWork   *w = (FailWork *) arg;

	while (w->failed < FAIL_BATCH && sc_fail_next(w->connector_id, w->api_name, w->problem) > 0)
		w->failed++;
}

/*
 * Fail the queued executions of the connectors that run as a role no
 * executor can connect as, in order and under their limits.  Returns
 * whether there may be more to fail than this pass did.
 */
static bool
fail_unrunnable(Oid role, const char *run_as, const char *problem)
{
	Oid			types[2] = {OIDOID, NAMEOID};
	Datum		args[2] = {ObjectIdGetDatum(role), DirectFunctionCall1(namein, CStringGetDatum(run_as))};
	char		nulls[2] = {OidIsValid(role) ? ' ' : 'n', ' '};
	SPITupleTable *connectors;
	uint64		n;
	int			failed = 0;

	if (SPI_execute_with_args("SELECT c.id, c.api_name FROM smartconnector.connector c"
							  " WHERE c.run_as_oid IS NOT DISTINCT FROM $1 AND c.run_as = $2"
							  "   AND c.handler IS NOT NULL"
							  "   AND smartconnector_internal.status_executable(c.status)"
							  "   AND EXISTS (SELECT 1 FROM smartconnector_internal.queue q"
							  "                WHERE q.connector_id = c.id)"
							  " ORDER BY c.id",
							  2, types, args, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the connectors of role \"%s\"", run_as);
	connectors = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n && failed < FAIL_BATCH; i++)
	{
		bool		isnull;
		FailWork	w;

		w.connector_id = DatumGetInt64(SPI_getbinval(connectors->vals[i], connectors->tupdesc, 1, &isnull));
		w.api_name = SPI_getvalue(connectors->vals[i], connectors->tupdesc, 2);
		w.problem = problem;
		w.failed = failed;
		if (sc_try_in_subtransaction(fail_connector, &w))
			failed = w.failed;
	}
	SPI_freetuptable(connectors);
	return failed >= FAIL_BATCH;
}

/*
 * Remember why the launcher stopped execution id, for the message it ends
 * with (sc_end_dead_runs() ends it once its runner is gone).  reason is kept:
 * a constant, or allocated in TopMemoryContext here.
 */
static void
remember_stop(int64 id, bool cancelled, const char *reason)
{
	if (n_stopped == MAX_STOPPED)
	{
		pfree(stopped[0].reason);
		memmove(&stopped[0], &stopped[1], sizeof(ScStopReason) * (MAX_STOPPED - 1));
		n_stopped--;
	}
	stopped[n_stopped].execution_id = id;
	stopped[n_stopped].cancelled = cancelled;
	stopped[n_stopped].reason = MemoryContextStrdup(TopMemoryContext, reason);
	n_stopped++;
}

/*
 * Stop the executions that have run longer than their connector's
 * max_duration (sc_stop_overrun()).  An external runner's session is
 * terminated, and its execution ends failed at the next pass, once the
 * session is gone, with the reason remembered here; an executor's handler
 * gets a query cancel, and the executor ends the execution failed itself.
 * The deadline is the connector's current max_duration, so a changed one
 * applies to running executions too.
 */
static void
stop_overrunning(void)
{
	SPITupleTable *overdue;
	uint64		n;

	if (SPI_execute("SELECT e.id, c.max_duration::text"
					"  FROM smartconnector.execution e"
					"  JOIN smartconnector.connector c ON c.id = e.connector_id"
					" WHERE e.state = 'running' AND c.max_duration IS NOT NULL"
					/* no overflow: '300000 years' is a valid max_duration */
					"   AND pg_catalog.clock_timestamp() - e.started_at >= c.max_duration"
					" ORDER BY e.id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the executions that exceeded max_duration");
	overdue = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(overdue->vals[i], overdue->tupdesc, 1, &isnull));
		char	   *max_duration = SPI_getvalue(overdue->vals[i], overdue->tupdesc, 2);

		switch (sc_stop_overrun(id, max_duration))
		{
			case SC_OVERRUN_TERMINATED:
				ereport(LOG,
						(errmsg("smartconnector terminates the runner session of execution %lld: it exceeded max_duration (%s)",
								(long long) id, max_duration)));
				remember_stop(id, false,
							  psprintf("execution exceeded max_duration (%s): its runner's session was terminated",
									   max_duration));
				break;
			case SC_OVERRUN_INTERRUPTED:
				ereport(LOG,
						(errmsg("smartconnector stops execution %lld: it exceeded max_duration (%s)",
								(long long) id, max_duration)));
				break;
			case SC_OVERRUN_LATER:
			case SC_OVERRUN_GONE:
				break;
		}
	}
	SPI_freetuptable(overdue);
}

/*
 * Terminate executors whose handler has not stopped by its slot's stop_by
 * (it caught the query cancel of cancel() or of its statement_timeout), and
 * remember why, for the message its execution ends with.
 */
static void
stop_overdue_handlers(void)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < sc_shared->num_progress_slots; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];
		int64		id = (int64) pg_atomic_read_u64(&slot->execution_id);
		pid_t		pid = 0;
		bool		for_cancel = false;
		char		overran[SC_MAX_DURATION_TEXT] = "";

		if (id == 0)
			continue;
		SpinLockAcquire(&sc_shared->mutex);
		if (SC_PHASE_RUNS_USER_CODE(slot->phase) && slot->stop_by != 0 && now >= slot->stop_by)
		{
			pid = slot->pid;
			for_cancel = slot->stop_for_cancel;
			strlcpy(overran, slot->overran, sizeof(overran));
			slot->stop_by = 0;	/* once */
		}
		SpinLockRelease(&sc_shared->mutex);
		if (pid == 0 || !sc_progress_slot_owner(i, pid))
			continue;			/* its backend is gone: failed as a runner that ended */
		ereport(LOG,
				(errmsg("smartconnector terminates the executor (pid %d) of execution %lld: its handler did not stop %s",
						(int) pid, (long long) id,
						for_cancel ? "when it was cancelled" :
						overran[0] != '\0' ? "at its max_duration" : "at its statement_timeout")));
		remember_stop(id, for_cancel,
					  for_cancel ? "the handler did not stop when it was cancelled: its executor was terminated" :
					  overran[0] != '\0' ?
					  psprintf("execution exceeded max_duration (%s): the handler did not stop, and its executor was terminated",
							   overran) :
					  "canceling statement due to statement timeout: the handler did not stop, and its executor was terminated");
		kill(pid, SIGTERM);
	}
}

/*
 * One pass: fail executions of dead runners, and list, per role, what may
 * start now; fail what no executor can run.  Returns false when the
 * extension is not installed (yet).  *demand is allocated in the caller's
 * memory context.
 */
static bool
launcher_pass(int *running, List **demand, bool *more)
{
	static bool bound = false;
	static TimestampTz last_bind = 0;
	static TimestampTz last_repair = 0;
	MemoryContext caller_cxt = CurrentMemoryContext;
	bool		installed = false;
	int			ret;

	*running = 0;
	*demand = NIL;
	*more = false;

	stop_overdue_handlers();
	sc_work_begin("smartconnector: checking runners");

	installed = sc_extension_installed(false);
	if (installed)
	{
		Oid			types[2] = {INT4OID, INT8OID};
		Datum		args[2] = {Int32GetDatum(sc_max_workers), Int64GetDatum(sc_system_identifier())};
		bool		isnull;
		SPITupleTable *roles;
		uint64		n;

		if (!bound || GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(last_bind, CLEANUP_INTERVAL_MS))
		{
			(void) sc_try_in_subtransaction(bind_foreign_connectors, NULL);
			bound = true;
			last_bind = GetCurrentTimestamp();
		}

		*running = sc_end_dead_runs(stopped, n_stopped);
		if (*running > 0)
			stop_overrunning();
		if (GetCurrentTimestamp() >= TimestampTzPlusMilliseconds(last_repair, LAUNCHER_BUSY_NAPTIME_MS))
		{
			(void) sc_try_in_subtransaction(repair_queue_heads, NULL);
			last_repair = GetCurrentTimestamp();
		}

		/* per role: what may start now, what runs, and whether it can be connected as */
		ret = SPI_execute_with_args(
			"SELECT c.run_as_oid, c.run_as, c.bound_in IS NOT DISTINCT FROM $2,"
			"       sum(LEAST(GREATEST(c.max_concurrent_executions - run.n, 0), q.n))::int,"
			"       sum(run.n)::int"
			/* only connectors with a queue head or running executions can have demand */
			"  FROM (SELECT h.connector_id FROM smartconnector_internal.queue_head h"
			"        UNION SELECT e.connector_id FROM smartconnector.execution e"
			"               WHERE e.state = 'running') w"
			"  JOIN smartconnector.connector c ON c.id = w.connector_id"
			" CROSS JOIN LATERAL (SELECT count(*) AS n FROM smartconnector.execution e"
			"                      WHERE e.connector_id = c.id AND e.state = 'running') run"
			/* in key order, so that the probe stays on the queue's primary key */
			" CROSS JOIN LATERAL (SELECT count(*) AS n"
			"                       FROM (SELECT 1 FROM smartconnector_internal.queue e"
			"                              WHERE e.connector_id = c.id"
			"                              ORDER BY e.execution_id LIMIT $1) s) q"
			" WHERE c.handler IS NOT NULL AND smartconnector_internal.status_executable(c.status)"
			" GROUP BY 1, 2, 3",
			2, types, args, NULL, true, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not count admissible executions: %s", SPI_result_code_string(ret));
		roles = SPI_tuptable;
		n = SPI_processed;
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	tup = roles->vals[i];
			TupleDesc	desc = roles->tupdesc;
			Datum		d = SPI_getbinval(tup, desc, 1, &isnull);
			Oid			bound_oid = isnull ? InvalidOid : DatumGetObjectId(d);
			char	   *run_as = SPI_getvalue(tup, desc, 2);
			bool		bound_here = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
			int			admissible = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
			int			role_running = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
			Oid			role;
			char	   *problem = sc_role_problem(run_as, bound_oid, bound_here, &role);

			if (problem != NULL)
			{
				if (admissible > 0 && fail_unrunnable(bound_oid, run_as, problem))
					*more = true;
				continue;
			}
			if (admissible > 0 || role_running > 0)
			{
				MemoryContext old = MemoryContextSwitchTo(caller_cxt);
				RoleDemand *r = palloc0(sizeof(RoleDemand));

				r->role = role;
				r->admissible = Min(admissible, sc_max_workers);
				r->running = role_running;
				*demand = lappend(*demand, r);
				MemoryContextSwitchTo(old);
			}
		}
		SPI_freetuptable(roles);
	}
	else
	{
		/* dropped (or being dropped): what we knew was of the old tables */
		bound = false;
		while (n_stopped > 0)
			pfree(stopped[--n_stopped].reason);
	}
	sc_work_commit();
	return installed;
}

/*
 * Delete one batch of expired history, in a transaction of its own (it
 * touches only ended executions, so admission never waits for it).
 * Returns whether there may be more to delete.
 */
static bool
cleanup_batch(void)
{
	int64		deleted = 0;
	int			ret;

	sc_work_begin("smartconnector: deleting expired history");
	if (!sc_extension_installed(false))
	{
		sc_work_commit();
		return false;
	}
	ret = SPI_execute("SELECT smartconnector.cleanup(NULL, " CppAsString2(CLEANUP_BATCH) ")", false, 1);
	if (ret == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			deleted = DatumGetInt64(d);
	}
	sc_work_commit();
	return deleted >= CLEANUP_BATCH;
}

/*
 * Start a dynamic executor worker for role in a free slot (the caller has
 * marked it in use).
 */
static bool
start_executor(int slot, Oid role)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	MemoryContext old;
	bool		registered;

	sc_fill_worker(&worker, "sc_executor_main", "smartconnector executor",
				   "smartconnector executor");
	snprintf(worker.bgw_name, BGW_MAXLEN, "smartconnector executor %d", slot);
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = Int32GetDatum(slot);
	worker.bgw_notify_pid = MyProcPid;

	SpinLockAcquire(&sc_shared->mutex);
	sc_shared->executors[slot].role = role;
	sc_shared->executors[slot].since = GetCurrentTimestamp();
	SpinLockRelease(&sc_shared->mutex);

	/* the handle outlives this pass: allocate it where pass_cxt resets cannot free it */
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	if (!registered)
	{
		if (!start_failure_logged)
			ereport(LOG,
					(errmsg("smartconnector could not start an executor worker"),
					 errhint("Raise \"max_worker_processes\"; the launcher, the dispatcher and up to \"smartconnector.max_workers\" executors need a slot each.")));
		start_failure_logged = true;
		return false;
	}
	start_failure_logged = false;
	executor_handles[slot] = handle;
	return true;
}

/*
 * Each role's fair share of the slots: max-min over what each can use (its
 * running executions and those that may start now).
 */
static void
fair_shares(List *demand, int slots)
{
	int			n = list_length(demand);
	int			left = slots;
	RoleDemand **by_want;
	int			i = 0;
	ListCell   *lc;

	if (n == 0)
		return;
	by_want = palloc(sizeof(RoleDemand *) * n);
	foreach(lc, demand)
		by_want[i++] = (RoleDemand *) lfirst(lc);
	/* ascending by want (a few roles at most: insertion sort) */
	for (i = 1; i < n; i++)
	{
		RoleDemand *r = by_want[i];
		int			want = r->running + r->admissible;
		int			j = i;

		for (; j > 0 && by_want[j - 1]->running + by_want[j - 1]->admissible > want; j--)
			by_want[j] = by_want[j - 1];
		by_want[j] = r;
	}
	for (i = 0; i < n; i++)
	{
		int			want = by_want[i]->running + by_want[i]->admissible;

		by_want[i]->share = Min(want, left / (n - i));
		left -= by_want[i]->share;
	}
	/* what integer division left over, to those that can use it, largest first */
	for (i = n - 1; i >= 0 && left > 0; i--)
	{
		if (by_want[i]->share < by_want[i]->running + by_want[i]->admissible)
		{
			by_want[i]->share++;
			left--;
		}
	}
	pfree(by_want);
}

/*
 * Remember that role has an executor now; or look up when it last had one
 * (at == 0).  When the table is full the entry served longest ago goes.
 */
static TimestampTz
role_served(Oid role, TimestampTz at)
{
	int			oldest = 0;

	for (int i = 0; i < n_served; i++)
	{
		if (served[i].role == role)
		{
			if (at != 0)
				served[i].at = at;
			return served[i].at;
		}
		if (served[i].at < served[oldest].at)
			oldest = i;
	}
	if (at == 0)
		return 0;
	if (n_served < MAX_SERVED)
		oldest = n_served++;
	served[oldest].role = role;
	served[oldest].at = at;
	return at;
}

/* Order of the roles when slots are handed out: served longest ago first */
static int
served_cmp(const ListCell *a, const ListCell *b)
{
	TimestampTz x = ((RoleDemand *) lfirst(a))->last_served;
	TimestampTz y = ((RoleDemand *) lfirst(b))->last_served;

	return (x > y) - (x < y);
}

/* How many executors a role should have now: its share, at least one with work */
static int
role_target(RoleDemand *r)
{
	return Max(r->share, r->admissible > 0 ? 1 : 0);
}

/* The demand entry of a role, or NULL */
static RoleDemand *
role_demand(List *demand, Oid role)
{
	ListCell   *lc;

	foreach(lc, demand)
	{
		RoleDemand *r = (RoleDemand *) lfirst(lc);

		if (r->role == role)
			return r;
	}
	return NULL;
}

/*
 * Set the latches collected under the spinlock, and empty the list.  A
 * latch whose executor exited meanwhile belongs to the next process using
 * that PGPROC, which just wakes once.
 */
static void
set_latches(Latch **latches, int *n)
{
	for (int i = 0; i < *n; i++)
		SetLatch(latches[i]);
	*n = 0;
}

/*
 * The extension is gone (or a DROP EXTENSION waits): ask every executor to
 * leave, so that none sleeps on until its idle timeout.  They are started
 * again once there is work.
 */
static void
retire_all_executors(void)
{
	Latch	  **to_wake = palloc(sizeof(Latch *) * sc_shared->num_executor_slots);
	int			n_wake = 0;

	SpinLockAcquire(&sc_shared->mutex);
	for (int i = 0; i < sc_shared->num_executor_slots; i++)
	{
		ScExecutorSlot *slot = &sc_shared->executors[i];

		if (slot->in_use && !slot->retire && slot->latch != NULL)
		{
			slot->retire = true;
			to_wake[n_wake++] = slot->latch;
		}
	}
	SpinLockRelease(&sc_shared->mutex);
	set_latches(to_wake, &n_wake);
}

/*
 * Make sure that executions which may start now have executors of their
 * role: wake the role's executors (an idle one takes the work; a busy one
 * just looks again when done), start new ones while the role has fewer
 * idle or starting than it has work and fewer than its share, and when no
 * slot is free, retire executors of roles over their share.
 */
static void
manage_executors(List *demand)
{
	int			free_slots = 0;
	int			exiting = 0;	/* exited, not reaped yet: free soon */
	int			unmet = 0;
	int			retiring = 0;
	ListCell   *lc;
	/* latches to set once the spinlock is released (no system calls under it) */
	Latch	  **to_wake = palloc(sizeof(Latch *) * sc_shared->num_executor_slots);
	int			n_wake = 0;

	/* free the slots of executors that stopped (or never started) */
	for (int i = 0; i < sc_shared->num_executor_slots; i++)
	{
		pid_t		pid;

		if (executor_handles[i] == NULL)
			continue;
		if (GetBackgroundWorkerPid(executor_handles[i], &pid) == BGWH_STOPPED)
		{
			pfree(executor_handles[i]);
			executor_handles[i] = NULL;
			SpinLockAcquire(&sc_shared->mutex);
			sc_shared->executors[i].in_use = false;
			sc_shared->executors[i].idle = false;
			sc_shared->executors[i].retire = false;
			sc_shared->executors[i].latch = NULL;
			SpinLockRelease(&sc_shared->mutex);
		}
	}

	fair_shares(demand, sc_shared->num_executor_slots);

	/* count each role's executors; wake those of roles with work */
	SpinLockAcquire(&sc_shared->mutex);
	for (int i = 0; i < sc_shared->num_executor_slots; i++)
	{
		ScExecutorSlot *slot = &sc_shared->executors[i];
		RoleDemand *r;

		if (!slot->in_use)
		{
			if (executor_handles[i] == NULL)
				free_slots++;
			else
				exiting++;
			continue;
		}
		if (slot->retire)
		{
			retiring++;
			continue;
		}
		r = role_demand(demand, slot->role);
		if (r == NULL)
			continue;
		r->executors++;
		if (slot->idle || slot->latch == NULL)
			r->available++;
		if (r->admissible > 0 && slot->latch != NULL)
			to_wake[n_wake++] = slot->latch;
	}
	SpinLockRelease(&sc_shared->mutex);
	set_latches(to_wake, &n_wake);

	/* the roles served longest ago get free slots first: so they take turns */
	foreach(lc, demand)
	{
		RoleDemand *r = (RoleDemand *) lfirst(lc);

		r->last_served = (r->executors > 0) ? role_served(r->role, GetCurrentTimestamp())
			: role_served(r->role, 0);
	}
	list_sort(demand, served_cmp);

	/*
	 * Start executors for roles below their target, one per role in turn:
	 * its share, and at least one for a role with work (more roles have
	 * work than there are slots: the roles without one take turns).
	 */
	for (bool started = true; started && free_slots > 0;)
	{
		started = false;
		foreach(lc, demand)
		{
			RoleDemand *r = (RoleDemand *) lfirst(lc);
			int			slot = -1;

			if (free_slots == 0 || r->admissible <= r->available || r->executors >= role_target(r))
				continue;
			SpinLockAcquire(&sc_shared->mutex);
			for (int i = 0; i < sc_shared->num_executor_slots && slot < 0; i++)
			{
				if (!sc_shared->executors[i].in_use && executor_handles[i] == NULL)
				{
					slot = i;
					sc_shared->executors[i].in_use = true;
					sc_shared->executors[i].idle = false;
					sc_shared->executors[i].retire = false;
					sc_shared->executors[i].pid = 0;
					sc_shared->executors[i].latch = NULL;
				}
			}
			SpinLockRelease(&sc_shared->mutex);
			if (slot < 0)
			{
				free_slots = 0;
				break;
			}
			if (!start_executor(slot, r->role))
			{
				SpinLockAcquire(&sc_shared->mutex);
				sc_shared->executors[slot].in_use = false;
				SpinLockRelease(&sc_shared->mutex);
				free_slots = 0;
				break;
			}
			free_slots--;
			r->executors++;
			r->available++;
			(void) role_served(r->role, GetCurrentTimestamp());
			started = true;
		}
	}

	/*
	 * No slot left: make room.  First from roles over their share (idle
	 * executors first); then, for each role with work and no executor at all
	 * (more roles have work than there are slots), from the executor that
	 * has served its role longest, so that the roles take turns.
	 */
	foreach(lc, demand)
	{
		RoleDemand *r = (RoleDemand *) lfirst(lc);

		if (r->admissible > r->available && r->executors < role_target(r))
			unmet += Min(r->admissible - r->available, role_target(r) - r->executors);
	}
	unmet -= retiring + exiting + free_slots;
	for (int pass = 0; pass < 3 && unmet > 0; pass++)
	{
		SpinLockAcquire(&sc_shared->mutex);
		while (unmet > 0)
		{
			int			victim = -1;

			for (int i = 0; i < sc_shared->num_executor_slots; i++)
			{
				ScExecutorSlot *slot = &sc_shared->executors[i];
				RoleDemand *r;

				if (!slot->in_use || slot->retire || slot->latch == NULL)
					continue;
				if (pass == 0 && !slot->idle)
					continue;
				r = role_demand(demand, slot->role);
				if (pass < 2 && r != NULL && r->executors <= r->share)
					continue;
				if (victim < 0 || slot->since < sc_shared->executors[victim].since)
					victim = i;
			}
			if (victim < 0)
				break;
			sc_shared->executors[victim].retire = true;
			to_wake[n_wake++] = sc_shared->executors[victim].latch;
			{
				RoleDemand *r = role_demand(demand, sc_shared->executors[victim].role);

				if (r != NULL)
					r->executors--;
			}
			unmet--;
		}
		SpinLockRelease(&sc_shared->mutex);
		set_latches(to_wake, &n_wake);
	}
}

/*
 * Launcher entry point.
 */
void
sc_launcher_main(Datum main_arg)
{
	MemoryContext pass_cxt;
	volatile TimestampTz last_cleanup = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (IsBinaryUpgrade)
		proc_exit(0);			/* pg_upgrade's servers run no connectors */
	BackgroundWorkerInitializeConnection(sc_database_name, NULL, 0);
	pgstat_report_appname("smartconnector launcher");
	sc_shared->database_id = MyDatabaseId;
	sc_apply_plan_settings(true);
	SetConfigOption("lock_timeout", LAUNCHER_LOCK_TIMEOUT, PGC_SUSET, PGC_S_OVERRIDE);

	executor_handles = MemoryContextAllocZero(TopMemoryContext,
											  sizeof(BackgroundWorkerHandle *) * sc_max_workers);

	/*
	 * Executors started by a previous launcher keep their slots until they
	 * exit (executor_detach frees them); we only start new ones in free slots.
	 */
	sc_publish_latch(&sc_shared->launcher);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector launcher pass",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		int			running = 0;
		List	   *volatile demand = NIL;
		volatile bool more_fail = false;
		volatile bool installed = false;
		volatile bool more_cleanup = false;
		long		naptime;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);

		/* the latch is reset before the pass so that no wakeup is lost */
		ResetLatch(MyLatch);

		PG_TRY();
		{
			bool		more;
			List	   *roles;

			installed = launcher_pass(&running, &roles, &more);
			demand = roles;
			more_fail = more;
			if (installed)
				manage_executors(roles);
			else
				retire_all_executors();
			if (installed && GetCurrentTimestamp() >=
				TimestampTzPlusMilliseconds(last_cleanup, CLEANUP_INTERVAL_MS))
			{
				more_cleanup = cleanup_batch();
				if (!more_cleanup)
					last_cleanup = GetCurrentTimestamp();
			}
		}
		PG_CATCH();
		{
			EmitErrorReport();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			running = 1;		/* try again soon */
		}
		PG_END_TRY();

		/* executions run, or are about to start: watch their runners and deadlines */
		naptime = (installed && (running > 0 || demand != NIL)) ?
			LAUNCHER_BUSY_NAPTIME_MS : LAUNCHER_IDLE_NAPTIME_MS;
		if (more_cleanup || more_fail)
			naptime = 0;		/* the next batch right away */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sc_stats_nap(naptime), PG_WAIT_EXTENSION);
	}
}
