/*-------------------------------------------------------------------------
 *
 * identity.c
 *		The acting role: whose privileges the code that called smartconnector
 *		runs with.  Every privilege decision and every audit record of the
 *		extension (changed_by, initiated_by, created_by, cancelled_by, the
 *		role a schedule runs as) uses it.
 *
 * PostgreSQL's answer to "whose code is this" is the current user
 * (GetUserId()): the role whose privileges are checked for everything the
 * code does.  A role's code cannot borrow another: code owned by mallory
 * runs as mallory inside a superuser's ANALYZE, in autovacuum, in a trigger
 * fired by someone else, or as a SECURITY DEFINER function a superuser
 * calls.  The session's outer user (GetOuterUserId(), what 0.1 used) is the
 * superuser's in all those places, so any such code could act as them.
 *
 * Our privileged functions run with the extension owner's rights, so inside
 * them the current user is the owner.  Each of them therefore comes in two
 * parts: the public entry point, a C function declared SECURITY INVOKER
 * whose symbol is sc_entry, which starts as its caller, records the caller's
 * current user as the acting role and calls the implementation; and the
 * implementation, a SECURITY DEFINER function of the same arguments named
 * <name>_impl in smartconnector_internal, which only the owner may execute.  The same holds for the
 * settings triggers.  calling_role() answers the acting role while an
 * implementation runs, and the current user everywhere else.
 *
 * Implementations run only the extension's own code, so an entry point
 * reached from inside one (the settings trigger fired by change_api_name's
 * UPDATE) keeps the acting role of the outer one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/syscache.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(sc_entry);
PG_FUNCTION_INFO_V1(calling_role);

/* Nested entry points: far fewer in practice (an entry, its trigger) */
#define MAX_ENTRY_DEPTH 32

typedef struct ActingEntry
{
	Oid			acting;			/* the caller's current user */
	Oid			owner;			/* the user the implementation runs as */
} ActingEntry;

static ActingEntry acting_stack[MAX_ENTRY_DEPTH];
static int	acting_depth = 0;

/* An entry point's implementation, looked up once per call site */
typedef struct EntryCache
{
	FmgrInfo	impl;
	Oid			owner;
} EntryCache;

static EntryCache *entry_cache(FunctionCallInfo fcinfo);

/*
 * The acting role: the caller of the innermost entry point while its
 * implementation (running as the owner) is on the stack, otherwise the
 * current user.
 */
Oid
sc_acting_role(void)
{
	if (acting_depth > 0 && GetUserId() == acting_stack[acting_depth - 1].owner)
		return acting_stack[acting_depth - 1].acting;
	return GetUserId();
}

/*
 * Find <name>_impl with the same arguments in smartconnector_internal, owned
 * by the entry point's owner.
 */
static EntryCache *
entry_cache(FunctionCallInfo fcinfo)
{
	EntryCache *cache = (EntryCache *) fcinfo->flinfo->fn_extra;
	HeapTuple	tup;
	Form_pg_proc entry;
	HeapTuple	impl_tup;
	char		impl_name[NAMEDATALEN];
	Oid			impl_oid;

	if (cache != NULL)
		return cache;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	entry = (Form_pg_proc) GETSTRUCT(tup);
	if (snprintf(impl_name, sizeof(impl_name), "%s_impl", NameStr(entry->proname)) >= NAMEDATALEN)
		elog(ERROR, "entry point name \"%s\" is too long", NameStr(entry->proname));
	impl_tup = SearchSysCache3(PROCNAMEARGSNSP, CStringGetDatum(impl_name),
							   PointerGetDatum(&entry->proargtypes),
							   ObjectIdGetDatum(get_namespace_oid(SC_INTERNAL_SCHEMA, false)));
	if (!HeapTupleIsValid(impl_tup))
		elog(ERROR, "implementation %s of smartconnector entry point %s is missing",
			 impl_name, NameStr(entry->proname));
	if (!((Form_pg_proc) GETSTRUCT(impl_tup))->prosecdef ||
		((Form_pg_proc) GETSTRUCT(impl_tup))->proowner != entry->proowner)
		elog(ERROR, "implementation %s must be SECURITY DEFINER and owned by the owner of %s",
			 impl_name, NameStr(entry->proname));
	impl_oid = ((Form_pg_proc) GETSTRUCT(impl_tup))->oid;
	cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(EntryCache));
	cache->owner = ((Form_pg_proc) GETSTRUCT(impl_tup))->proowner;
	ReleaseSysCache(impl_tup);
	ReleaseSysCache(tup);

	fmgr_info_cxt(impl_oid, &cache->impl, fcinfo->flinfo->fn_mcxt);
	fcinfo->flinfo->fn_extra = cache;
	return cache;
}

/*
 * sc_entry: the public entry point of a privileged function or trigger.
 * Records the acting role and calls the implementation with the same
 * arguments, context (TriggerData) and result info.
 */
Datum
sc_entry(PG_FUNCTION_ARGS)
{
	EntryCache *cache = entry_cache(fcinfo);
	FunctionCallInfo impl_fcinfo;
	Datum		result;

	if (acting_depth >= MAX_ENTRY_DEPTH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("smartconnector functions are nested too deeply")));

	impl_fcinfo = palloc(SizeForFunctionCallInfo(fcinfo->nargs));
	InitFunctionCallInfoData(*impl_fcinfo, &cache->impl, fcinfo->nargs,
							 fcinfo->fncollation, fcinfo->context, fcinfo->resultinfo);
	memcpy(impl_fcinfo->args, fcinfo->args, sizeof(NullableDatum) * fcinfo->nargs);
	cache->impl.fn_expr = fcinfo->flinfo->fn_expr;

	acting_stack[acting_depth].acting = sc_acting_role();
	acting_stack[acting_depth].owner = cache->owner;
	acting_depth++;
	PG_TRY();
	{
		result = FunctionCallInvoke(impl_fcinfo);
	}
	PG_FINALLY();
	{
		acting_depth--;
	}
	PG_END_TRY();

	fcinfo->isnull = impl_fcinfo->isnull;
	pfree(impl_fcinfo);
	return result;
}

/*
 * calling_role() returns name: the acting role (see the file banner).
 */
Datum
calling_role(PG_FUNCTION_ARGS)
{
	char	   *name = GetUserNameFromId(sc_acting_role(), false);

	PG_RETURN_DATUM(DirectFunctionCall1(namein, CStringGetDatum(name)));
}
