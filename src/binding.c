/*-------------------------------------------------------------------------
 *
 * binding.c
 *		Which routine a connector's handler is and which role it runs as:
 *		stored by name, bound by OID, checked before every run.
 *
 * A connector stores its handler as the routine's qualified signature
 * ("public.load_orders(jsonb)") and run_as as the role's name: names are
 * what pg_dump writes and pg_upgrade keeps.  Beside them it stores the
 * binding: the OIDs the names resolved to when they were set, and the
 * system identifier of the cluster that resolved them (bound_in).
 *
 * Within a cluster the OIDs are the identity: the handler that runs is the
 * routine with the bound OID, and only while that routine still has the
 * stored name.  A routine renamed (and another created under the old name),
 * or dropped and created again, is therefore never run in its place; the
 * connector is broken until someone sets its handler again, and says why.
 * In another cluster (after pg_upgrade, which gives routines new OIDs, or a
 * restore with triggers disabled) the binding is foreign; the names are
 * then the identity, and the launcher binds them again when it starts.
 *
 * connector_bind() is a SECURITY INVOKER trigger, the first BEFORE trigger
 * on smartconnector.connector: it resolves names in the caller's own
 * search_path, as a regprocedure literal would be, and keeps the binding
 * columns, which nobody writes directly.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(connector_bind);
PG_FUNCTION_INFO_V1(binding_problem);
PG_FUNCTION_INFO_V1(system_identifier);

static Oid	type_namespace(Oid type);
static char *routine_signature(Oid routine);
static Oid	resolve_routine(const char *signature);

/*
 * The cluster's system identifier, as the bigint bound_in stores.
 */
int64
sc_system_identifier(void)
{
	return (int64) GetSystemIdentifier();
}

/*
 * The schema of a type.
 */
static Oid
type_namespace(Oid type)
{
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", type);
	nsp = ((Form_pg_type) GETSTRUCT(tup))->typnamespace;
	ReleaseSysCache(tup);
	return nsp;
}

/*
 * A routine's signature, independent of any search_path: qualified name,
 * and argument types qualified unless they are pg_catalog's.
 */
static char *
routine_signature(Oid routine)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(routine));
	Form_pg_proc proc;
	StringInfoData buf;

	if (!HeapTupleIsValid(tup))
		return NULL;
	proc = (Form_pg_proc) GETSTRUCT(tup);
	initStringInfo(&buf);
	appendStringInfo(&buf, "%s(",
					 quote_qualified_identifier(get_namespace_name(proc->pronamespace),
												NameStr(proc->proname)));
	for (int i = 0; i < proc->pronargs; i++)
	{
		Oid			type = proc->proargtypes.values[i];

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		if (type_namespace(type) == PG_CATALOG_NAMESPACE)
			appendStringInfoString(&buf, format_type_be(type));
		else
			appendStringInfoString(&buf, format_type_be_qualified(type));
	}
	appendStringInfoChar(&buf, ')');
	ReleaseSysCache(tup);
	return buf.data;
}

/*
 * The routine a signature names in the current search_path, or InvalidOid.
 * A malformed signature is an error.
 */
static Oid
resolve_routine(const char *signature)
{
	LOCAL_FCINFO(fcinfo, 1);
	Datum		d;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = CStringGetTextDatum(signature);
	fcinfo->args[0].isnull = false;
	d = to_regprocedure(fcinfo);
	return fcinfo->isnull ? InvalidOid : DatumGetObjectId(d);
}

/*
 * Why a connector cannot run as its run_as role now (NULL if it can), and
 * the role's OID.  bound_here: run_as_oid was resolved in this cluster.
 */
char *
sc_role_problem(const char *run_as, Oid run_as_oid, bool bound_here, Oid *role)
{
	HeapTuple	tup;
	Form_pg_authid form;
	char	   *problem = NULL;

	*role = InvalidOid;
	if (run_as == NULL)
		return pstrdup("The connector has no run_as role.");
	if (!bound_here)
		run_as_oid = get_role_oid(run_as, true);
	if (!OidIsValid(run_as_oid))
		return psprintf("The run_as role \"%s\" does not exist.", run_as);
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(run_as_oid));
	if (!HeapTupleIsValid(tup))
		return pstrdup("The run_as role no longer exists (it was dropped after it was set).");
	form = (Form_pg_authid) GETSTRUCT(tup);
	if (strcmp(NameStr(form->rolname), run_as) != 0)
		problem = psprintf("The run_as role \"%s\" is now named \"%s\"; set run_as again to run as it.",
						   run_as, NameStr(form->rolname));
	else if (!form->rolcanlogin)
		problem = psprintf("The run_as role \"%s\" cannot log in, and executors connect as it (ALTER ROLE %s LOGIN; it needs no password).",
						   run_as, quote_identifier(run_as));
	ReleaseSysCache(tup);
	if (problem == NULL)
		*role = run_as_oid;
	return problem;
}

/*
 * Check a connector's handler and run_as: whether the handler can run now,
 * and which routine and role that is.  The caller pins search_path (it is
 * used only for a foreign binding, whose stored signature is qualified).
 */
void
sc_check_binding(const char *handler, Oid handler_oid, const char *run_as, Oid run_as_oid,
				 bool bound_here, ScBinding *binding)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	char	   *problem;
	char	   *now;

	memset(binding, 0, sizeof(*binding));
	if (handler == NULL)
		return;					/* external runners: nothing to run here */

	problem = sc_role_problem(run_as, run_as_oid, bound_here, &binding->run_as);
	if (problem != NULL)
	{
		binding->problem = problem;
		return;
	}

	if (!bound_here)
		handler_oid = resolve_routine(handler);
	if (!OidIsValid(handler_oid))
	{
		binding->problem = psprintf("The handler %s does not exist.", handler);
		return;
	}
	now = routine_signature(handler_oid);
	if (now == NULL)
	{
		binding->problem = pstrdup("The handler routine no longer exists (it was dropped after it was set).");
		return;
	}
	if (strcmp(now, handler) != 0)
	{
		binding->problem = psprintf("The handler %s is now named %s; set the handler again to run it.",
									handler, now);
		return;
	}

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", handler_oid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prokind != PROKIND_FUNCTION && proc->prokind != PROKIND_PROCEDURE)
		problem = psprintf("%s is not a function or procedure.", handler);
	else if (proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID)
		problem = psprintf("%s must take exactly one argument, of type jsonb.", handler);
	else if (proc->proretset || (proc->prorettype != VOIDOID && proc->prorettype != JSONBOID))
		problem = psprintf("%s must return void or jsonb.", handler);
	else if (pg_proc_aclcheck(handler_oid, binding->run_as, ACL_EXECUTE) != ACLCHECK_OK)
		problem = psprintf("Role \"%s\" may not execute %s.", run_as, handler);
	else if (!has_privs_of_role(proc->proowner, binding->run_as))
		problem = psprintf("The owner of %s, role \"%s\", does not have the privileges of role \"%s\".",
						   handler, GetUserNameFromId(proc->proowner, false), run_as);
	binding->handler = handler_oid;
	binding->is_procedure = (proc->prokind == PROKIND_PROCEDURE);
	binding->rettype = proc->prorettype;
	ReleaseSysCache(tup);
	binding->problem = problem;
}

/*
 * Whether two nullable column values differ.
 */
static bool
value_changed(Datum a, bool a_null, Datum b, bool b_null, Oid type)
{
	if (a_null || b_null)
		return a_null != b_null;
	if (type == NAMEOID)
		return strcmp(NameStr(*DatumGetName(a)), NameStr(*DatumGetName(b))) != 0;
	if (type == TEXTOID)
		return !DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID, a, b));
	return a != b;				/* oid, int8 (by value) */
}

/*
 * connector_bind() returns trigger: BEFORE INSERT OR UPDATE on
 * smartconnector.connector.  When a handler or run_as is set, or a binding
 * column is written (a request to bind again), resolves the names in the
 * caller's search_path, stores the handler's canonical signature and binds
 * both in this cluster.  A name that does not resolve is an error, except
 * when it is not being set (the launcher binding a foreign connector) or a
 * superuser restores a dump (check_function_bodies off): the connector is
 * then kept, broken.  run_as defaults to the acting role.
 */
Datum
connector_bind(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	const char *const cols[5] = {"handler", "run_as", "handler_oid", "run_as_oid", "bound_in"};
	const Oid	types[5] = {TEXTOID, NAMEOID, OIDOID, OIDOID, INT8OID};
	int			attnum[5];
	Datum		val[5];
	bool		isnull[5];
	bool		handler_set;
	bool		run_as_set;
	bool		rebind = false;
	bool		restoring;
	Datum		repl[5];
	bool		repl_null[5];
	int			repl_cols[5];
	Oid			role;
	Oid			routine = InvalidOid;
	char	   *run_as;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trig->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trig->tg_event) || TRIGGER_FIRED_BY_DELETE(trig->tg_event))
		elog(ERROR, "connector_bind must be a BEFORE INSERT OR UPDATE row trigger");
	desc = RelationGetDescr(trig->tg_relation);
	if (TRIGGER_FIRED_BY_UPDATE(trig->tg_event))
	{
		newtup = trig->tg_newtuple;
		oldtup = trig->tg_trigtuple;
	}
	else
		newtup = trig->tg_trigtuple;

	for (int k = 0; k < 5; k++)
	{
		attnum[k] = SPI_fnumber(desc, cols[k]);
		if (attnum[k] <= 0)
			elog(ERROR, "smartconnector.connector has no column %s", cols[k]);
		val[k] = heap_getattr(newtup, attnum[k], desc, &isnull[k]);
		if (oldtup != NULL)
		{
			bool		old_null;
			Datum		old = heap_getattr(oldtup, attnum[k], desc, &old_null);

			if (value_changed(val[k], isnull[k], old, old_null, types[k]))
				rebind = true;
		}
	}
	handler_set = (oldtup == NULL);
	run_as_set = (oldtup == NULL);
	if (oldtup != NULL && rebind)
	{
		bool		n;
		Datum		o;

		o = heap_getattr(oldtup, attnum[0], desc, &n);
		handler_set = value_changed(val[0], isnull[0], o, n, TEXTOID);
		o = heap_getattr(oldtup, attnum[1], desc, &n);
		run_as_set = value_changed(val[1], isnull[1], o, n, NAMEOID);
	}
	if (oldtup != NULL && !rebind)
		return PointerGetDatum(newtup);

	restoring = superuser_arg(sc_acting_role()) && !check_function_bodies;
	memset(repl_null, false, sizeof(repl_null));

	/* run_as: defaults to the acting role; kept as given */
	if (isnull[1] && oldtup == NULL)
		run_as = GetUserNameFromId(sc_acting_role(), false);
	else
		run_as = isnull[1] ? NULL : pstrdup(NameStr(*DatumGetName(val[1])));
	role = run_as ? get_role_oid(run_as, true) : InvalidOid;
	if (run_as != NULL && !OidIsValid(role) && run_as_set && !restoring)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" does not exist", run_as),
				 errhint("run_as names the role the handler runs as.")));
	if (run_as == NULL)
		repl_null[1] = true;
	else
		repl[1] = DirectFunctionCall1(namein, CStringGetDatum(run_as));
	repl_null[3] = !OidIsValid(role);
	repl[3] = ObjectIdGetDatum(role);

	/* handler: resolved where the caller stands, stored canonically */
	if (isnull[0])
		repl_null[0] = true;
	else
	{
		char	   *given = TextDatumGetCString(val[0]);

		routine = resolve_routine(given);
		if (!OidIsValid(routine) && handler_set && !restoring)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("handler %s does not exist", given),
					 errhint("Name a function or procedure with its argument types, as in public.load_orders(jsonb).")));
		repl[0] = CStringGetTextDatum(OidIsValid(routine) ? routine_signature(routine) : given);
	}
	repl_null[2] = !OidIsValid(routine);
	repl[2] = ObjectIdGetDatum(routine);
	repl[4] = Int64GetDatum(sc_system_identifier());

	for (int k = 0; k < 5; k++)
		repl_cols[k] = attnum[k];
	PG_RETURN_POINTER(heap_modify_tuple_by_cols(newtup, desc, 5, repl_cols, repl, repl_null));
}

/*
 * binding_problem(handler text, handler_oid oid, run_as name, run_as_oid
 * oid, bound_in bigint) returns text: why the connector's handler cannot
 * run now, or NULL (also when it has none).
 */
Datum
binding_problem(PG_FUNCTION_ARGS)
{
	ScBinding	b;

	sc_check_binding(PG_ARGISNULL(0) ? NULL : TextDatumGetCString(PG_GETARG_DATUM(0)),
					 PG_ARGISNULL(1) ? InvalidOid : PG_GETARG_OID(1),
					 PG_ARGISNULL(2) ? NULL : NameStr(*PG_GETARG_NAME(2)),
					 PG_ARGISNULL(3) ? InvalidOid : PG_GETARG_OID(3),
					 !PG_ARGISNULL(4) && PG_GETARG_INT64(4) == sc_system_identifier(),
					 &b);
	if (b.problem == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(b.problem));
}

/*
 * system_identifier() returns bigint: the cluster's identity for bound_in.
 */
Datum
system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(sc_system_identifier());
}
