/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		The deliveries an ended execution owes: its webhook and its emails,
 *		queued in the transaction that ends it (the outbox), for the
 *		dispatcher to send (dispatcher.c).
 *
 * Rules: a delivery is queued in the same transaction as the end it
 * reports, so it exists exactly when the end committed; each gets its own
 * Standard Webhooks message id, kept across retries; a webhook keeps the
 * URL, secret and headers its connector had at the end; an address gets
 * one email, for the first reason that applies (notification, error
 * notification, the initiating user).  Called only by the state machine
 * (execution.c), with SPI connected and the settings pinned.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/formatting.h"

#include "smartconnector.h"

static SPIPlanPtr delivery_plan = NULL;

static void queue_delivery(int64 execution_id, Datum connector_id, const char *channel,
						   const char *target, const char *target_host, const char *reason,
						   Datum body, HeapTuple tup, TupleDesc desc, int first);

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
 * Queue the webhook and emails of an ended execution, in the caller's
 * transaction; wake the dispatcher at commit if anything was queued.  tup
 * holds SC_OUTBOX_COLUMNS from column first on.
 */
void
sc_queue_deliveries(int64 execution_id, HeapTuple tup, TupleDesc desc, int first)
{
	bool		isnull;
	Datum		connector_id = SPI_getbinval(tup, desc, first, &isnull);
	Datum		body = SPI_getbinval(tup, desc, first + 6, &isnull);
	/* emails in order of reason; an address gets the first that applies */
	static const char *const reasons[3] = {"notification", "error_notification", "initiator"};
	char	   *url = SPI_getvalue(tup, desc, first + 1);
	char	   *emails[3];
	char	   *folded[3];
	int			queued = 0;

	/* each delivery is a plain one-row INSERT (cheaper to set up than one INSERT ... SELECT) */
	if (url != NULL)
	{
		queue_delivery(execution_id, connector_id, "webhook", url,
					   SPI_getvalue(tup, desc, first + 2), "webhook", body,
					   tup, desc, first + 7);
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
					   reasons[k], body, tup, desc, first + 7);
		queued++;
	}
	if (queued > 0)
		sc_wake_dispatcher_at_commit();
}
