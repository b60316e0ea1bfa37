/*-------------------------------------------------------------------------
 *
 * smartconnector.c
 *		Module entry point: _PG_init, GUC definitions and the installation
 *		guard that CREATE EXTENSION runs first.
 *
 * The library must be loaded through shared_preload_libraries, because it
 * runs background workers that the postmaster starts.  When it is loaded
 * later (a plain LOAD, or a backend calling one of its validators after
 * the setting was removed) it still defines its GUCs so that settings keep
 * their documented names, but defines no PGC_POSTMASTER setting (that is
 * possible only at startup) and registers nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "smartconnector.h"

PG_MODULE_MAGIC;

/* GUC variables */
char	   *sc_database_name = NULL;
int			sc_max_workers = 4;
int			sc_executor_idle_timeout = 60;
char	   *sc_report_url_template = NULL;
static char *sc_internal_change = NULL;

/* Whether _PG_init ran while shared_preload_libraries was processed */
static bool loaded_at_startup = false;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(assert_installable);

/*
 * Define GUCs and, when preloaded, everything the postmaster must know.
 */
void
_PG_init(void)
{
	loaded_at_startup = process_shared_preload_libraries_in_progress;

	/* PGC_POSTMASTER settings can be defined only while preloading */
	if (loaded_at_startup)
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

	if (!loaded_at_startup)
		return;

	sc_shmem_install_hooks();
	sc_register_launcher();
}

/*
 * Report whether the library was loaded by shared_preload_libraries.
 */
bool
sc_loaded_at_startup(void)
{
	return loaded_at_startup;
}

/*
 * assert_installable: refuse CREATE EXTENSION where the workers cannot serve.
 *
 * The extension script calls this first.  Two conditions: the library was
 * preloaded (otherwise no worker would ever run, and executions would queue
 * forever without a word), and the current database is the one the workers
 * connect to (smartconnector.database_name), as pg_cron does.
 */
Datum
assert_installable(PG_FUNCTION_ARGS)
{
	const char *dbname;

	if (!loaded_at_startup)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("smartconnector must be loaded via \"shared_preload_libraries\""),
				 errhint("Add smartconnector to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));

	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || strcmp(dbname, sc_database_name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("smartconnector can only be created in database \"%s\"",
						sc_database_name),
				 errdetail("The smartconnector workers serve the database named by \"smartconnector.database_name\"."),
				 errhint("Create the extension in database \"%s\", or change \"smartconnector.database_name\" and restart the server.",
						 sc_database_name)));

	PG_RETURN_VOID();
}
