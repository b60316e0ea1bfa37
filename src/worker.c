/*-------------------------------------------------------------------------
 *
 * worker.c
 *		Plumbing the three background workers (launcher, executor,
 *		dispatcher) share: registration fields, the short transaction with
 *		an SPI connection and a snapshot that each of their database steps
 *		runs in, table statistics, and whether the extension (in the
 *		version this library speaks) is there to work on.
 *
 * Statistics: a background worker is not a client backend, so nothing
 * reports its table statistics for it.  Unreported, its updates and
 * deletes never reach pg_stat_user_tables, and autovacuum never sees the
 * dead rows of the hottest tables.  So every commit here reports them (at
 * most once a second, as backends do), and each worker bounds its sleep by
 * sc_stats_nap() so that what could not be reported yet is reported soon.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
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
	(void) pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * A worker's sleep of timeout_ms (-1: none), shortened so that statistics
 * still pending are reported within PostgreSQL's usual interval.  Outside
 * a transaction.
 */
long
sc_stats_nap(long timeout_ms)
{
	long		pending_ms = pgstat_report_stat(false);

	if (pending_ms > 0 && (timeout_ms < 0 || pending_ms < timeout_ms))
		return pending_ms;
	return timeout_ms;
}

/*
 * Whether the extension is installed in this database and usable for the
 * rest of this transaction (a worker starts before CREATE EXTENSION and
 * keeps running after DROP EXTENSION).  Called first in every worker
 * transaction, before any of our tables is touched.
 *
 * It holds the extension installed: a share lock on the extension, which
 * DROP EXTENSION takes exclusively before it locks any of the extension's
 * tables.  So a DROP waits for the workers' transactions in progress
 * (a running handler's included) and never deadlocks against one.  While a
 * DROP waits, this says false at once, or with wait queues behind it (which
 * cannot deadlock either: this is the transaction's first lock) and says
 * what the DROP came to.  False too while the installed version is not
 * the one this library speaks (schema_spoken()).
 */
static bool schema_spoken(Oid ext);

bool
sc_extension_installed(bool wait)
{
	Oid			ext = get_extension_oid("smartconnector", true);

	if (!OidIsValid(ext))
		return false;
	if (wait)
		LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
	else if (!ConditionalLockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock))
		return false;
	/* the lock processed invalidations: a DROP that committed just before is seen now */
	if (get_extension_oid("smartconnector", true) != ext)
		return false;
	return schema_spoken(ext);
}

/*
 * Whether the installed extension's version is the one this library's
 * workers speak.  After a package upgrade the new library runs before
 * anyone has run ALTER EXTENSION smartconnector UPDATE: the workers then
 * wait (say once, per process, why) and resume when the versions agree.
 */
static bool
schema_spoken(Oid ext)
{
	static bool skew_logged = false;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (version != NULL && strcmp(version, SC_VERSION) == 0)
	{
		if (skew_logged)
			ereport(LOG,
					(errmsg("smartconnector extension version %s is installed: resuming", version)));
		skew_logged = false;
		return true;
	}
	if (!skew_logged)
		ereport(LOG,
				(errmsg("smartconnector library %s waits: the database has extension version %s",
						SC_VERSION, version ? version : "(unknown)"),
				 errhint("Run ALTER EXTENSION smartconnector UPDATE in database \"%s\".",
						 get_database_name(MyDatabaseId))));
	skew_logged = true;
	return false;
}
