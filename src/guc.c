/*-------------------------------------------------------------------------
 *
 * guc.c
 *		smartconnector's server settings (GUCs): their variables, which
 *		every layer reads, and their definitions, which _PG_init makes.
 *
 * The bottom layer: it calls nothing of smartconnector's but the check
 * hook of allowed_private_addresses (transport.c owns what it means).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(retention_cutoff);

/* GUC variables */
char	   *sc_database_name = NULL;
int			sc_max_workers = 4;
int			sc_executor_idle_timeout = 60;
char	   *sc_report_url_template = NULL;
int			sc_webhook_timeout_ms = 10000;
bool		sc_block_private_addresses = true;
char	   *sc_allowed_private_addresses = NULL;
bool		sc_smtp_allow_plaintext_auth = false;
int			sc_max_connections_per_host = 8;
int			sc_max_deliveries_in_flight = 256;
char	   *sc_smtp_url = NULL;
char	   *sc_smtp_from = NULL;
char	   *sc_smtp_user = NULL;
char	   *sc_smtp_password = NULL;
int64	   *sc_retry_schedule_ms = NULL;
int			sc_retry_schedule_len = 0;
static char *sc_retry_schedule = NULL;
int			sc_history_retention_min = 30 * 24 * 60;
int			sc_cancel_grace_ms = 5000;
int			sc_group_size = 1;
int			sc_group_window_ms = 10;

/* The parsed retry schedule, as the GUC machinery keeps it (malloc'd) */
typedef struct RetrySchedule
{
	int			len;
	int64		ms[FLEXIBLE_ARRAY_MEMBER];
} RetrySchedule;

static bool check_retry_schedule(char **newval, void **extra, GucSource source);
static void assign_retry_schedule(const char *newval, void *extra);
static char *sc_internal_change = NULL;


/*
 * check hook of smartconnector.webhook_retry_schedule: a comma-separated
 * list of delays with units, such as "5s,5min,30min,2h".
 */
static bool
check_retry_schedule(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	char	   *item;
	char	   *save = NULL;
	int			n = 0;
	RetrySchedule *sched;

	sched = malloc(offsetof(RetrySchedule, ms) + sizeof(int64) * (strlen(copy) / 2 + 1));
	if (sched == NULL)
		return false;
	for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
	{
		int			ms;
		const char *hint = NULL;

		while (*item == ' ')
			item++;
		if (*item == '\0')
			continue;
		if (!parse_int(item, &ms, GUC_UNIT_MS, &hint) || ms < 0)
		{
			GUC_check_errdetail("\"%s\" is not a delay such as 5s, 5min or 2h.", item);
			if (hint)
				GUC_check_errhint("%s", hint);
			free(sched);
			pfree(copy);
			return false;
		}
		sched->ms[n++] = ms;
	}
	sched->len = n;
	pfree(copy);
	*extra = sched;
	return true;
}

static void
assign_retry_schedule(const char *newval, void *extra)
{
	RetrySchedule *sched = (RetrySchedule *) extra;

	sc_retry_schedule_len = sched ? sched->len : 0;
	sc_retry_schedule_ms = sched ? sched->ms : NULL;
}

/*
 * Define every GUC; the PGC_POSTMASTER ones only at_startup (while
 * shared_preload_libraries is processed), the only time that is possible.
 */
void
sc_define_gucs(bool at_startup)
{
	/* PGC_POSTMASTER settings can be defined only while preloading */
	if (at_startup)
	{
		DefineCustomStringVariable("smartconnector.database_name",
								   "Database whose connectors the smartconnector workers serve.",
								   "The extension can be created only in this database.",
								   &sc_database_name,
								   "postgres",
								   PGC_POSTMASTER,
								   GUC_SUPERUSER_ONLY,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("smartconnector.max_workers",
								"Maximum number of executor workers running connector handlers at once.",
								"Each needs a slot in max_worker_processes.",
								&sc_max_workers,
								4, 1, 128,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	}

	DefineCustomIntVariable("smartconnector.executor_idle_timeout",
							"Time an executor worker waits for work before it exits.",
							NULL,
							&sc_executor_idle_timeout,
							60, 1, 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.cancel_grace",
							"Time a handler has to stop after cancel() or its statement_timeout before its executor is terminated.",
							"A handler can catch the query cancel both send; then only terminating its executor stops it.",
							&sc_cancel_grace_ms,
							5000, 0, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.group_size",
							"Most executions of short handlers an executor runs in one transaction.",
							"Each runs in a subtransaction of its own; 1 runs every execution in a transaction of its own.",
							&sc_group_size,
							1, 1, SC_MAX_GROUP,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.group_window",
							"Time after which an executor commits the executions it groups in one transaction.",
							"Only handlers that took at most group_window / group_size on their connector's last run in that executor are grouped.",
							&sc_group_window_ms,
							10, 1, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.webhook_timeout",
							"Time limit of one webhook or email delivery attempt.",
							NULL,
							&sc_webhook_timeout_ms,
							10000, 100, 300000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.webhook_retry_schedule",
							   "Delays before each retry of a failed webhook or email; then it fails.",
							   "A comma-separated list such as 5s,5min,30min,2h,5h,10h,10h.",
							   &sc_retry_schedule,
							   "5s,5min,30min,2h,5h,10h,10h",
							   PGC_SIGHUP,
							   0,
							   check_retry_schedule, assign_retry_schedule, NULL);

	DefineCustomBoolVariable("smartconnector.block_private_addresses",
							 "Refuse webhooks to loopback, private, link-local and metadata addresses.",
							 "Checked after name resolution, on the address actually connected to.",
							 &sc_block_private_addresses,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.allowed_private_addresses",
							   "Networks webhooks may reach although smartconnector.block_private_addresses refuses them.",
							   "A comma-separated list of addresses or CIDR networks, such as 10.20.0.0/16, fd00::5.",
							   &sc_allowed_private_addresses,
							   "",
							   PGC_SIGHUP,
							   0,
							   sc_check_allowed_networks, sc_assign_allowed_networks, NULL);

	DefineCustomIntVariable("smartconnector.max_connections_per_host",
							"Concurrent deliveries (and kept-alive connections) per receiving host.",
							NULL,
							&sc_max_connections_per_host,
							8, 1, 256,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.max_deliveries_in_flight",
							"Concurrent deliveries of the dispatcher in all.",
							NULL,
							&sc_max_deliveries_in_flight,
							256, 1, 10000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.smtp_url",
							   "SMTP server for completion emails, e.g. smtp://mail.example.com:587 or smtps://...",
							   "Empty: emails stay pending, unsent, until it is set.  Superuser only.",
							   &sc_smtp_url,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("smartconnector.smtp_allow_plaintext_auth",
							 "Send SMTP credentials over a connection without TLS.",
							 "Off: with smtp_user set, smtp:// must upgrade with STARTTLS or the email is not sent.  On only for a relay on a trusted local network.",
							 &sc_smtp_allow_plaintext_auth,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.smtp_from",
							   "Sender address of completion emails.",
							   NULL,
							   &sc_smtp_from,
							   "smartconnector@localhost",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.smtp_user",
							   "SMTP user name (superuser only).",
							   NULL,
							   &sc_smtp_user,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.smtp_password",
							   "SMTP password (superuser only).",
							   NULL,
							   &sc_smtp_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("smartconnector.history_retention",
							"How long ended executions, their reports and deliveries are kept; 0 keeps them forever.",
							"The launcher deletes older ones every minute, in batches.",
							&sc_history_retention_min,
							30 * 24 * 60, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MIN,
							NULL, NULL, NULL);

	DefineCustomStringVariable("smartconnector.report_url_template",
							   "URL of an execution's output report; {execution_id} and {api_name} are replaced.",
							   "Empty means executions have no report URL.",
							   &sc_report_url_template,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	/*
	 * Set (transaction-locally) by the extension's own SECURITY DEFINER code
	 * to make a change the settings trigger otherwise refuses: an api_name
	 * rename, or the system-only status need_attention.  Superuser-only, so
	 * ordinary roles cannot set it; a superuser who does so acts deliberately.
	 */
	DefineCustomStringVariable("smartconnector.internal_change",
							   "Internal: names the change smartconnector itself is making.",
							   NULL,
							   &sc_internal_change,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_NO_RESET_ALL,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("smartconnector");
}

/*
 * retention_cutoff() returns timestamptz: executions that ended before this
 * may be deleted; NULL when smartconnector.history_retention is 0.
 */
Datum
retention_cutoff(PG_FUNCTION_ARGS)
{
	if (sc_history_retention_min <= 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(GetCurrentTransactionStartTimestamp() -
						  (TimestampTz) sc_history_retention_min * 60 * USECS_PER_SEC);
}
