/*
 * smartconnector--0.2.sql
 *		Full install script of smartconnector 0.2: settings catalog, audit,
 *		access roles, executions, completion dispatch, schedules and chains.
 *
 * make writes it by concatenating sql/install/NN-name.sql in name order.
 * Each section holds one concern and says in its banner what it holds and
 * its rules; an object comes with its indexes, constraints, privileges,
 * comments and triggers.  CREATE EXTENSION runs this script; an
 * installation of 0.1 (the released smartconnector--0.1.sql, never edited)
 * gets to 0.2 by ALTER EXTENSION UPDATE, which runs
 * smartconnector--0.1--0.2.sql.
 * Both roads must give the same catalog (test/t/021_install_paths.pl
 * compares them), so a schema change goes to a section and to the upgrade
 * script of its version.
 *
 * Rules live in the database, not only in helper functions: plain INSERT
 * and UPDATE on smartconnector.connector run the same validation trigger as
 * smartconnector.create_connector().  CHECK constraints back the trigger up
 * for the invariants that must hold even when triggers are disabled.
 *
 * Rules of every section:
 *  - Every table, view and function revokes PUBLIC's privileges right after
 *    it is created, even one that PUBLIC then gets back (as 0.1 revoked
 *    them all at the end of its script): its ACL is then explicit, and
 *    grants follow in the order 0.1 made them, since an ACL lists its
 *    grantees in the order they were granted.
 *  - SQL-language functions and views are checked when they are created,
 *    so they come after what they read; PL/pgSQL bodies are resolved when
 *    they run, and may name objects of later sections.
 *
 * This section: the script guard, the internal schema, the install guard,
 * the roles and the privileges on the schemas.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION smartconnector" to load this file. \quit

/*
 * The public API lives in smartconnector: every object there has a COMMENT.
 * Everything the API is built from (implementations of entry points,
 * triggers, admission and wakeup primitives, the queue) lives in
 * smartconnector_internal, which PUBLIC cannot use; no role but the owner
 * needs to, because the entry points reach it with the owner's rights.
 */
CREATE SCHEMA smartconnector_internal;
COMMENT ON SCHEMA smartconnector_internal IS
	'smartconnector internals: not an API, may change in any release';
REVOKE ALL ON SCHEMA smartconnector_internal FROM PUBLIC;

/* Refuse to install where the workers would never run. */
CREATE FUNCTION smartconnector_internal.assert_installable()
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'assert_installable';
SELECT smartconnector_internal.assert_installable();
REVOKE ALL ON FUNCTION smartconnector_internal.assert_installable() FROM PUBLIC;

/*
 * Roles, created when absent (they are cluster-wide and may be shared by
 * several databases).  admin > operator > viewer by membership.
 */
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'smartconnector_viewer') THEN
		CREATE ROLE smartconnector_viewer NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'smartconnector_operator') THEN
		CREATE ROLE smartconnector_operator NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'smartconnector_admin') THEN
		CREATE ROLE smartconnector_admin NOLOGIN;
	END IF;
	IF NOT pg_catalog.pg_has_role('smartconnector_operator', 'smartconnector_viewer', 'MEMBER') THEN
		GRANT smartconnector_viewer TO smartconnector_operator;
	END IF;
	IF NOT pg_catalog.pg_has_role('smartconnector_admin', 'smartconnector_operator', 'MEMBER') THEN
		GRANT smartconnector_operator TO smartconnector_admin;
	END IF;
END
$roles$;

/*
 * Every role may use the schema, because a handler runs as any role and
 * calls smartconnector.record() and friends; each table and function below
 * carries its own privileges.
 */
GRANT USAGE ON SCHEMA smartconnector TO PUBLIC;
