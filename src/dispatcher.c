/*-------------------------------------------------------------------------
 *
 * dispatcher.c
 *		The dispatcher background worker: sends completion webhooks and
 *		emails from the outbox (smartconnector.delivery), records every
 *		attempt, and retries on smartconnector.webhook_retry_schedule.
 *
 * Loop: wait (latch, curl sockets, curl's timer, the next due retry), then
 * in one short transaction record whatever finished and fetch what is due,
 * handing new requests to the transport (http.c).  No transaction is open
 * while the network is used: requests are only queued inside the
 * transaction and performed while waiting.  The latch is set at the commit
 * of every transaction that queued a delivery, so a completion is sent
 * within a loop turn; the loop never sleeps while something due is not in
 * flight (it fetches again as soon as a transfer frees a slot).
 *
 * Delivery is at least once: a crash between sending and recording sends
 * again after restart, with the same webhook-id.
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
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

/* Wake at least this often even with nothing due (a safety net only) */
#define DISPATCHER_MAX_NAP_MS	60000

static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr due_plan = NULL;

static void dispatcher_detach(int code, Datum arg);
static bool extension_installed(void);
static void record_results(List *results);
static TimestampTz fetch_due(void);
static SPIPlanPtr keep_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types);
static char *valid_text(const char *s);

/*
 * A receiver's response as text the database accepts: bytes that are not
 * valid in the database encoding become '?'.
 */
static char *
valid_text(const char *s)
{
	int			len = strlen(s);
	char	   *out = pstrdup(s);
	int			enc = GetDatabaseEncoding();

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
 * Register the dispatcher with the postmaster (from _PG_init).  It starts
 * only once the server accepts writes, so never on a standby: a promoted
 * standby starts it and sends what the old primary left pending.
 */
void
sc_register_dispatcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "smartconnector");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "sc_dispatcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "smartconnector dispatcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "smartconnector dispatcher");
	RegisterBackgroundWorker(&worker);
}

static void
dispatcher_detach(int code, Datum arg)
{
	sc_transport_shutdown();
	if (sc_shared == NULL)
		return;
	SpinLockAcquire(&sc_shared->mutex);
	if (sc_shared->dispatcher_pid == MyProcPid)
	{
		sc_shared->dispatcher_latch = NULL;
		sc_shared->dispatcher_pid = 0;
	}
	SpinLockRelease(&sc_shared->mutex);
}

static SPIPlanPtr
keep_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
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

static bool
extension_installed(void)
{
	int			ret = SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'smartconnector'",
								  true, 1);

	return ret == SPI_OK_SELECT && SPI_processed == 1;
}

/*
 * Record finished attempts; a failed one is retried after the next delay of
 * the retry schedule (or Retry-After, if the receiver asked for longer),
 * and fails for good once the schedule is used up.
 */
static void
record_results(List *results)
{
	Oid			types[7] = {INT8OID, BOOLOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID, INT8ARRAYOID};
	SPIPlanPtr	plan;
	Datum	   *delays;
	ArrayType  *schedule;
	ListCell   *lc;

	if (results == NIL)
		return;
	plan = keep_plan(&record_plan,
					 "SELECT smartconnector.record_attempt($1, $2, $3, $4, $5, $6,"
					 "  CASE WHEN d.attempts + 1 > coalesce(array_length($7, 1), 0) THEN NULL"
					 "       ELSE $7[d.attempts + 1] END)"
					 "  FROM smartconnector.delivery d WHERE d.id = $1",
					 7, types);

	delays = palloc(sizeof(Datum) * Max(sc_retry_schedule_len, 1));
	for (int i = 0; i < sc_retry_schedule_len; i++)
		delays[i] = Int64GetDatum(sc_retry_schedule_ms[i]);
	schedule = construct_array(delays, sc_retry_schedule_len, INT8OID, 8, true, TYPALIGN_DOUBLE);

	foreach(lc, results)
	{
		ScTransferResult *r = (ScTransferResult *) lfirst(lc);
		Datum		args[7];
		char		nulls[7] = "       ";
		ArrayType  *sched = schedule;
		int			ret;

		args[0] = Int64GetDatum(r->delivery_id);
		args[1] = BoolGetDatum(r->ok);
		args[2] = TimestampTzGetDatum(r->finished_at);
		args[3] = Int32GetDatum(r->status);
		if (r->status == 0)
			nulls[3] = 'n';
		if (r->error)
			args[4] = CStringGetTextDatum(r->error);
		else
			nulls[4] = 'n';
		if (r->response)
			args[5] = CStringGetTextDatum(valid_text(r->response));
		else
			nulls[5] = 'n';

		/* Retry-After longer than the schedule's delay wins; permanent errors do not retry */
		if (r->permanent)
			sched = construct_empty_array(INT8OID);
		else if (r->retry_after_s > 0)
		{
			Datum	   *longer = palloc(sizeof(Datum) * Max(sc_retry_schedule_len, 1));

			for (int i = 0; i < sc_retry_schedule_len; i++)
				longer[i] = Int64GetDatum(Max(sc_retry_schedule_ms[i], (int64) r->retry_after_s * 1000));
			sched = construct_array(longer, sc_retry_schedule_len, INT8OID, 8, true, TYPALIGN_DOUBLE);
		}
		args[6] = PointerGetDatum(sched);

		ret = SPI_execute_plan(plan, args, nulls, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not record a delivery attempt: %s", SPI_result_code_string(ret));
	}
}

/*
 * Hand every due delivery that fits the connection limits to the
 * transport.  Returns when the next not-yet-due delivery becomes due (0 if
 * none).
 */
static TimestampTz
fetch_due(void)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		args[2];
	SPIPlanPtr	plan;
	int			ret;
	int			free_slots = sc_max_deliveries_in_flight - sc_transport_in_flight();
	TimestampTz next_due = 0;
	int64		now_s = (int64) time(NULL);

	plan = keep_plan(&due_plan,
					 "SELECT id, channel, target, target_host, webhook_id, body,"
					 "       webhook_secret, header_lines, email_subject, execution_id, next_due"
					 "  FROM smartconnector.due_deliveries($1, $2)",
					 2, types);
	args[0] = Int32GetDatum(sc_max_connections_per_host);
	args[1] = Int32GetDatum(sc_max_deliveries_in_flight + sc_transport_in_flight());
	/* read_only = false: see the attempts recorded just before, in this transaction */
	ret = SPI_execute_plan(plan, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read due deliveries: %s", SPI_result_code_string(ret));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id;
		char	   *channel;
		char	   *target;
		char	   *host;
		char	   *msg_id;
		char	   *body;

		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		if (isnull)
		{
			Datum		d = SPI_getbinval(tup, desc, 11, &isnull);

			if (!isnull)
				next_due = DatumGetTimestampTz(d);
			continue;
		}
		host = SPI_getvalue(tup, desc, 4);
		if (free_slots <= 0 || sc_transport_has(id) ||
			sc_transport_host_count(host) >= sc_max_connections_per_host)
			continue;

		channel = SPI_getvalue(tup, desc, 2);
		target = SPI_getvalue(tup, desc, 3);
		msg_id = SPI_getvalue(tup, desc, 5);
		body = SPI_getvalue(tup, desc, 6);

		if (strcmp(channel, "webhook") == 0)
		{
			List	   *headers = NIL;
			char	   *secret = SPI_getvalue(tup, desc, 7);
			Datum		lines = SPI_getbinval(tup, desc, 8, &isnull);

			headers = lappend(headers, "Content-Type: application/json");
			headers = lappend(headers, "User-Agent: smartconnector/" SC_VERSION);
			headers = lappend(headers, psprintf("webhook-id: %s", msg_id));
			headers = lappend(headers, psprintf("webhook-timestamp: " INT64_FORMAT, now_s));
			if (secret != NULL)
			{
				char	   *sig = sc_webhook_signature(secret, msg_id, now_s, body);

				if (sig != NULL)
					headers = lappend(headers, psprintf("webhook-signature: %s", sig));
			}
			if (!isnull)
			{
				Datum	   *elems;
				bool	   *elem_nulls;
				int			n;

				deconstruct_array(DatumGetArrayTypeP(lines), TEXTOID, -1, false, TYPALIGN_INT,
								  &elems, &elem_nulls, &n);
				for (int k = 0; k < n; k++)
				{
					if (!elem_nulls[k])
						headers = lappend(headers, TextDatumGetCString(elems[k]));
				}
			}
			sc_transport_add_webhook(id, host, target, body, headers);
		}
		else
		{
			char	   *subject = SPI_getvalue(tup, desc, 9);
			int64		execution_id = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));

			sc_transport_add_email(id, target,
								   sc_email_message(sc_smtp_from, target, subject, body,
													msg_id, execution_id));
		}
		free_slots--;
	}
	return next_due;
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

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(sc_database_name, NULL, 0);
	pgstat_report_appname("smartconnector dispatcher");

	/*
	 * A recorded attempt lost in a crash only means that delivery is sent
	 * again (at least once, same webhook-id), so the dispatcher need not wait
	 * for its commits to reach disk.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	sc_transport_init();
	SpinLockAcquire(&sc_shared->mutex);
	sc_shared->dispatcher_latch = MyLatch;
	sc_shared->dispatcher_pid = MyProcPid;
	SpinLockRelease(&sc_shared->mutex);
	before_shmem_exit(dispatcher_detach, (Datum) 0);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "smartconnector dispatcher pass",
									 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		List	   *results;
		long		timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			sc_transport_configure();
			need_fetch = true;
		}
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);

		results = sc_transport_take_results();
		if (results != NIL)
			need_fetch = true;	/* slots were freed */
		if (next_due != 0 && GetCurrentTimestamp() >= next_due)
			need_fetch = true;

		if (need_fetch)
		{
			need_fetch = false;
			PG_TRY();
			{
				SetCurrentStatementStartTimestamp();
				StartTransactionCommand();
				if (SPI_connect() != SPI_OK_CONNECT)
					elog(ERROR, "SPI_connect failed");
				PushActiveSnapshot(GetTransactionSnapshot());
				pgstat_report_activity(STATE_RUNNING, "smartconnector: dispatching");
				installed = extension_installed();
				if (installed)
				{
					record_results(results);
					next_due = fetch_due();
				}
				SPI_finish();
				PopActiveSnapshot();
				CommitTransactionCommand();
				pgstat_report_activity(STATE_IDLE, NULL);
			}
			PG_CATCH();
			{
				/* unrecorded attempts stay pending and are sent again */
				EmitErrorReport();
				FlushErrorState();
				AbortOutOfAnyTransaction();
				next_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
			}
			PG_END_TRY();
		}
		sc_transport_free_results(results);

		if (!installed)
			timeout = 10000;
		else if (next_due != 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), next_due, &secs, &usecs);
			timeout = Min(secs * 1000 + (usecs + 999) / 1000, DISPATCHER_MAX_NAP_MS);
		}
		else
			timeout = DISPATCHER_MAX_NAP_MS;

		if (sc_transport_wait(timeout))
			need_fetch = true;
	}
}
