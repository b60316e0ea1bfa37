/*-------------------------------------------------------------------------
 *
 * compat.c
 *		Entry points that only the SQL of extension version 0.1 calls.
 *
 * After a package upgrade the new library runs with the old schema until
 * someone runs ALTER EXTENSION smartconnector UPDATE (README: Upgrading).
 * The workers wait for the update, but sessions keep calling 0.1's
 * claim(), finish() and cancel(), whose PL/pgSQL calls these.  0.2 does all
 * of that in C (execution.c) and drops these SQL functions; they stay here,
 * thin wrappers over the state machine, for as long as an upgrade from 0.1
 * is supported.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(admit);
PG_FUNCTION_INFO_V1(begin_execution);
PG_FUNCTION_INFO_V1(complete_current);
PG_FUNCTION_INFO_V1(forget_current);
PG_FUNCTION_INFO_V1(complete_execution);
PG_FUNCTION_INFO_V1(execution_ended);
PG_FUNCTION_INFO_V1(signal_runner_at_commit);
PG_FUNCTION_INFO_V1(signal_committing_runner);

static char *jsonb_arg(FunctionCallInfo fcinfo, int n);

/* A jsonb argument as text, or NULL */
static char *
jsonb_arg(FunctionCallInfo fcinfo, int n)
{
	if (PG_ARGISNULL(n))
		return NULL;
	return DatumGetCString(DirectFunctionCall1(jsonb_out, PG_GETARG_DATUM(n)));
}

/* admit(connector_id bigint) returns bigint: 0.1's claim() admits */
Datum
admit(PG_FUNCTION_ARGS)
{
	bool		diff_check;
	bool		dry_run;
	int64		id = sc_claim_next(PG_GETARG_INT64(0), true, &diff_check, &dry_run);

	if (id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}

/* begin_execution(execution_id, connector_id, diff_check, dry_run): 0.1's claim() */
Datum
begin_execution(PG_FUNCTION_ARGS)
{
	sc_begin_current(PG_GETARG_INT64(0), PG_GETARG_INT64(1),
					 PG_GETARG_BOOL(2), PG_GETARG_BOOL(3), SC_PHASE_EXTERNAL);
	sc_forget_current_on_abort();
	PG_RETURN_VOID();
}

/* complete_current(error text, metadata jsonb) returns text: 0.1's finish() */
Datum
complete_current(PG_FUNCTION_ARGS)
{
	char	   *state;

	state = sc_end_current(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)),
						   jsonb_arg(fcinfo, 1), NULL, SC_COMMITTED_UNKNOWN, NULL);
	if (state == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(state));
}

/* forget_current() returns void: 0.1's claim() and finish() */
Datum
forget_current(PG_FUNCTION_ARGS)
{
	sc_clear_current();
	PG_RETURN_VOID();
}

/*
 * complete_execution(execution_id, created, updated, skipped, failed,
 * error, metadata, handler_result, committed) returns execution_state:
 * 0.1's cancel() and launcher_pass() (see sc_end_execution()).
 */
Datum
complete_execution(PG_FUNCTION_ARGS)
{
	int64		counts[SC_NUM_ACTIONS];
	ScCommitted committed = SC_COMMITTED_UNKNOWN;
	Oid			state;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	for (int k = 0; k < SC_NUM_ACTIONS; k++)
		counts[k] = PG_ARGISNULL(1 + k) ? 0 : PG_GETARG_INT64(1 + k);
	if (!PG_ARGISNULL(8))
		committed = PG_GETARG_BOOL(8) ? SC_COMMITTED_YES : SC_COMMITTED_NO;
	if (sc_end_execution(PG_GETARG_INT64(0), counts,
						 PG_ARGISNULL(5) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(5)),
						 jsonb_arg(fcinfo, 6), jsonb_arg(fcinfo, 7), committed, &state) == NULL)
		PG_RETURN_NULL();
	PG_RETURN_OID(state);
}

/* execution_ended(execution_id bigint) returns void: 0.1's cancel() of a queued execution */
Datum
execution_ended(PG_FUNCTION_ARGS)
{
	sc_queue_followers_of(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/* signal_runner_at_commit(execution_id bigint) returns void: 0.1's cancel() */
Datum
signal_runner_at_commit(PG_FUNCTION_ARGS)
{
	sc_signal_runner_at_commit(PG_GETARG_INT64(0));
	PG_RETURN_VOID();
}

/* signal_committing_runner(execution_id bigint) returns void: 0.1's cancel() */
Datum
signal_committing_runner(PG_FUNCTION_ARGS)
{
	(void) sc_signal_runner(PG_GETARG_INT64(0), true);
	PG_RETURN_VOID();
}
