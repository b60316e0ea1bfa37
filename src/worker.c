/*-------------------------------------------------------------------------
 *
 * worker.c
 *		Plumbing the three background workers (launcher, executor,
 *		dispatcher) share: registration fields, the short transaction with
 *		an SPI connection and a snapshot that each of their database steps
 *		runs in, and plans kept for the life of the process.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "utils/snapmgr.h"

#include "smartconnector.h"

/*
 * Fill in a worker that connects to smartconnector.database_name once the
 * server accepts writes (so never on a standby).
 */
void
sc_fill_worker(BackgroundWorker *worker, const char *function, const char *name,
			   const char *type)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "smartconnector");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", type);
}

/*
 * Start a short transaction with an SPI connection and a snapshot, and say
 * in pg_stat_activity what it does.
 */
void
sc_work_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/*
 * Commit what sc_work_begin() started.
 */
void
sc_work_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Whether the extension is installed in this database (a worker starts
 * before CREATE EXTENSION and keeps running after DROP EXTENSION).  Inside
 * a transaction.
 */
bool
sc_extension_installed(void)
{
	return OidIsValid(get_extension_oid("smartconnector", true));
}

/*
 * Prepare a statement the first time it is needed and keep the plan.
 */
SPIPlanPtr
sc_keep_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}
