/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher background worker: fails executions whose runner is
 *		gone, and keeps enough executor workers running for the executions
 *		that may start now.
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
#include "utils/guc.h"
#include "utils/memutils.h"
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

static BackgroundWorkerHandle **executor_handles = NULL;	/* per slot */
static bool start_failure_logged = false;

static bool cleanup_batch(void);
static bool launcher_pass(int *running, int *admissible);
static void manage_executors(int admissible);
static bool start_executor(int slot);

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
 * One pass: fail executions of dead runners and count what may start now.
 * Returns false when the extension is not installed (yet).
 */
static bool
launcher_pass(int *running, int *admissible)
{
	bool		installed = false;
	int			ret;

	*running = 0;
	*admissible = 0;

	sc_work_begin("smartconnector: checking runners");

	installed = sc_extension_installed();
	if (installed)
	{
		Oid			types[1] = {INT4OID};
		Datum		args[1] = {Int32GetDatum(sc_max_workers)};
		bool		isnull;

		ret = SPI_execute_with_args("SELECT running, admissible FROM smartconnector.launcher_pass($1)",
									1, types, args, NULL, false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "smartconnector.launcher_pass() failed: %s", SPI_result_code_string(ret));
		*running = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*admissible = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
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
 * Start a dynamic executor worker in a free slot.
 */
static bool
start_executor(int slot)
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
 * Make sure that executions which may start now have executors: wake every
 * executor (an idle one takes the work; a busy one just looks again when
 * done), and start new ones while fewer are idle or starting than there is
 * work, up to smartconnector.max_workers.
 */
static void
manage_executors(int admissible)
{
	int			available = 0;	/* idle or still starting */
	int			to_start;

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
			sc_shared->executors[i].latch = NULL;
			SpinLockRelease(&sc_shared->mutex);
		}
	}
	if (admissible <= 0)
		return;

	SpinLockAcquire(&sc_shared->mutex);
	for (int i = 0; i < sc_shared->num_executor_slots; i++)
	{
		ScExecutorSlot *slot = &sc_shared->executors[i];

		if (!slot->in_use)
			continue;
		if (slot->idle || slot->latch == NULL)
			available++;
		if (slot->latch != NULL)
			SetLatch(slot->latch);
	}
	SpinLockRelease(&sc_shared->mutex);

	to_start = admissible - available;
	for (int i = 0; i < sc_shared->num_executor_slots && to_start > 0; i++)
	{
		bool		free_slot;

		SpinLockAcquire(&sc_shared->mutex);
		free_slot = !sc_shared->executors[i].in_use && executor_handles[i] == NULL;
		if (free_slot)
		{
			sc_shared->executors[i].in_use = true;
			sc_shared->executors[i].idle = false;
			sc_shared->executors[i].pid = 0;
			sc_shared->executors[i].latch = NULL;
		}
		SpinLockRelease(&sc_shared->mutex);
		if (!free_slot)
			continue;
		if (!start_executor(i))
		{
			SpinLockAcquire(&sc_shared->mutex);
			sc_shared->executors[i].in_use = false;
			SpinLockRelease(&sc_shared->mutex);
			break;
		}
		to_start--;
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
	BackgroundWorkerInitializeConnection(sc_database_name, NULL, 0);
	pgstat_report_appname("smartconnector launcher");

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
		int			admissible = 0;
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
			installed = launcher_pass(&running, &admissible);
			if (installed)
				manage_executors(admissible);
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

		naptime = (installed && running > 0) ? LAUNCHER_BUSY_NAPTIME_MS : LAUNCHER_IDLE_NAPTIME_MS;
		if (more_cleanup)
			naptime = 0;		/* delete the next batch right away */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 naptime, PG_WAIT_EXTENSION);
	}
}
