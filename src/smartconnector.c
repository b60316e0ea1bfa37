/*-------------------------------------------------------------------------
 *
 * smartconnector.c
 *		Module entry point: _PG_init (settings, hooks, the workers) and the
 *		installation guard that CREATE EXTENSION runs first.
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

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "smartconnector.h"

PG_MODULE_MAGIC;

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

	sc_define_gucs(loaded_at_startup);

	if (!loaded_at_startup)
		return;

	sc_shmem_install_hooks();
	sc_install_utility_hook();
	sc_install_column_hint_hook();
	sc_register_launcher();
	sc_register_dispatcher();
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
