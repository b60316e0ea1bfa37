/*-------------------------------------------------------------------------
 *
 * plans.c
 *		How smartconnector's own statements run, in every process that runs
 *		them (workers, and user backends through claim(), finish(),
 *		cancel() and trigger()): plans prepared once and kept, the settings
 *		they are planned and run with, the executors' privileged sections,
 *		and subtransactions that give way to a user's lock.
 *
 * Rules: every statement of ours runs with the pinned settings (a caller's
 * search_path can neither change what a name resolves to nor force a
 * re-plan); no user-defined code runs inside a privileged section.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "smartconnector.h"

/*
 * The settings the workers' own statements are planned and run with, as
 * their plans are kept for the life of the process: a search_path nobody
 * can change; joins by nested loop (every join pairs a few rows by key,
 * and generic plans made without this walked every connector in a merge
 * join to end one execution); no JIT (the statements run in well under a
 * millisecond, and compiling one takes several).  For the whole session
 * (the dispatcher, which runs no other code), or until sc_unpin_settings()
 * (the state machine in user backends and executors, which also run
 * user code).
 */
void
sc_apply_plan_settings(bool whole_session)
{
	static const char *const settings[][2] = {
		{"search_path", "pg_catalog, pg_temp"},
		/* off would make our triggers take our own changes for a restore */
		{"check_function_bodies", "on"},
		{"enable_hashjoin", "off"},
		{"enable_mergejoin", "off"},
		{"jit", "off"},
	};

	for (size_t i = 0; i < lengthof(settings); i++)
		(void) set_config_option(settings[i][0], settings[i][1], PGC_SUSET,
								 whole_session ? PGC_S_OVERRIDE : PGC_S_SESSION,
								 whole_session ? GUC_ACTION_SET : GUC_ACTION_SAVE,
								 true, 0, false);
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

/* Nesting of privileged sections; inside one the plan settings are pinned */
static int	privileged_depth = 0;

/*
 * Whether the plan settings are pinned already (inside a privileged
 * section), so that sc_pin_settings() need not pin them again.
 */
bool
sc_plan_settings_pinned(void)
{
	return privileged_depth > 0;
}

/*
 * Forget the privileged sections an error left (the abort has restored the
 * user and the settings).
 */
void
sc_privileged_reset(void)
{
	privileged_depth = 0;
}

/*
 * Enter a privileged section of an executor, whose session is its role's:
 * the bookkeeping of admission, loading and ending an execution runs as the
 * bootstrap superuser, as a security-restricted operation (no temp tables,
 * no SET ROLE, no cursors WITH HOLD), with our statements' settings pinned
 * and the user-settable ones that would change what they do put back:
 * a role's (or a handler's) lock_timeout would break admission waits,
 * transform_null_equals would change comparisons.  No
 * user-defined code runs inside.  Transaction abort ends it as well.
 */
void
sc_privileged_begin(ScPrivileged *p)
{
	static const char *const settings[][2] = {
		{"lock_timeout", "0"},
		{"transform_null_equals", "off"},
		{"standard_conforming_strings", "on"},
	};

	GetUserIdAndSecContext(&p->save_userid, &p->save_sec_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   p->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	p->nest = NewGUCNestLevel();
	sc_apply_plan_settings(false);
	for (size_t i = 0; i < lengthof(settings); i++)
		(void) set_config_option(settings[i][0], settings[i][1], PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	privileged_depth++;
}

/*
 * Leave a privileged section: the session's role and settings again.
 */
void
sc_privileged_end(ScPrivileged *p)
{
	privileged_depth--;
	AtEOXact_GUC(true, p->nest);
	SetUserIdAndSecContext(p->save_userid, p->save_sec_context);
}

/*
 * Pin the settings our statements are planned and run with
 * (sc_apply_plan_settings()); returns the GUC nest level to restore with
 * sc_unpin_settings().  (An abort restores them by itself.)  Inside an
 * executor's privileged section they are pinned already.
 */
int
sc_pin_settings(void)
{
	int			nest;

	if (sc_plan_settings_pinned())
		return 0;
	nest = NewGUCNestLevel();
	sc_apply_plan_settings(false);
	return nest;
}

void
sc_unpin_settings(int nest)
{
	if (nest > 0)
		AtEOXact_GUC(true, nest);
}

/*
 * Connect to SPI, or fail.
 */
void
sc_spi_connect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/*
 * Do some work in a subtransaction; if it cannot get a lock in time
 * (lock_not_available: a user's transaction holds it), undo it and return
 * false, so that the rest of the pass goes on.  Other errors propagate.
 */
bool
sc_try_in_subtransaction(void (*work) (void *), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool done = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		work(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			ReThrowError(edata);
		FreeErrorData(edata);
		done = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return done;
}
