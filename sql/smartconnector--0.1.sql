/*
 * smartconnector--0.1.sql
 *		Settings catalog, audit, access roles and administration functions.
 *
 * Rules live in the database, not only in helper functions: plain INSERT
 * and UPDATE on smartconnector.connector run the same validation trigger as
 * smartconnector.create_connector().  CHECK constraints back the trigger up
 * for the invariants that must hold even when triggers are disabled.
 *
 * Released as 0.1 (tag v0.1.0) and never edited again: test/released.sha256
 * holds its checksum.  Later versions change the schema in upgrade scripts
 * (smartconnector--0.1--0.2.sql, ...), which CREATE EXTENSION runs too.
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

/* ------------------------------------------------------------------------
 * Validators (C).  Each raises a clear error or returns nothing.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION smartconnector.check_email(address text, setting text DEFAULT 'email address')
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_email';
COMMENT ON FUNCTION smartconnector.check_email(text, text) IS
	'Raise an error unless the argument is exactly one valid email address';

CREATE FUNCTION smartconnector.check_webhook_url(url text)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_url';
COMMENT ON FUNCTION smartconnector.check_webhook_url(text) IS
	'Raise an error unless the argument is an absolute http(s) URL with a host and no credentials (parsed by libcurl)';

CREATE FUNCTION smartconnector.check_webhook_secret(secret text)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_secret';
COMMENT ON FUNCTION smartconnector.check_webhook_secret(text) IS
	'Raise an error unless the argument is a Standard Webhooks secret (whsec_ + base64 of 24 to 64 bytes)';

CREATE FUNCTION smartconnector.check_webhook_headers(headers jsonb)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_headers';
COMMENT ON FUNCTION smartconnector.check_webhook_headers(jsonb) IS
	'Raise an error unless the argument is a JSON object of valid, non-reserved header names and string values';

CREATE FUNCTION smartconnector.generate_webhook_secret()
RETURNS text
LANGUAGE C STRICT VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'generate_webhook_secret';
COMMENT ON FUNCTION smartconnector.generate_webhook_secret() IS
	'A new random Standard Webhooks secret (whsec_ + base64 of 32 bytes)';

CREATE FUNCTION smartconnector.calling_role()
RETURNS name
LANGUAGE C STRICT STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'calling_role';

/*
 * The public entry point of a privileged function: a SECURITY INVOKER C
 * function that records its caller as the acting role and calls the
 * SECURITY DEFINER implementation of the same arguments named <name>_impl
 * (src/identity.c).  Entry points are declared next to their
 * implementations below.
 */

CREATE FUNCTION smartconnector.caller_trigger_type()
RETURNS text
LANGUAGE C STRICT STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'caller_trigger_type';
COMMENT ON FUNCTION smartconnector.caller_trigger_type() IS
	'How trigger() was reached: schedule (a pg_cron job), manual (psql) or api';
COMMENT ON FUNCTION smartconnector.calling_role() IS
	'The acting role: the current user of the code that called smartconnector (what audit and privilege checks use)';

/* ------------------------------------------------------------------------
 * Settings catalog
 * ------------------------------------------------------------------------ */

CREATE TYPE smartconnector.connector_status AS ENUM
	('setup', 'operational', 'need_attention', 'inactive');
COMMENT ON TYPE smartconnector.connector_status IS
	'setup: new, not yet executable; operational and need_attention: executable; inactive: holds every run in the queue';

CREATE TABLE smartconnector.connector (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	name text NOT NULL,
	api_name text NOT NULL,
	description text NOT NULL DEFAULT '',
	status smartconnector.connector_status NOT NULL DEFAULT 'setup',
	max_concurrent_executions integer NOT NULL DEFAULT 1,
	notification_email text,
	error_notification_email text,
	execution_ended_webhook_url text,
	webhook_secret text,
	webhook_headers jsonb,
	diff_check boolean NOT NULL DEFAULT false,
	handler text,
	run_as name NOT NULL,
	handler_oid oid,
	run_as_oid oid,
	bound_in bigint,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CONSTRAINT connector_api_name_key UNIQUE (api_name),
	CONSTRAINT connector_name_check
		CHECK (pg_catalog.btrim(name) <> '' AND pg_catalog.length(name) <= 200),
	CONSTRAINT connector_api_name_check
		CHECK (api_name ~ '^[a-z][a-z0-9_]{0,62}$'),
	CONSTRAINT connector_max_concurrent_executions_check
		CHECK (max_concurrent_executions >= 0),
	CONSTRAINT connector_webhook_headers_check
		CHECK (webhook_headers IS NULL OR pg_catalog.jsonb_typeof(webhook_headers) = 'object')
);

COMMENT ON TABLE smartconnector.connector IS
	'ETL connectors and their settings; every rule is enforced by the trigger connector_validate';
COMMENT ON COLUMN smartconnector.connector.name IS
	'Human label: non-empty, at most 200 characters, may change at any time';
COMMENT ON COLUMN smartconnector.connector.api_name IS
	'Stable unique identifier (^[a-z][a-z0-9_]{0,62}$) used by API calls, schedules and webhooks; change it only with smartconnector.change_api_name()';
COMMENT ON COLUMN smartconnector.connector.description IS
	'Free text describing what the connector does; also read by AI tools through smartconnector.describe()';
COMMENT ON COLUMN smartconnector.connector.status IS
	'Only operational and need_attention execute; users set operational or inactive; need_attention is set by the system when an execution fails';
COMMENT ON COLUMN smartconnector.connector.max_concurrent_executions IS
	'0 queues everything (pause), 1 runs one at a time in order, N runs up to N at once; lowering never cancels running work';
COMMENT ON COLUMN smartconnector.connector.notification_email IS
	'One address notified on every completion';
COMMENT ON COLUMN smartconnector.connector.error_notification_email IS
	'One address notified when an execution ends failed or partial_success';
COMMENT ON COLUMN smartconnector.connector.execution_ended_webhook_url IS
	'http(s) URL that receives a JSON POST on every completion; no credentials (use webhook_headers)';
COMMENT ON COLUMN smartconnector.connector.webhook_secret IS
	'Standard Webhooks signing secret (whsec_...); readable by admins only';
COMMENT ON COLUMN smartconnector.connector.webhook_headers IS
	'Extra request headers for the webhook as a JSON object, e.g. an API key; readable by admins only';
COMMENT ON COLUMN smartconnector.connector.diff_check IS
	'Skip records unchanged since the last successful run';
COMMENT ON COLUMN smartconnector.connector.handler IS
	'Routine run inside the database, taking one jsonb context, as its qualified signature; NULL means an external runner claims executions';
COMMENT ON COLUMN smartconnector.connector.run_as IS
	'Role the handler runs as (a role that can log in); whoever sets handler or run_as must be a member of it, and the handler''s owner must have its privileges';
COMMENT ON COLUMN smartconnector.connector.handler_oid IS
	'Maintained by smartconnector: the routine handler named when it was set; the handler runs only while that routine still has that name';
COMMENT ON COLUMN smartconnector.connector.run_as_oid IS
	'Maintained by smartconnector: the role run_as named when it was set';
COMMENT ON COLUMN smartconnector.connector.bound_in IS
	'Maintained by smartconnector: the system identifier of the cluster that bound handler_oid and run_as_oid (another after pg_upgrade; then bound again by name)';

/*
 * Old api_names kept by change_api_name(), so callers and schedules that
 * still use them keep working (with a warning).  Written only by the
 * extension's functions.
 */
CREATE TABLE smartconnector.api_name_alias (
	alias text PRIMARY KEY,
	connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	CONSTRAINT api_name_alias_alias_check
		CHECK (alias ~ '^[a-z][a-z0-9_]{0,62}$')
);
CREATE INDEX api_name_alias_connector_id_idx
	ON smartconnector.api_name_alias (connector_id);
COMMENT ON TABLE smartconnector.api_name_alias IS
	'Former api_names that still resolve to their connector, until smartconnector.drop_api_name_alias()';

/* Every settings change: who, when, which column, old and new (secrets masked). */
CREATE TABLE smartconnector.settings_history (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	connector_id bigint NOT NULL,
	api_name text NOT NULL,
	changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	changed_by name NOT NULL,
	action text NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
	column_name text,
	old_value text,
	new_value text
);
CREATE INDEX settings_history_connector_id_idx
	ON smartconnector.settings_history (connector_id, changed_at);
COMMENT ON TABLE smartconnector.settings_history IS
	'Audit of every settings change; webhook_secret and header values are masked';

/* ------------------------------------------------------------------------
 * Rules
 * ------------------------------------------------------------------------ */

/*
 * Why a connector's handler cannot run now, or NULL (src/binding.c): the
 * bound routine and role must still exist under their configured names,
 * the role must be able to log in and execute the routine, and the
 * routine's owner must have the privileges of the role.  Used when a
 * handler is set, when a connector is activated, by describe() and by the
 * executor before every run.
 */
CREATE FUNCTION smartconnector.binding_problem(handler text, handler_oid oid, run_as name,
											   run_as_oid oid, bound_in bigint)
RETURNS text
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp	-- a binding from another cluster resolves its qualified names
AS 'MODULE_PATHNAME', 'binding_problem';
COMMENT ON FUNCTION smartconnector.binding_problem(text, oid, name, oid, bigint) IS
	'Why a connector''s handler could not run now, or NULL when it can (or when it has none)';

CREATE FUNCTION smartconnector.system_identifier()
RETURNS bigint
LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'system_identifier';
COMMENT ON FUNCTION smartconnector.system_identifier() IS
	'This cluster''s system identifier, the value of bound_in for bindings made here';

/*
 * BEFORE INSERT OR UPDATE, first of the triggers: resolve handler and
 * run_as in the caller's search_path, store the handler's canonical
 * signature and bind both to their OIDs in this cluster (src/binding.c).
 * SECURITY INVOKER: it only reads the catalogs, as the caller.
 */
CREATE FUNCTION smartconnector_internal.connector_bind()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'connector_bind';

CREATE TRIGGER connector_bind
	BEFORE INSERT OR UPDATE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_bind();

/* Hide secrets in audit rows: the secret entirely, header values but not names. */
CREATE FUNCTION smartconnector_internal.masked_value(column_name text, value jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN value IS NULL OR value = 'null'::jsonb THEN value
		WHEN column_name = 'webhook_secret' THEN '"********"'::jsonb
		WHEN column_name = 'webhook_headers' THEN
			(SELECT coalesce(jsonb_object_agg(key, '********'), '{}'::jsonb)
			   FROM jsonb_object_keys(value) AS key)
		ELSE value
	END
$$;

/* A whole row as masked jsonb, for the insert and delete audit rows. */
CREATE FUNCTION smartconnector_internal.masked_row(r jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_object_agg(key, smartconnector_internal.masked_value(key, value))
	  FROM jsonb_each(r)
$$;

/*
 * BEFORE INSERT OR UPDATE: every settings rule, with errors a psql user can
 * act on.  Values are validated when they are set or changed, so that an
 * operator changing status is never blocked by an older value.
 */
CREATE FUNCTION smartconnector_internal.connector_validate_impl()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	caller name := smartconnector.calling_role();
	internal text := pg_catalog.current_setting('smartconnector.internal_change', true);
	is_insert boolean := (TG_OP = 'INSERT');
	/* a superuser restoring a dump, or the launcher binding a connector from another cluster */
	restoring boolean := (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = caller)
		AND (pg_catalog.current_setting('check_function_bodies') = 'off' OR internal = 'rebind');
	rebound boolean := is_insert OR NEW.handler_oid IS DISTINCT FROM OLD.handler_oid
		OR NEW.run_as_oid IS DISTINCT FROM OLD.run_as_oid;
	problem text;
	other text;
BEGIN
	/* required settings get a clear error, not a not-null violation listing the row */
	IF NEW.api_name IS NULL OR NEW.status IS NULL OR NEW.diff_check IS NULL
	   OR NEW.description IS NULL THEN
		RAISE EXCEPTION '% must not be NULL',
			CASE WHEN NEW.api_name IS NULL THEN 'api_name'
				 WHEN NEW.status IS NULL THEN 'status'
				 WHEN NEW.diff_check IS NULL THEN 'diff_check'
				 ELSE 'description' END
			USING ERRCODE = 'not_null_violation';
	END IF;

	/* name */
	IF NEW.name IS NULL OR pg_catalog.btrim(NEW.name) = '' THEN
		RAISE EXCEPTION 'connector name must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The name is the label people see; api_name is the identifier.';
	END IF;
	IF pg_catalog.length(NEW.name) > 200 THEN
		RAISE EXCEPTION 'connector name is too long'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The name has %s characters; at most 200 are allowed.',
								  pg_catalog.length(NEW.name));
	END IF;

	/* api_name: format, uniqueness across names and aliases, stability */
	IF NOT is_insert AND NEW.api_name IS DISTINCT FROM OLD.api_name
	   AND internal IS DISTINCT FROM 'api_name' THEN
		RAISE EXCEPTION 'api_name of connector "%" cannot be changed by UPDATE', OLD.api_name
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'API callers, schedules and webhook receivers identify the connector by its api_name.',
				  HINT = format('To rename it deliberately, use SELECT smartconnector.change_api_name(%L, %L); the old name stays usable as an alias.',
								OLD.api_name, NEW.api_name);
	END IF;
	IF is_insert OR NEW.api_name IS DISTINCT FROM OLD.api_name THEN
		IF NEW.api_name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
			RAISE EXCEPTION 'invalid api_name: "%"', NEW.api_name
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'An api_name starts with a lowercase letter, continues with lowercase letters, digits or underscores, and has at most 63 characters.';
		END IF;
		SELECT c.api_name INTO other
		  FROM smartconnector.api_name_alias a
		  JOIN smartconnector.connector c ON c.id = a.connector_id
		 WHERE a.alias = NEW.api_name AND a.connector_id IS DISTINCT FROM NEW.id;
		IF FOUND THEN
			RAISE EXCEPTION 'api_name "%" is in use as an alias of connector "%"', NEW.api_name, other
				USING ERRCODE = 'unique_violation',
					  HINT = format('Drop the alias first with SELECT smartconnector.drop_api_name_alias(%L).',
									NEW.api_name);
		END IF;
		IF EXISTS (SELECT 1 FROM smartconnector.connector c
				    WHERE c.api_name = NEW.api_name AND c.id IS DISTINCT FROM NEW.id) THEN
			RAISE EXCEPTION 'connector "%" already exists', NEW.api_name
				USING ERRCODE = 'unique_violation';
		END IF;
	END IF;

	/* limit */
	IF NEW.max_concurrent_executions IS NULL OR NEW.max_concurrent_executions < 0 THEN
		RAISE EXCEPTION 'invalid max_concurrent_executions: %', coalesce(NEW.max_concurrent_executions::text, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Use 0 to queue everything, 1 to run one at a time, or N to run up to N at once.';
	END IF;

	/* notification targets and webhook settings, when set or changed */
	IF NEW.notification_email IS NOT NULL AND
	   (is_insert OR NEW.notification_email IS DISTINCT FROM OLD.notification_email) THEN
		PERFORM smartconnector.check_email(NEW.notification_email, 'notification_email');
	END IF;
	IF NEW.error_notification_email IS NOT NULL AND
	   (is_insert OR NEW.error_notification_email IS DISTINCT FROM OLD.error_notification_email) THEN
		PERFORM smartconnector.check_email(NEW.error_notification_email, 'error_notification_email');
	END IF;
	IF NEW.execution_ended_webhook_url IS NOT NULL AND
	   (is_insert OR NEW.execution_ended_webhook_url IS DISTINCT FROM OLD.execution_ended_webhook_url) THEN
		PERFORM smartconnector.check_webhook_url(NEW.execution_ended_webhook_url);
	END IF;
	IF NEW.webhook_secret IS NOT NULL AND
	   (is_insert OR NEW.webhook_secret IS DISTINCT FROM OLD.webhook_secret) THEN
		PERFORM smartconnector.check_webhook_secret(NEW.webhook_secret);
	END IF;
	IF NEW.webhook_headers IS NOT NULL AND
	   (is_insert OR NEW.webhook_headers IS DISTINCT FROM OLD.webhook_headers) THEN
		PERFORM smartconnector.check_webhook_headers(NEW.webhook_headers);
	END IF;

	/*
	 * handler and run_as: no privilege escalation through the handler.
	 * connector_bind has resolved and bound them; a binding that changed
	 * (set, or bound again) is checked as if it were set now.
	 */
	IF NEW.run_as IS NULL THEN
		RAISE EXCEPTION 'run_as must not be NULL'
			USING ERRCODE = 'not_null_violation',
				  HINT = 'Name the role the handler runs as.';
	END IF;
	IF rebound OR NEW.run_as IS DISTINCT FROM OLD.run_as OR NEW.handler IS DISTINCT FROM OLD.handler THEN
		IF NEW.run_as_oid IS NOT NULL AND NOT pg_catalog.pg_has_role(caller, NEW.run_as_oid, 'MEMBER') THEN
			RAISE EXCEPTION 'permission denied to run connector handlers as role "%"', NEW.run_as
				USING ERRCODE = 'insufficient_privilege',
					  DETAIL = format('Only members of role "%s" may set a handler or run_as that runs as it.', NEW.run_as);
		END IF;
		IF NEW.handler IS NOT NULL THEN
			problem := smartconnector.binding_problem(NEW.handler, NEW.handler_oid, NEW.run_as,
													  NEW.run_as_oid, NEW.bound_in);
			IF problem IS NOT NULL AND restoring THEN
				RAISE WARNING 'connector "%" cannot execute', NEW.api_name
					USING DETAIL = problem,
						  HINT = 'It is kept as it is; set its handler or run_as again once the routine and role exist.';
			ELSIF problem IS NOT NULL THEN
				RAISE EXCEPTION 'invalid handler for connector "%"', NEW.api_name
					USING ERRCODE = 'invalid_parameter_value',
						  DETAIL = problem,
						  HINT = 'A handler takes one jsonb argument and returns void or jsonb, and runs as a role that can log in.';
			END IF;
		END IF;
	END IF;

	/* status: setup only initially; need_attention only by the system */
	IF is_insert THEN
		IF NEW.status = 'need_attention' AND internal IS DISTINCT FROM 'status'
		   AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = caller) THEN
			RAISE EXCEPTION 'status "need_attention" is set only by smartconnector'
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  HINT = 'Create the connector as "setup", "operational" or "inactive".';
		END IF;
	ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
		IF NEW.status = 'setup' THEN
			RAISE EXCEPTION 'connector "%" cannot return to status "setup"', NEW.api_name
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'Status "setup" is only the initial state of a new connector.',
					  HINT = 'Set status "inactive" to stop it from executing.';
		END IF;
		IF NEW.status = 'need_attention' AND internal IS DISTINCT FROM 'status' THEN
			RAISE EXCEPTION 'status "need_attention" is set only by smartconnector'
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = 'A connector needs attention after one of its executions fails.',
					  HINT = 'Set status "operational" or "inactive".';
		END IF;
	END IF;
	IF NEW.status = 'operational' AND (is_insert OR OLD.status IS DISTINCT FROM 'operational')
	   AND NOT restoring THEN
		problem := smartconnector.binding_problem(NEW.handler, NEW.handler_oid, NEW.run_as,
												  NEW.run_as_oid, NEW.bound_in);
		IF problem IS NOT NULL THEN
			RAISE EXCEPTION 'connector "%" cannot be made operational', NEW.api_name
				USING ERRCODE = 'object_not_in_prerequisite_state',
					  DETAIL = problem,
					  HINT = 'Fix the handler, or set it to NULL to run the connector with an external runner.';
		END IF;
	END IF;

	IF NOT is_insert THEN
		NEW.created_at := OLD.created_at;
		NEW.updated_at := pg_catalog.now();
		/*
		 * Admissions of this connector wait for a status, limit, handler or
		 * run_as change, and it for them; such a change may let queued
		 * executions start.
		 */
		IF NEW.status IS DISTINCT FROM OLD.status
		   OR NEW.max_concurrent_executions IS DISTINCT FROM OLD.max_concurrent_executions
		   OR NEW.handler IS DISTINCT FROM OLD.handler OR NEW.run_as IS DISTINCT FROM OLD.run_as
		   OR rebound THEN
			PERFORM smartconnector_internal.lock_admissions(NEW.id);
			PERFORM smartconnector_internal.wake_at_commit();
		END IF;
	END IF;
	/* a limit that cannot be reached, or that lets runs overlap: say so when it is set */
	IF NOT restoring AND NEW.max_concurrent_executions > 1
	   AND (is_insert OR NEW.max_concurrent_executions IS DISTINCT FROM OLD.max_concurrent_executions) THEN
		IF NEW.handler IS NOT NULL AND NEW.max_concurrent_executions >
		   pg_catalog.current_setting('smartconnector.max_workers')::integer THEN
			RAISE NOTICE 'connector "%" may run % executions at once, but the executor pool has % slots',
				NEW.api_name, NEW.max_concurrent_executions,
				pg_catalog.current_setting('smartconnector.max_workers')
				USING HINT = 'The pool is shared by all connectors; raise smartconnector.max_workers (restart) to run more at once.';
		END IF;
		RAISE NOTICE 'executions of connector "%" may now run in parallel', NEW.api_name
			USING HINT = 'Runs that write the same records must serialise on them with smartconnector.lock_record(key).';
	END IF;
	RETURN NEW;
END
$$;

CREATE FUNCTION smartconnector_internal.connector_validate()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'sc_entry';

CREATE TRIGGER connector_validate
	BEFORE INSERT OR UPDATE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_validate();

/* AFTER each change: one audit row per changed column. */
CREATE FUNCTION smartconnector_internal.connector_audit_impl()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	who name := smartconnector.calling_role();
	o jsonb;
	n jsonb;
BEGIN
	/*
	 * A superuser restoring a pg_dump (which always runs with
	 * check_function_bodies off) replays rows whose history the dump
	 * carries already; auditing them again would duplicate it.  The acting
	 * role cannot be borrowed, so only a superuser's own code gets here.
	 */
	IF pg_catalog.current_setting('check_function_bodies') = 'off'
	   AND (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = who) THEN
		RETURN NULL;
	END IF;

	/* the bindings are bookkeeping of handler and run_as, not settings */
	IF TG_OP = 'INSERT' THEN
		INSERT INTO smartconnector.settings_history
			(connector_id, api_name, changed_by, action, new_value)
		VALUES (NEW.id, NEW.api_name, who, 'insert',
				smartconnector_internal.masked_row(to_jsonb(NEW) - '{handler_oid,run_as_oid,bound_in}'::text[])::text);
		RETURN NULL;
	ELSIF TG_OP = 'DELETE' THEN
		INSERT INTO smartconnector.settings_history
			(connector_id, api_name, changed_by, action, old_value)
		VALUES (OLD.id, OLD.api_name, who, 'delete',
				smartconnector_internal.masked_row(to_jsonb(OLD) - '{handler_oid,run_as_oid,bound_in}'::text[])::text);
		RETURN NULL;
	END IF;

	o := to_jsonb(OLD);
	n := to_jsonb(NEW);
	INSERT INTO smartconnector.settings_history
		(connector_id, api_name, changed_by, action, column_name, old_value, new_value)
	SELECT NEW.id, NEW.api_name, who, 'update', k.key,
		   smartconnector_internal.masked_value(k.key, o -> k.key) #>> '{}',
		   smartconnector_internal.masked_value(k.key, n -> k.key) #>> '{}'
	  FROM jsonb_object_keys(n) AS k(key)
	 WHERE k.key NOT IN ('updated_at', 'handler_oid', 'run_as_oid', 'bound_in')
	   AND (o -> k.key) IS DISTINCT FROM (n -> k.key)
	 ORDER BY k.key;
	RETURN NULL;
END
$$;

CREATE FUNCTION smartconnector_internal.connector_audit()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'sc_entry';

CREATE TRIGGER connector_audit
	AFTER INSERT OR UPDATE OR DELETE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_audit();

/* ------------------------------------------------------------------------
 * Administration functions
 * ------------------------------------------------------------------------ */

/*
 * The id of the connector called api_name, following aliases (with a
 * warning, so callers learn the new name).  Unknown names are an error.
 */
CREATE FUNCTION smartconnector.connector_id(api_name text)
RETURNS bigint
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result bigint;
	current_name text;
BEGIN
	IF $1 IS NULL THEN
		RAISE EXCEPTION 'api_name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.id INTO result FROM smartconnector.connector c WHERE c.api_name = $1;
	IF FOUND THEN
		RETURN result;
	END IF;
	SELECT c.id, c.api_name INTO result, current_name
	  FROM smartconnector.api_name_alias a
	  JOIN smartconnector.connector c ON c.id = a.connector_id
	 WHERE a.alias = $1;
	IF FOUND THEN
		RAISE WARNING 'connector api_name "%" is an alias of "%"', $1, current_name
			USING HINT = format('Use %L; the alias works until smartconnector.drop_api_name_alias(%L).',
								current_name, $1);
		RETURN result;
	END IF;
	RAISE EXCEPTION 'connector "%" does not exist', $1
		USING ERRCODE = 'undefined_object';
END
$$;
COMMENT ON FUNCTION smartconnector.connector_id(text) IS
	'Id of the connector with this api_name or alias (warns on aliases); error if unknown';

/* Create a connector with named, defaulted settings; returns its id. */
CREATE FUNCTION smartconnector.create_connector(
	name text,
	api_name text,
	description text DEFAULT '',
	status smartconnector.connector_status DEFAULT 'setup',
	max_concurrent_executions integer DEFAULT 1,
	notification_email text DEFAULT NULL,
	error_notification_email text DEFAULT NULL,
	execution_ended_webhook_url text DEFAULT NULL,
	webhook_secret text DEFAULT NULL,
	webhook_headers jsonb DEFAULT NULL,
	diff_check boolean DEFAULT false,
	handler regprocedure DEFAULT NULL,
	run_as regrole DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	INSERT INTO smartconnector.connector
		(name, api_name, description, status, max_concurrent_executions,
		 notification_email, error_notification_email, execution_ended_webhook_url,
		 webhook_secret, webhook_headers, diff_check, handler, run_as)
	VALUES
		($1, $2, coalesce($3, ''), coalesce($4, 'setup'), coalesce($5, 1),
		 $6, $7, $8, $9, $10, coalesce($11, false), $12, $13)
	RETURNING id
$$;
COMMENT ON FUNCTION smartconnector.create_connector(text, text, text, smartconnector.connector_status, integer, text, text, text, text, jsonb, boolean, regprocedure, regrole) IS
	'Create a connector (same rules as INSERT); returns its id';

/* Set status by api_name (or alias), with the caller's privileges. */
CREATE FUNCTION smartconnector.set_status(api_name text, status smartconnector.connector_status)
RETURNS void
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE smartconnector.connector SET status = $2
	 WHERE id = smartconnector.connector_id($1)
$$;
COMMENT ON FUNCTION smartconnector.set_status(text, smartconnector.connector_status) IS
	'Set a connector''s status: operational or inactive (operators and admins)';

/* Set max_concurrent_executions by api_name (or alias). */
CREATE FUNCTION smartconnector.set_max_concurrent_executions(api_name text, max_concurrent_executions integer)
RETURNS void
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE smartconnector.connector SET max_concurrent_executions = $2
	 WHERE id = smartconnector.connector_id($1)
$$;
COMMENT ON FUNCTION smartconnector.set_max_concurrent_executions(text, integer) IS
	'Set how many executions of a connector may run at once; 0 pauses (operators and admins)';

/*
 * Rename a connector's api_name deliberately.  The old name becomes an alias
 * that keeps resolving (with a warning) until drop_api_name_alias().
 * Renaming back to one of the connector's own aliases drops that alias.
 */
CREATE FUNCTION smartconnector_internal.change_api_name_impl(old_api_name text, new_api_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target smartconnector.connector%ROWTYPE;
	alias_owner text;
BEGIN
	SELECT * INTO target FROM smartconnector.connector WHERE api_name = old_api_name FOR UPDATE;
	IF NOT FOUND THEN
		SELECT c.api_name INTO alias_owner
		  FROM smartconnector.api_name_alias a
		  JOIN smartconnector.connector c ON c.id = a.connector_id
		 WHERE a.alias = old_api_name;
		IF FOUND THEN
			RAISE EXCEPTION '"%" is an alias, not the current api_name', old_api_name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = format('The current api_name is %L.', alias_owner);
		END IF;
		RAISE EXCEPTION 'connector "%" does not exist', old_api_name
			USING ERRCODE = 'undefined_object';
	END IF;
	IF new_api_name = old_api_name THEN
		RETURN;
	END IF;

	/* serialise renames that involve the same names */
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('smartconnector.api_name'),
											 pg_catalog.hashtext(new_api_name));

	DELETE FROM smartconnector.api_name_alias
	 WHERE alias = new_api_name AND connector_id = target.id;
	INSERT INTO smartconnector.api_name_alias (alias, connector_id, created_by)
	VALUES (old_api_name, target.id, smartconnector.calling_role());

	PERFORM pg_catalog.set_config('smartconnector.internal_change', 'api_name', true);
	UPDATE smartconnector.connector SET api_name = new_api_name WHERE id = target.id;
	PERFORM pg_catalog.set_config('smartconnector.internal_change', '', true);

	IF EXISTS (SELECT 1 FROM smartconnector.schedules() s WHERE s.connector_id = target.id) THEN
		RAISE WARNING 'connector "%" has a schedule', old_api_name
			USING DETAIL = 'The schedule runs by connector id and keeps working under the new name.';
	END IF;
	IF EXISTS (SELECT 1 FROM smartconnector.execution e WHERE e.connector_id = target.id) THEN
		RAISE WARNING 'connector "%" has executions recorded under its old api_name', old_api_name
			USING DETAIL = 'Completion webhooks and reports name the connector by its new api_name from now on.',
				  HINT = format('Callers and schedules that use %L keep working through the alias; move them to %L, then drop the alias.',
								old_api_name, new_api_name);
	END IF;

	RAISE NOTICE 'connector "%" renamed to "%"', old_api_name, new_api_name
		USING DETAIL = format('%L remains usable as an alias until smartconnector.drop_api_name_alias(%L).',
							  old_api_name, old_api_name);
END
$$;
CREATE FUNCTION smartconnector.change_api_name(old_api_name text, new_api_name text)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.change_api_name(text, text) IS
	'Rename a connector''s api_name deliberately, keeping the old name as an alias (admins)';

/* Stop an old api_name from resolving. */
CREATE FUNCTION smartconnector.drop_api_name_alias(alias text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM smartconnector.api_name_alias a WHERE a.alias = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'api_name alias "%" does not exist', $1
			USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION smartconnector.drop_api_name_alias(text) IS
	'Drop an api_name alias left by change_api_name() (admins)';

/*
 * Settings and description as jsonb, without secrets: for AI tools and
 * scripts.  Readable by viewers.
 */
CREATE FUNCTION smartconnector.describe(api_name text)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT jsonb_build_object(
		'id', c.id,
		'name', c.name,
		'api_name', c.api_name,
		'aliases', coalesce((SELECT jsonb_agg(a.alias ORDER BY a.alias)
							   FROM smartconnector.api_name_alias a
							  WHERE a.connector_id = c.id), '[]'::jsonb),
		'description', c.description,
		'status', c.status,
		'executable', c.status IN ('operational', 'need_attention'),
		'max_concurrent_executions', c.max_concurrent_executions,
		'notification_email', c.notification_email,
		'error_notification_email', c.error_notification_email,
		'execution_ended_webhook_url', c.execution_ended_webhook_url,
		'webhook_signed', c.webhook_secret IS NOT NULL,
		'webhook_header_names', coalesce((SELECT jsonb_agg(k ORDER BY k)
											FROM jsonb_object_keys(c.webhook_headers) AS k), '[]'::jsonb),
		'diff_check', c.diff_check,
		'handler', c.handler,
		'runner', CASE WHEN c.handler IS NULL THEN 'external' ELSE 'database' END,
		'run_as', c.run_as,
		'problem', smartconnector.binding_problem(c.handler, c.handler_oid, c.run_as,
												  c.run_as_oid, c.bound_in),
		'created_at', c.created_at,
		'updated_at', c.updated_at)
	  FROM smartconnector.connector c
	 WHERE c.id = smartconnector.connector_id($1)
$$;
COMMENT ON FUNCTION smartconnector.describe(text) IS
	'Machine-readable settings and description of one connector, without secrets';

/* ------------------------------------------------------------------------
 * Executions: queue, admission, outcome
 * ------------------------------------------------------------------------ */

CREATE TYPE smartconnector.execution_state AS ENUM
	('queued', 'running', 'success', 'partial_success', 'failed', 'cancelled');
COMMENT ON TYPE smartconnector.execution_state IS
	'queued, running, then exactly one end state: success, partial_success (some records failed), failed or cancelled';

CREATE TABLE smartconnector.execution (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	state smartconnector.execution_state NOT NULL DEFAULT 'queued',
	trigger_type text NOT NULL
		CHECK (trigger_type IN ('manual', 'schedule', 'api', 'chain')),
	initiated_by name NOT NULL,
	diff_check boolean NOT NULL,
	dry_run boolean NOT NULL DEFAULT false,
	input jsonb NOT NULL DEFAULT '{}',
	queued_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	started_at timestamptz,
	ended_at timestamptz,
	records_created bigint NOT NULL DEFAULT 0,
	records_updated bigint NOT NULL DEFAULT 0,
	records_skipped bigint NOT NULL DEFAULT 0,
	records_failed bigint NOT NULL DEFAULT 0,
	records_total bigint NOT NULL DEFAULT 0,
	error text,
	metadata jsonb NOT NULL DEFAULT '{}',
	runner_pid integer,
	cancel_requested boolean NOT NULL DEFAULT false,
	committed boolean,
	CONSTRAINT execution_started_check
		CHECK ((state = 'queued') = (started_at IS NULL) OR state = 'cancelled'),
	CONSTRAINT execution_ended_check
		CHECK ((state IN ('queued', 'running')) = (ended_at IS NULL))
);
CREATE INDEX execution_running_idx ON smartconnector.execution (connector_id)
	WHERE state = 'running';
CREATE INDEX execution_connector_idx ON smartconnector.execution (connector_id, id);

COMMENT ON TABLE smartconnector.execution IS
	'Every execution of a connector: queued by trigger(), admitted under max_concurrent_executions, ended exactly once';
COMMENT ON COLUMN smartconnector.execution.initiated_by IS
	'The role that triggered it (login or SET ROLE), even through SECURITY DEFINER code';
COMMENT ON COLUMN smartconnector.execution.diff_check IS
	'Effective diff check of this run: the connector''s setting unless the trigger disabled it';
COMMENT ON COLUMN smartconnector.execution.committed IS
	'Whether the work its record counts describe was committed: true when the handler''s transaction committed; false when nothing of it was kept (the handler failed, was cancelled, or its executor died; a dry run; a run that failed before its handler started); NULL for external runners (they commit their own work) and executions cancelled while queued';
COMMENT ON COLUMN smartconnector.execution.runner_pid IS
	'Process that admitted it: an executor worker or an external runner''s session';

/*
 * The queue: one row per queued execution, deleted when it is admitted or
 * cancelled.  Its primary key finds the oldest queued execution of a
 * connector with one index probe however long the backlog is; a partial
 * index on execution served the same purpose but let the planner pick the
 * primary key or a semi-join over the whole backlog once the table's
 * statistics were taken with a long queue.
 */
CREATE TABLE smartconnector_internal.queue (
	connector_id bigint NOT NULL,
	execution_id bigint NOT NULL
		REFERENCES smartconnector.execution (id) ON DELETE CASCADE,
	PRIMARY KEY (connector_id, execution_id)
);
COMMENT ON TABLE smartconnector_internal.queue IS
	'Queued executions per connector, oldest first (admission reads the head)';

/* The output report: one row per record() call, in order. */
CREATE TABLE smartconnector.execution_record (
	execution_id bigint NOT NULL
		REFERENCES smartconnector.execution (id) ON DELETE CASCADE,
	seq integer NOT NULL,
	record_key text NOT NULL,
	action text NOT NULL CHECK (action IN ('created', 'updated', 'skipped', 'failed')),
	detail text,
	PRIMARY KEY (execution_id, seq)
);
COMMENT ON TABLE smartconnector.execution_record IS
	'Output report rows of each execution (see smartconnector.output_report())';

/* Diff check: hash of each record's data at the last successful run. */
CREATE TABLE smartconnector.record_hash (
	connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	record_key text NOT NULL,
	hash bytea NOT NULL,
	execution_id bigint NOT NULL,
	PRIMARY KEY (connector_id, record_key)
);
COMMENT ON TABLE smartconnector.record_hash IS
	'Per record, the hash of its data at the last successful run (diff check)';

/* ---- internals (C) ---- */

CREATE FUNCTION smartconnector_internal.lock_admissions(connector_id bigint)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lock_admissions';

CREATE FUNCTION smartconnector.runner_alive(execution_id bigint)
RETURNS boolean LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'runner_alive';
COMMENT ON FUNCTION smartconnector.runner_alive(bigint) IS
	'Whether a live backend runs an execution (its progress slot in shared memory names it)';

CREATE FUNCTION smartconnector_internal.wake_at_commit()
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'wake_at_commit';

CREATE FUNCTION smartconnector_internal.signal_runner_at_commit(execution_id bigint)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'signal_runner_at_commit';

CREATE FUNCTION smartconnector_internal.signal_committing_runner(execution_id bigint)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'signal_committing_runner';

CREATE FUNCTION smartconnector.current_execution()
RETURNS bigint LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'current_execution';
COMMENT ON FUNCTION smartconnector.current_execution() IS
	'The execution this session runs (a handler, or an external runner after claim()), or NULL';

CREATE FUNCTION smartconnector_internal.forget_current()
RETURNS void LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'forget_current';

/* A session's execution cancelled and then deleted by cleanup(): forget it, saying so. */
CREATE FUNCTION smartconnector_internal.forget_deleted_current()
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mine bigint := smartconnector.current_execution();
BEGIN
	IF mine IS NULL OR EXISTS (SELECT 1 FROM smartconnector.execution e WHERE e.id = mine) THEN
		RETURN false;
	END IF;
	PERFORM smartconnector_internal.forget_current();
	RAISE WARNING 'execution % no longer exists', mine
		USING DETAIL = 'It was cancelled, and its history was deleted (smartconnector.history_retention or cleanup()) before this session finished it; its report is lost.';
	RETURN true;
END
$$;

CREATE FUNCTION smartconnector_internal.current_execution_info(
	OUT execution_id bigint, OUT connector_id bigint, OUT diff_check boolean, OUT dry_run boolean)
RETURNS record LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'current_execution_info';

CREATE FUNCTION smartconnector_internal.remember_hash(record_key text, hash bytea)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'remember_hash';

CREATE FUNCTION smartconnector_internal.begin_execution(execution_id bigint, connector_id bigint,
											   diff_check boolean, dry_run boolean)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'begin_execution';

CREATE FUNCTION smartconnector_internal.complete_current(error text, metadata jsonb)
RETURNS text LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'complete_current';

CREATE FUNCTION smartconnector.progress(
	OUT execution_id bigint, OUT pid integer,
	OUT records_created bigint, OUT records_updated bigint,
	OUT records_skipped bigint, OUT records_failed bigint, OUT records_total bigint)
RETURNS SETOF record LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'progress';
COMMENT ON FUNCTION smartconnector.progress() IS
	'Live record counts of every execution running now, from shared memory';

/* ---- handler API (C), callable by any role a handler runs as ---- */

CREATE FUNCTION smartconnector.record(record_key text, action text, detail text DEFAULT NULL)
RETURNS void LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'record';
COMMENT ON FUNCTION smartconnector.record(text, text, text) IS
	'Count a record of the running execution (created, updated, skipped or failed) and add it to the output report';

CREATE FUNCTION smartconnector.lock_record(record_key text)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lock_record';
COMMENT ON FUNCTION smartconnector.lock_record(text) IS
	'Wait until no other execution of this connector holds the record, and hold it until this transaction ends';

/*
 * unchanged(record_key, data): true when diff check is on for this run and
 * data hashes the same as at the last successful run; the record then
 * counts as skipped.  Otherwise the new hash is kept, to be stored if this
 * run succeeds.
 */
CREATE FUNCTION smartconnector.unchanged(record_key text, data jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	run record;
	new_hash bytea;
	old_hash bytea;
BEGIN
	SELECT * INTO run FROM smartconnector_internal.current_execution_info();
	new_hash := sha256(convert_to(data::text, 'UTF8'));
	IF run.diff_check THEN
		SELECT h.hash INTO old_hash FROM smartconnector.record_hash h
		 WHERE h.connector_id = run.connector_id AND h.record_key = $1;
		IF old_hash = new_hash THEN
			PERFORM smartconnector.record($1, 'skipped', 'unchanged since the last successful run');
			RETURN true;
		END IF;
	END IF;
	PERFORM smartconnector_internal.remember_hash($1, new_hash);
	RETURN false;
END
$$;
COMMENT ON FUNCTION smartconnector.unchanged(text, jsonb) IS
	'True (and counted as skipped) when diff check is on and the record''s data is as at the last successful run';

/* ---- queue and admission ---- */

/* Queue an execution; the launcher is woken when this commits. */
CREATE FUNCTION smartconnector_internal.enqueue(connector_id bigint, input jsonb, disable_diff_check boolean,
									   dry_run boolean, trigger_type text, initiated_by name)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_id bigint;
BEGIN
	input := coalesce(input, '{}'::jsonb);
	/* the real size: pg_column_size() is the compressed one, and 40 MB of repeats compress well */
	IF pg_catalog.octet_length(input::text) > 1048576 THEN
		RAISE EXCEPTION 'execution input is too large'
			USING ERRCODE = 'program_limit_exceeded',
				  DETAIL = format('The input takes %s bytes as text; at most 1 MB is allowed.',
								  pg_catalog.octet_length(input::text)),
				  HINT = 'Pass a reference to the data instead of the data itself.';
	END IF;
	INSERT INTO smartconnector.execution
		(connector_id, trigger_type, initiated_by, diff_check, dry_run, input)
	SELECT c.id, enqueue.trigger_type, enqueue.initiated_by,
		   c.diff_check AND NOT coalesce(disable_diff_check, false),
		   coalesce(enqueue.dry_run, false), input
	  FROM smartconnector.connector c
	 WHERE c.id = enqueue.connector_id
	RETURNING id INTO new_id;
	IF new_id IS NULL THEN
		RAISE EXCEPTION 'connector with id % does not exist', connector_id
			USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO smartconnector_internal.queue (connector_id, execution_id)
	VALUES (enqueue.connector_id, new_id);
	PERFORM smartconnector_internal.wake_at_commit();
	RETURN new_id;
END
$$;

/*
 * Queue an execution of a connector by api_name (or alias) and return its
 * id at once.  A connector that may not execute still queues; nothing is
 * admitted until its status is executable again.
 */
/*
 * Queue an execution for the caller, and say with a NOTICE when it cannot
 * start now, and why: the connector's status, a limit of 0, the limit
 * reached, or every executor busy.
 */
CREATE FUNCTION smartconnector_internal.trigger_impl(api_name text, input jsonb,
									   disable_diff_check boolean,
									   dry_run boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cid bigint := smartconnector.connector_id(trigger_impl.api_name);
	new_id bigint;
	c record;
	running integer;
	busy integer;
BEGIN
	new_id := smartconnector_internal.enqueue(cid, trigger_impl.input, trigger_impl.disable_diff_check,
									 trigger_impl.dry_run, smartconnector.caller_trigger_type(),
									 smartconnector.calling_role());
	SELECT x.api_name, x.status, x.max_concurrent_executions AS max, x.handler INTO c
	  FROM smartconnector.connector x WHERE x.id = cid;
	IF c.status NOT IN ('operational', 'need_attention') THEN
		RAISE NOTICE 'execution % waits: connector "%" is %', new_id, c.api_name, c.status
			USING HINT = 'Only operational and need_attention connectors execute; it runs once the status is set to operational.';
		RETURN new_id;
	END IF;
	IF c.max = 0 THEN
		RAISE NOTICE 'execution % waits: connector "%" is paused (max_concurrent_executions is 0)', new_id, c.api_name
			USING HINT = format('smartconnector.set_max_concurrent_executions(%L, 1) lets it run.', c.api_name);
		RETURN new_id;
	END IF;
	SELECT count(*) INTO running FROM smartconnector.execution e
	 WHERE e.connector_id = cid AND e.state = 'running';
	IF running >= c.max THEN
		RAISE NOTICE 'execution % waits: connector "%" already runs % of at most % executions', new_id,
			c.api_name, running, c.max;
		RETURN new_id;
	END IF;
	IF c.handler IS NOT NULL THEN
		SELECT count(*) INTO busy FROM smartconnector.executor_slots() s WHERE s.state = 'busy';
		IF busy >= pg_catalog.current_setting('smartconnector.max_workers')::integer THEN
			RAISE NOTICE 'execution % waits for an executor: all % are busy', new_id, busy
				USING HINT = 'The pool (smartconnector.max_workers) is shared by all connectors; the next free executor takes it.';
		END IF;
	END IF;
	RETURN new_id;
END
$$;
CREATE FUNCTION smartconnector.trigger(api_name text, input jsonb DEFAULT '{}',
									   disable_diff_check boolean DEFAULT false,
									   dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.trigger(text, jsonb, boolean, boolean) IS
	'Queue an execution and return its id at once (trigger_type: schedule from a pg_cron job, manual from psql, api otherwise)';

/*
 * Admit the oldest queued execution of one connector if its status and
 * limit allow: mark it running and make this session its runner; NULL if
 * nothing may start.  The connector's admission lock serialises its admissions
 * (and status and limit changes), so the count of running executions cannot
 * go stale before the admission commits (src/lifecycle.c).
 */
CREATE FUNCTION smartconnector_internal.admit(connector_id bigint)
RETURNS bigint
LANGUAGE C VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'admit';

/*
 * Everything that follows the end of an execution, in the transaction that
 * ends it (the outbox): queue its webhook and emails and wake the
 * dispatcher, and trigger chained connectors.  The launcher is not woken: an
 * executor that ends an execution admits the next one itself, and an
 * external runner's freed slot is for the next claim().  One statement
 * builds the event once (event() is inlined) and queues every delivery: the
 * webhook, and one email per address for the first reason that applies
 * (src/lifecycle.c).
 */
CREATE FUNCTION smartconnector_internal.execution_ended(execution_id bigint)
RETURNS void
LANGUAGE C VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'execution_ended';

/*
 * End a running execution exactly once.  Returns the end state, or NULL if
 * it was not running (someone else ended it first).  committed: see the
 * column execution.committed.
 */
CREATE FUNCTION smartconnector_internal.complete_execution(
	execution_id bigint, created bigint, updated bigint, skipped bigint, failed bigint,
	error text, metadata jsonb, handler_result jsonb, committed boolean DEFAULT NULL)
RETURNS smartconnector.execution_state
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'complete_execution';

/*
 * One launcher pass: fail running executions whose runner is gone (no live
 * backend's progress slot names them), with the reason the launcher gives
 * for those whose executor it terminated ({"id": {"error": reason,
 * "cancelled": bool}}: one terminated because its handler ignored cancel()
 * ends cancelled, even when that cancel() has not committed yet), and count
 * the running ones.  One that cannot be ended now because a user's open
 * transaction holds a lock it needs (the launcher's lock_timeout) is left
 * for the next pass.
 */
CREATE FUNCTION smartconnector_internal.launcher_pass(reasons jsonb, OUT running integer)
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	counts record;
BEGIN
	FOR r IN SELECT e.id, c.handler IS NOT NULL AS in_database
			   FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id
			  WHERE e.state = 'running' ORDER BY e.id
	LOOP
		IF NOT smartconnector.runner_alive(r.id) THEN
			/*
			 * A row someone holds is left for the next pass: the dying
			 * runner's own transaction, or a cancel() waiting for it, which
			 * then ends it as cancelled.
			 */
			PERFORM 1 FROM smartconnector.execution x
			 WHERE x.id = r.id AND x.state = 'running' FOR UPDATE SKIP LOCKED;
			CONTINUE WHEN NOT FOUND;
			/* counts the dead runner published, if its progress slot still has them */
			SELECT p.records_created, p.records_updated, p.records_skipped, p.records_failed
			  INTO counts FROM smartconnector.progress() p WHERE p.execution_id = r.id;
			BEGIN
				IF (reasons -> r.id::text ->> 'cancelled')::boolean THEN
					UPDATE smartconnector.execution x SET cancel_requested = true WHERE x.id = r.id;
				END IF;
				PERFORM smartconnector_internal.complete_execution(r.id,
					coalesce(counts.records_created, 0), coalesce(counts.records_updated, 0),
					coalesce(counts.records_skipped, 0), coalesce(counts.records_failed, 0),
					coalesce(reasons -> r.id::text ->> 'error',
							 'runner ended before the execution finished (its session or worker exited)'),
					jsonb_strip_nulls(jsonb_build_object('stopped', reasons -> r.id::text ->> 'error')),
					NULL,
					/* an executor that died took its transaction with it */
					CASE WHEN r.in_database THEN false END);
			EXCEPTION WHEN lock_not_available THEN
				NULL;
			END;
		END IF;
	END LOOP;
	SELECT count(*) INTO running FROM smartconnector.execution WHERE state = 'running';
END
$$;

/* ---- external runners ---- */

/*
 * Admit and return the next execution of a connector without a handler,
 * or NULL; this session then runs it until finish().
 */
CREATE FUNCTION smartconnector.claim(api_name text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cid bigint;
	c record;
	admitted bigint;
	mine bigint := smartconnector.current_execution();
BEGIN
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'smartconnector.claim() must run at isolation level READ COMMITTED'
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'Admission counts running executions as of now, which an older snapshot cannot see.';
	END IF;
	cid := smartconnector.connector_id(api_name);
	SELECT x.handler, x.api_name INTO c FROM smartconnector.connector x WHERE x.id = cid;
	IF c.handler IS NOT NULL THEN
		RAISE EXCEPTION 'connector "%" is run by its handler', c.api_name
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'claim() is for connectors without a handler, run by an external program.';
	END IF;
	IF mine IS NOT NULL AND smartconnector_internal.forget_deleted_current() THEN
		mine := NULL;
	END IF;
	IF mine IS NOT NULL THEN
		RAISE EXCEPTION 'this session already runs execution %', mine
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = format('Call smartconnector.finish(%s) first.', mine);
	END IF;
	admitted := smartconnector_internal.admit(cid);
	IF admitted IS NOT NULL THEN
		PERFORM smartconnector_internal.begin_execution(admitted, cid, e.diff_check, e.dry_run)
		   FROM smartconnector.execution e WHERE e.id = admitted;
		/* the launcher watches running executions for dead runners */
		PERFORM smartconnector_internal.wake_at_commit();
	END IF;
	RETURN admitted;
END
$$;
COMMENT ON FUNCTION smartconnector.claim(text) IS
	'External runners: admit the next execution of a connector without a handler (or return NULL); this session runs it until finish()';

/* End the execution this session claimed. */
CREATE FUNCTION smartconnector.finish(execution_id bigint, error text DEFAULT NULL,
									  metadata jsonb DEFAULT NULL)
RETURNS smartconnector.execution_state
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	mine bigint := smartconnector.current_execution();
	st smartconnector.execution_state;
	final text;
BEGIN
	IF execution_id IS NULL THEN
		RAISE EXCEPTION 'execution_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF mine IS DISTINCT FROM execution_id THEN
		SELECT e.state INTO st FROM smartconnector.execution e WHERE e.id = finish.execution_id;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'execution % does not exist', execution_id
				USING ERRCODE = 'undefined_object';
		END IF;
		RAISE EXCEPTION 'execution % is not run by this session', execution_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Its state is %s.', st),
				  HINT = 'Only the session that claimed an execution can finish it.';
	END IF;
	IF smartconnector_internal.forget_deleted_current() THEN
		RETURN NULL;
	END IF;
	final := smartconnector_internal.complete_current(error, metadata);
	IF final IS NULL THEN
		SELECT e.state INTO st FROM smartconnector.execution e WHERE e.id = finish.execution_id;
		RAISE WARNING 'execution % had already ended: %', execution_id, st;
		RETURN st;
	END IF;
	RETURN final::smartconnector.execution_state;
END
$$;
COMMENT ON FUNCTION smartconnector.finish(bigint, text, jsonb) IS
	'External runners: end the claimed execution (failed when error is given, partial_success when records failed)';

/*
 * Cancel an execution: a queued one ends cancelled at once; a running one
 * is interrupted and ends cancelled (what its runner committed stays).
 * Returns false when it had already ended.
 */
CREATE FUNCTION smartconnector_internal.cancel_impl(execution_id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	e record;
	cid bigint;
	who jsonb := jsonb_build_object('cancelled_by', smartconnector.calling_role());
BEGIN
	SELECT x.connector_id INTO cid FROM smartconnector.execution x WHERE x.id = cancel_impl.execution_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'execution % does not exist', execution_id
			USING ERRCODE = 'undefined_object';
	END IF;

	/*
	 * Queued: take it out of the queue.  Like admission, lock the queue row
	 * before the execution row, so the two never deadlock; if admission got
	 * there first, the execution is running by the time we look again.
	 */
	DELETE FROM smartconnector_internal.queue q
	 WHERE q.connector_id = cid AND q.execution_id = cancel_impl.execution_id;
	IF FOUND THEN
		UPDATE smartconnector.execution x
		   SET state = 'cancelled', ended_at = pg_catalog.clock_timestamp(),
			   cancel_requested = true, metadata = x.metadata || who
		 WHERE x.id = cancel_impl.execution_id;
		PERFORM smartconnector_internal.execution_ended(execution_id);
		RETURN true;
	END IF;

	/* an executor committing the handler's work holds the row: interrupt it first */
	PERFORM smartconnector_internal.signal_committing_runner(execution_id);
	SELECT x.state, c.handler IS NULL AS external, p.records_created, p.records_updated,
		   p.records_skipped, p.records_failed
	  INTO e
	  FROM smartconnector.execution x
	  JOIN smartconnector.connector c ON c.id = x.connector_id
	  LEFT JOIN smartconnector.progress() p ON p.execution_id = x.id
	 WHERE x.id = cancel_impl.execution_id
	   FOR UPDATE OF x;
	IF e.state = 'running' THEN
		UPDATE smartconnector.execution x
		   SET cancel_requested = true, metadata = x.metadata || who
		 WHERE x.id = cancel_impl.execution_id;
		IF e.external THEN
			/* an external program cannot be made to stop: the slot is freed now */
			PERFORM smartconnector_internal.complete_execution(execution_id,
				coalesce(e.records_created, 0), coalesce(e.records_updated, 0),
				coalesce(e.records_skipped, 0), coalesce(e.records_failed, 0),
				NULL, NULL, NULL);
		END IF;
		PERFORM smartconnector_internal.signal_runner_at_commit(execution_id);
		RETURN true;
	END IF;
	RAISE NOTICE 'execution % has already ended: %', execution_id, e.state;
	RETURN false;
END
$$;
CREATE FUNCTION smartconnector.cancel(execution_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.cancel(bigint) IS
	'Cancel a queued or running execution; returns false if it had already ended';

/* ---- reading results ---- */

/*
 * Every function that takes an execution id raises 42704 for one that does
 * not exist (never existed, or deleted with the history), as cancel(),
 * finish() and redeliver() do, rather than answer "nothing".
 */
CREATE FUNCTION smartconnector_internal.require_execution(execution_id bigint)
RETURNS void
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM smartconnector.execution e WHERE e.id = require_execution.execution_id) THEN
		RAISE EXCEPTION 'execution % does not exist', execution_id
			USING ERRCODE = 'undefined_object',
				  HINT = 'Ended executions are deleted after smartconnector.history_retention.';
	END IF;
END
$$;

CREATE FUNCTION smartconnector.output_report(execution_id bigint)
RETURNS TABLE (record_key text, action text, detail text)
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector_internal.require_execution(output_report.execution_id);
	RETURN QUERY
		SELECT r.record_key, r.action, r.detail
		  FROM smartconnector.execution_record r
		 WHERE r.execution_id = output_report.execution_id
		 ORDER BY r.seq;
END
$$;
COMMENT ON FUNCTION smartconnector.output_report(bigint) IS
	'The output report of an execution: one row per recorded record, in order';

CREATE FUNCTION smartconnector.output_report_url(execution_id bigint)
RETURNS text
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector_internal.require_execution(output_report_url.execution_id);
	RETURN (SELECT NULLIF(replace(replace(pg_catalog.current_setting('smartconnector.report_url_template'),
										  '{execution_id}', e.id::text),
								  '{api_name}', c.api_name), '')
			  FROM smartconnector.execution e
			  JOIN smartconnector.connector c ON c.id = e.connector_id
			 WHERE e.id = output_report_url.execution_id);
END
$$;
COMMENT ON FUNCTION smartconnector.output_report_url(bigint) IS
	'Download URL of an execution''s output report, from smartconnector.report_url_template (NULL when unset)';

/* The executor pool: one executor per slot, each serving one role. */
CREATE FUNCTION smartconnector.executor_slots(OUT slot integer, OUT pid integer, OUT role name,
										 OUT state text)
RETURNS SETOF record LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'executor_slots';
COMMENT ON FUNCTION smartconnector.executor_slots() IS
	'The executor workers: slot, pid, the role each connects as, and state (starting, idle, busy, retiring)';
CREATE VIEW smartconnector.executors AS SELECT * FROM smartconnector.executor_slots();
COMMENT ON VIEW smartconnector.executors IS
	'The executor pool (smartconnector.max_workers slots, shared by the run_as roles): slot, pid, role, state';

CREATE VIEW smartconnector.execution_progress AS
	SELECT p.execution_id, c.api_name, e.started_at,
		   pg_catalog.clock_timestamp() - e.started_at AS running_for,
		   p.records_created, p.records_updated, p.records_skipped, p.records_failed,
		   p.records_total, p.pid
	  FROM smartconnector.progress() p
	  JOIN smartconnector.execution e ON e.id = p.execution_id
	  JOIN smartconnector.connector c ON c.id = e.connector_id
	 WHERE e.state = 'running';
COMMENT ON VIEW smartconnector.execution_progress IS
	'Running executions with their live record counts';

/* A connector with work in flight cannot be deleted. */
CREATE FUNCTION smartconnector_internal.connector_before_delete()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM smartconnector.execution e
				WHERE e.connector_id = OLD.id AND e.state IN ('queued', 'running')) THEN
		RAISE EXCEPTION 'connector "%" has queued or running executions', OLD.api_name
			USING ERRCODE = 'object_in_use',
				  HINT = 'Cancel them with smartconnector.cancel(), or pause with max_concurrent_executions = 0 and let them drain.';
	END IF;
	RETURN OLD;
END
$$;
CREATE TRIGGER connector_before_delete
	BEFORE DELETE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_before_delete();

/* ------------------------------------------------------------------------
 * Completion dispatch: outbox of webhooks and emails
 * ------------------------------------------------------------------------ */

/* Email addresses of roles, for notifying whoever initiated an execution. */
CREATE TABLE smartconnector.user_email (
	role_name name PRIMARY KEY,
	email text NOT NULL
);
COMMENT ON TABLE smartconnector.user_email IS
	'Email address of a role; the initiator of an execution is notified of its completion';

CREATE FUNCTION smartconnector_internal.user_email_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector.check_email(NEW.email, 'email');
	RETURN NEW;
END
$$;
CREATE TRIGGER user_email_validate
	BEFORE INSERT OR UPDATE ON smartconnector.user_email
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.user_email_validate();

CREATE FUNCTION smartconnector.url_host(url text)
RETURNS text LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'url_host';
COMMENT ON FUNCTION smartconnector.url_host(text) IS
	'Host and port of a URL as libcurl parses it (the key for per-host connection limits)';

CREATE FUNCTION smartconnector_internal.wake_dispatcher_at_commit()
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'wake_dispatcher_at_commit';

/*
 * The completion event of an execution: exactly the JSON body the webhook
 * receives.  Metadata larger than 256 kB is replaced by a note, so a
 * handler cannot make every delivery of its connector huge.
 *
 * event() builds it from the execution's and the connector's rows.  It is a
 * single expression, neither SECURITY DEFINER nor with settings of its own,
 * so the planner inlines it into the statement that ends an execution and
 * queues its deliveries; it is only ever called from functions that pin
 * search_path, and only the owner may call it.
 */
CREATE FUNCTION smartconnector_internal.event(e smartconnector.execution, c smartconnector.connector)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
	SELECT pg_catalog.jsonb_build_object(
		'type', 'execution.ended',
		'execution_id', e.id,
		'status', e.state,
		'connector', pg_catalog.jsonb_build_object('id', c.id, 'name', c.name, 'api_name', c.api_name),
		'queued_at', e.queued_at,
		'started_at', e.started_at,
		'ended_at', e.ended_at,
		'duration_ms', pg_catalog.round(extract(epoch FROM e.ended_at - e.started_at) * 1000)::bigint,
		'initiated_by', e.initiated_by,
		'trigger_type', e.trigger_type,
		'diff_check', e.diff_check,
		'dry_run', e.dry_run,
		'record_counts', pg_catalog.jsonb_build_object(
			'created', e.records_created, 'updated', e.records_updated,
			'skipped', e.records_skipped, 'failed', e.records_failed,
			'total', e.records_total, 'committed', e.committed),
		'output_report_url', NULLIF(pg_catalog.replace(pg_catalog.replace(
			pg_catalog.current_setting('smartconnector.report_url_template'),
			'{execution_id}', e.id::text), '{api_name}', c.api_name), ''),
		'error', e.error,
		'metadata', CASE WHEN pg_catalog.octet_length(e.metadata::text) > 262144
						 THEN pg_catalog.jsonb_build_object('truncated', true,
							 'size_bytes', pg_catalog.octet_length(e.metadata::text))
						 ELSE e.metadata END)
$$;

/*
 * An ended execution's event is what its deliveries carry, frozen when it
 * ended: a later rename or report_url_template does not rewrite what was
 * sent.  Without deliveries (nothing was sent) and before the end it is
 * built from the current rows.
 */
CREATE FUNCTION smartconnector.execution_metadata(execution_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector_internal.require_execution(execution_metadata.execution_id);
	RETURN (SELECT coalesce((SELECT d.payload FROM smartconnector.delivery d
							  WHERE d.execution_id = e.id ORDER BY d.id LIMIT 1),
							smartconnector_internal.event(e, c))
			  FROM smartconnector.execution e
			  JOIN smartconnector.connector c ON c.id = e.connector_id
			 WHERE e.id = execution_metadata.execution_id);
END
$$;
COMMENT ON FUNCTION smartconnector.execution_metadata(bigint) IS
	'The completion event of an execution: exactly the body posted to its webhook (as sent, once it was sent)';

/*
 * The outbox.  A completion and its deliveries commit together; the
 * dispatcher sends what is pending and records every attempt here.
 */
CREATE TABLE smartconnector.delivery (
	id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	execution_id bigint NOT NULL
		REFERENCES smartconnector.execution (id) ON DELETE CASCADE,
	connector_id bigint NOT NULL,
	channel text NOT NULL CHECK (channel IN ('webhook', 'email')),
	target text NOT NULL,
	target_host text NOT NULL,
	reason text NOT NULL,
	webhook_id text NOT NULL,
	payload jsonb NOT NULL,
	/* the connector's webhook credentials when this was queued: they go with the URL */
	webhook_secret text,
	webhook_headers jsonb,
	state text NOT NULL DEFAULT 'pending'
		CHECK (state IN ('pending', 'delivered', 'failed')),
	attempts integer NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	last_attempt_at timestamptz,
	delivered_at timestamptz,
	last_status integer,
	last_error text,
	last_response text,
	latency_ms double precision
);
/* the dispatcher walks this in (next_attempt_at, id) order with a cursor */
CREATE INDEX delivery_pending_idx ON smartconnector.delivery (next_attempt_at, id)
	WHERE state = 'pending';
CREATE INDEX delivery_execution_idx ON smartconnector.delivery (execution_id);
/* the overview's failed deliveries per connector */
CREATE INDEX delivery_failed_idx ON smartconnector.delivery (connector_id, last_attempt_at)
	WHERE state = 'failed';
COMMENT ON TABLE smartconnector.delivery IS
	'Completion webhooks and emails: queued with the completion, sent and retried by the dispatcher';
COMMENT ON COLUMN smartconnector.delivery.webhook_id IS
	'Standard Webhooks message id (webhook-id header; email Message-ID), the same on every attempt';
COMMENT ON COLUMN smartconnector.delivery.reason IS
	'webhook, or why this address gets the email: notification, error_notification, initiator';
COMMENT ON COLUMN smartconnector.delivery.last_status IS
	'HTTP status or SMTP reply code of the last attempt';
COMMENT ON COLUMN smartconnector.delivery.webhook_secret IS
	'The connector''s webhook_secret when the delivery was queued; every attempt is signed with it';
COMMENT ON COLUMN smartconnector.delivery.webhook_headers IS
	'The connector''s webhook_headers when the delivery was queued; every attempt sends them';
COMMENT ON COLUMN smartconnector.delivery.last_response IS
	'First 4 kB of the last response body (admins only: receivers may echo credentials)';
COMMENT ON COLUMN smartconnector.delivery.latency_ms IS
	'From the commit of the completion (queueing) to the successful delivery';

/* Subject and plain-text body of the completion email, from the event. */
CREATE FUNCTION smartconnector_internal.email_text(payload jsonb, OUT subject text, OUT body text)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('[smartconnector] %s: execution %s %s',
				  payload -> 'connector' ->> 'name', payload ->> 'execution_id', payload ->> 'status'),
		   concat_ws(E'\n',
			 format('Connector:   %s (%s)', payload -> 'connector' ->> 'name', payload -> 'connector' ->> 'api_name'),
			 format('Execution:   %s', payload ->> 'execution_id'),
			 format('Status:      %s', payload ->> 'status'),
			 format('Triggered:   %s by %s', payload ->> 'trigger_type', payload ->> 'initiated_by'),
			 format('Started:     %s', coalesce(payload ->> 'started_at', 'never')),
			 format('Ended:       %s', payload ->> 'ended_at'),
			 format('Duration:    %s ms', coalesce(payload ->> 'duration_ms', '-')),
			 format('Records:     %s created, %s updated, %s skipped, %s failed (%s in all)',
					payload -> 'record_counts' ->> 'created', payload -> 'record_counts' ->> 'updated',
					payload -> 'record_counts' ->> 'skipped', payload -> 'record_counts' ->> 'failed',
					payload -> 'record_counts' ->> 'total'),
			 CASE WHEN (payload ->> 'dry_run')::boolean THEN 'Dry run:     yes, nothing was written' END,
			 CASE WHEN payload ->> 'output_report_url' IS NOT NULL
				  THEN format('Report:      %s', payload ->> 'output_report_url') END,
			 CASE WHEN payload ->> 'error' IS NOT NULL
				  THEN format(E'\nError:\n%s', payload ->> 'error') END,
			 '')
$$;


/* Send a delivery again now (after a failure, or to replay it). */
CREATE FUNCTION smartconnector.redeliver(delivery_id bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE smartconnector.delivery d
	   SET state = 'pending', attempts = 0, next_attempt_at = pg_catalog.clock_timestamp(),
		   delivered_at = NULL, latency_ms = NULL, created_at = pg_catalog.clock_timestamp()
	 WHERE d.id = redeliver.delivery_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'delivery % does not exist', delivery_id USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM smartconnector_internal.wake_dispatcher_at_commit();
END
$$;
COMMENT ON FUNCTION smartconnector.redeliver(bigint) IS
	'Send a webhook or email again now, with the same webhook-id and body';

/* ------------------------------------------------------------------------
 * Schedules (pg_cron), chaining, administration views, retention
 * ------------------------------------------------------------------------ */

CREATE FUNCTION smartconnector.cron_next(schedule text, after timestamptz)
RETURNS timestamptz LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'cron_next';
COMMENT ON FUNCTION smartconnector.cron_next(text, timestamptz) IS
	'When a five-field cron schedule fires next after a moment (UTC, as pg_cron 1.4); NULL for other syntax';

CREATE FUNCTION smartconnector.retention_cutoff()
RETURNS timestamptz LANGUAGE C STRICT STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'retention_cutoff';
COMMENT ON FUNCTION smartconnector.retention_cutoff() IS
	'now() minus smartconnector.history_retention, or NULL when history is kept forever';

/* Raised by trigger_scheduled() outside a pg_cron job. */
CREATE FUNCTION smartconnector_internal.refuse_unscheduled()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RAISE EXCEPTION 'smartconnector.trigger_scheduled() is for pg_cron jobs'
		USING ERRCODE = 'insufficient_privilege',
			  HINT = 'Use smartconnector.trigger(), or smartconnector.schedule() to run a connector on a schedule.';
END
$$;

/*
 * The job that pg_cron runs for a schedule: queue one execution, with
 * trigger_type schedule (so only from a pg_cron job, see
 * caller_trigger_type()).
 */
CREATE FUNCTION smartconnector_internal.trigger_scheduled_impl(connector_id bigint)
RETURNS bigint
LANGUAGE sql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN smartconnector.caller_trigger_type() = 'schedule'
				THEN smartconnector_internal.enqueue($1, '{}', false, false, 'schedule', smartconnector.calling_role())
				ELSE smartconnector_internal.refuse_unscheduled() END
$$;
CREATE FUNCTION smartconnector.trigger_scheduled(connector_id bigint)
RETURNS bigint
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.trigger_scheduled(bigint) IS
	'What a smartconnector schedule runs: queue an execution with trigger_type schedule';

CREATE FUNCTION smartconnector_internal.require_pg_cron()
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
		RAISE EXCEPTION 'pg_cron is not installed in database "%"', pg_catalog.current_database()
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'smartconnector schedules are pg_cron jobs.',
				  HINT = 'Install postgresql-15-cron, add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, and run CREATE EXTENSION pg_cron.';
	END IF;
END
$$;

/*
 * Schedule a connector with a cron expression.  The pg_cron job (named
 * "smartconnector:<connector id>", so renames do not affect it) runs as
 * the caller, who is then the initiator of the scheduled executions.  A
 * new schedule replaces the connector's previous one.  Returns the job id.
 */
CREATE FUNCTION smartconnector_internal.schedule_impl(api_name text, cron text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cid bigint;
	job_name text;
	old_job bigint;
BEGIN
	PERFORM smartconnector_internal.require_pg_cron();
	cid := smartconnector.connector_id(api_name);
	job_name := 'smartconnector:' || cid;
	FOR old_job IN SELECT s.jobid FROM smartconnector.schedules() s WHERE s.connector_id = cid LOOP
		EXECUTE 'SELECT cron.unschedule($1)' USING old_job;
	END LOOP;
	RETURN cron.schedule_in_database(job_name, cron,
		format('SELECT smartconnector.trigger_scheduled(%s)', cid),
		pg_catalog.current_database(), smartconnector.calling_role()::text, true);
END
$$;
CREATE FUNCTION smartconnector.schedule(api_name text, cron text)
RETURNS bigint
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.schedule(text, text) IS
	'Run a connector on a cron schedule (through pg_cron), as the calling role; replaces its previous schedule';

/* Remove a connector's schedule; false if it had none. */
CREATE FUNCTION smartconnector.unschedule(api_name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	job bigint;
	found_one boolean := false;
BEGIN
	PERFORM smartconnector_internal.require_pg_cron();
	FOR job IN SELECT s.jobid FROM smartconnector.schedules() s
				WHERE s.connector_id = smartconnector.connector_id(api_name)
	LOOP
		EXECUTE 'SELECT cron.unschedule($1)' USING job;
		found_one := true;
	END LOOP;
	RETURN found_one;
END
$$;
COMMENT ON FUNCTION smartconnector.unschedule(text) IS
	'Remove a connector''s schedule; returns false if it had none';

/*
 * Schedules as the overview shows them (empty without pg_cron): the pg_cron
 * jobs that schedule() made, which are named "smartconnector:<id>", run
 * exactly its command in this database, and run as a role that may
 * schedule (smartconnector_admin).  Any role can create a pg_cron job of
 * any name; one that only looks like ours is neither shown nor touched.
 */
CREATE FUNCTION smartconnector.schedules()
RETURNS TABLE (connector_id bigint, jobid bigint, schedule text, active boolean,
			   run_as text, next_run timestamptz)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
		RETURN;
	END IF;
	RETURN QUERY EXECUTE
		$q$SELECT o.id, j.jobid, j.schedule, j.active, j.username::text,
				  CASE WHEN j.active THEN smartconnector.cron_next(j.schedule, pg_catalog.now()) END
			 FROM cron.job j
			CROSS JOIN LATERAL (SELECT CASE WHEN j.jobname ~ '^smartconnector:[1-9][0-9]{0,17}$'
											THEN pg_catalog.substr(j.jobname, 16)::bigint END AS id) o
			WHERE o.id IS NOT NULL
			  AND j.command = pg_catalog.format('SELECT smartconnector.trigger_scheduled(%s)', o.id)
			  AND j.database = pg_catalog.current_database()
			  AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
						   WHERE r.rolname = j.username
							 AND pg_catalog.pg_has_role(r.oid, 'smartconnector_admin', 'USAGE'))$q$;
END
$$;
COMMENT ON FUNCTION smartconnector.schedules() IS
	'Connector schedules held by pg_cron, with the next run time';

/* A schedule goes with its connector. */
CREATE FUNCTION smartconnector_internal.connector_after_delete()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	job bigint;
BEGIN
	IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
		FOR job IN SELECT s.jobid FROM smartconnector.schedules() s WHERE s.connector_id = OLD.id
		LOOP
			EXECUTE 'SELECT cron.unschedule($1)' USING job;
		END LOOP;
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER connector_after_delete
	AFTER DELETE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_after_delete();

/* ---- chaining ---- */

CREATE TABLE smartconnector.chain (
	from_connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	to_connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	on_status smartconnector.execution_state[] NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	PRIMARY KEY (from_connector_id, to_connector_id),
	CONSTRAINT chain_not_self CHECK (from_connector_id <> to_connector_id),
	CONSTRAINT chain_on_status_check CHECK (
		cardinality(on_status) > 0 AND
		on_status <@ ARRAY['success', 'partial_success', 'failed', 'cancelled']::smartconnector.execution_state[])
);
CREATE INDEX chain_to_idx ON smartconnector.chain (to_connector_id);
COMMENT ON TABLE smartconnector.chain IS
	'When an execution of from_connector ends in one of on_status, an execution of to_connector is triggered in the same transaction';

/*
 * Trigger to_api_name whenever an execution of from_api_name ends in one of
 * on_status.  Cycles are refused.  Chaining the same pair again replaces
 * its statuses.
 */
CREATE FUNCTION smartconnector_internal.chain_impl(from_api_name text, to_api_name text,
									 on_status text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	from_id bigint := smartconnector.connector_id(from_api_name);
	to_id bigint := smartconnector.connector_id(to_api_name);
	bad text;
BEGIN
	IF on_status IS NULL OR cardinality(on_status) = 0 THEN
		RAISE EXCEPTION 'on_status must name at least one end state'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use success, partial_success, failed or cancelled.';
	END IF;
	SELECT s INTO bad FROM unnest(on_status) AS s
	 WHERE s IS NULL OR s NOT IN ('success', 'partial_success', 'failed', 'cancelled') LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'invalid chain status: "%"', coalesce(bad, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use success, partial_success, failed or cancelled.';
	END IF;
	IF from_id = to_id THEN
		RAISE EXCEPTION 'cannot chain connector "%" to itself', from_api_name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	/* one chain change at a time, so two cannot close a cycle together */
	LOCK TABLE smartconnector.chain IN SHARE ROW EXCLUSIVE MODE;
	IF EXISTS (
		WITH RECURSIVE reach(id) AS (
			SELECT to_id
			UNION
			SELECT c.to_connector_id FROM smartconnector.chain c JOIN reach r ON c.from_connector_id = r.id)
		SELECT 1 FROM reach WHERE id = from_id) THEN
		RAISE EXCEPTION 'chaining "%" to "%" would create a cycle', from_api_name, to_api_name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%L already leads back to %L.', to_api_name, from_api_name);
	END IF;
	INSERT INTO smartconnector.chain (from_connector_id, to_connector_id, on_status, created_by)
	VALUES (from_id, to_id, on_status::smartconnector.execution_state[], smartconnector.calling_role())
	ON CONFLICT (from_connector_id, to_connector_id)
	DO UPDATE SET on_status = excluded.on_status, created_by = excluded.created_by;
END
$$;
CREATE FUNCTION smartconnector.chain(from_api_name text, to_api_name text,
									 on_status text[] DEFAULT ARRAY['success'])
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.chain(text, text, text[]) IS
	'Trigger a connector when another''s execution ends in one of the given states (default success); no cycles';

CREATE FUNCTION smartconnector.unchain(from_api_name text, to_api_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM smartconnector.chain
	 WHERE from_connector_id = smartconnector.connector_id(from_api_name)
	   AND to_connector_id = smartconnector.connector_id(to_api_name);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector "%" is not chained to "%"', from_api_name, to_api_name
			USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION smartconnector.unchain(text, text) IS
	'Remove a chain between two connectors';

/* ---- administration views ---- */

CREATE INDEX execution_failed_idx ON smartconnector.execution (connector_id, ended_at)
	WHERE state = 'failed';
CREATE INDEX execution_ended_at_idx ON smartconnector.execution (ended_at);

CREATE VIEW smartconnector.overview AS
	SELECT c.api_name, c.name, c.status,
		   c.max_concurrent_executions AS max_concurrent,
		   (SELECT count(*) FROM smartconnector_internal.queue q WHERE q.connector_id = c.id) AS queued,
		   (SELECT count(*) FROM smartconnector.execution e
			 WHERE e.connector_id = c.id AND e.state = 'running') AS running,
		   last.id AS last_execution,
		   last.state AS last_state,
		   last.ended_at AS last_ended_at,
		   (SELECT count(*) FROM smartconnector.execution e
			 WHERE e.connector_id = c.id AND e.state = 'failed'
			   AND e.ended_at > pg_catalog.now() - interval '24 hours') AS failures_24h,
		   s.schedule,
		   s.next_run,
		   /* what the oldest queued execution waits for (NULL: nothing queued) */
		   CASE WHEN NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue q WHERE q.connector_id = c.id) THEN NULL
				WHEN c.status NOT IN ('operational', 'need_attention') THEN 'status ' || c.status::text
				WHEN c.max_concurrent_executions = 0 THEN 'limit 0 (paused)'
				WHEN (SELECT count(*) FROM smartconnector.execution e
					   WHERE e.connector_id = c.id AND e.state = 'running') >= c.max_concurrent_executions
				THEN 'limit (' || c.max_concurrent_executions || ' running)'
				WHEN c.handler IS NULL THEN 'an external runner (claim())'
				WHEN (SELECT count(*) FROM smartconnector.executor_slots() x WHERE x.state = 'busy')
					 >= pg_catalog.current_setting('smartconnector.max_workers')::integer
				THEN 'the executor pool (all busy)'
				ELSE 'an executor to admit it' END AS waiting_for,
		   fd.failed_deliveries,
		   fd.last_delivery_error
	  FROM smartconnector.connector c
	  LEFT JOIN LATERAL (SELECT e.id, e.state, e.ended_at FROM smartconnector.execution e
						  WHERE e.connector_id = c.id AND e.state NOT IN ('queued', 'running')
						  ORDER BY e.id DESC LIMIT 1) last ON true
	  LEFT JOIN smartconnector.schedules() s ON s.connector_id = c.id
	  LEFT JOIN LATERAL (SELECT count(*) AS failed_deliveries,
								(array_agg(left(d.last_error, 200) ORDER BY d.last_attempt_at DESC))[1]
									AS last_delivery_error
						   FROM smartconnector.delivery d
						  WHERE d.connector_id = c.id AND d.state = 'failed') fd ON true
	 ORDER BY c.api_name;
COMMENT ON VIEW smartconnector.overview IS
	'Per connector: status, limit, queued and running, last execution, failures in 24 h, schedule and next run, what the oldest queued execution waits for, failed deliveries and the latest one''s error';

CREATE VIEW smartconnector.recent_executions AS
	SELECT e.id, c.api_name, e.state, e.trigger_type, e.initiated_by,
		   e.queued_at,
		   e.started_at - e.queued_at AS waited,
		   e.ended_at - e.started_at AS took,
		   e.records_created AS created, e.records_updated AS updated,
		   e.records_skipped AS skipped, e.records_failed AS failed,
		   e.records_total AS total,
		   left(e.error, 80) AS error
	  FROM smartconnector.execution e
	  JOIN smartconnector.connector c ON c.id = e.connector_id
	 ORDER BY e.id DESC;
COMMENT ON VIEW smartconnector.recent_executions IS
	'Executions, newest first, with waiting time, duration and record counts (add LIMIT)';

/* Set (or with NULL remove) a role's email; your own, or anyone's as an admin. */
CREATE FUNCTION smartconnector_internal.set_user_email_impl(email text, role_name name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	caller name := smartconnector.calling_role();
	target name := coalesce(set_user_email_impl.role_name, caller);
BEGIN
	IF target <> caller AND NOT pg_catalog.pg_has_role(caller, 'smartconnector_admin', 'MEMBER') THEN
		RAISE EXCEPTION 'permission denied to set the email of role "%"', target
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Roles set their own address; admins may set anyone''s.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = target) THEN
		RAISE EXCEPTION 'role "%" does not exist', target USING ERRCODE = 'undefined_object';
	END IF;
	IF email IS NULL THEN
		DELETE FROM smartconnector.user_email u WHERE u.role_name = target;
	ELSE
		INSERT INTO smartconnector.user_email AS u (role_name, email) VALUES (target, email)
		ON CONFLICT (role_name) DO UPDATE SET email = excluded.email;
	END IF;
END
$$;
CREATE FUNCTION smartconnector.set_user_email(email text, role_name name DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.set_user_email(text, name) IS
	'Set or (with NULL) remove the email address a role is notified at';

/* ---- retention ---- */

/*
 * Delete up to batch_size ended executions (with their report rows and
 * deliveries) that ended before older_than (default: now minus
 * smartconnector.history_retention).  Executions with a delivery still
 * pending are kept.  Touches only ended executions, so admission never
 * waits for it; and it waits for no one: an execution or delivery that
 * another transaction holds locked (an uncommitted redeliver(), say) is
 * left for a later call.  Returns how many were deleted; call again while
 * it returns batch_size.
 */
CREATE FUNCTION smartconnector.cleanup(older_than timestamptz DEFAULT NULL,
									   batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	cutoff timestamptz := coalesce(older_than, smartconnector.retention_cutoff());
	expired bigint[];
	held bigint[];
	n bigint;
BEGIN
	IF cutoff IS NULL THEN
		RETURN 0;
	END IF;
	expired := ARRAY(
		SELECT e.id FROM smartconnector.execution e
		 WHERE e.ended_at < cutoff
		   AND e.state NOT IN ('queued', 'running')
		   AND NOT EXISTS (SELECT 1 FROM smartconnector.delivery d
							WHERE d.execution_id = e.id AND d.state = 'pending')
		 ORDER BY e.ended_at
		 LIMIT batch_size
		   FOR UPDATE OF e SKIP LOCKED);
	/* the executions of deliveries someone holds locked stay, for now */
	held := ARRAY(
		SELECT d.execution_id FROM smartconnector.delivery d
		 WHERE d.execution_id = ANY (expired)
		   AND d.id NOT IN (SELECT l.id FROM smartconnector.delivery l
							 WHERE l.execution_id = ANY (expired)
							   FOR UPDATE SKIP LOCKED));
	DELETE FROM smartconnector.execution x
	 WHERE x.id = ANY (expired) AND x.id <> ALL (held);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION smartconnector.cleanup(timestamptz, integer) IS
	'Delete ended executions (with reports and deliveries) older than the retention; the launcher runs it every minute';

/* ------------------------------------------------------------------------
 * Privileges
 * ------------------------------------------------------------------------ */

REVOKE ALL ON ALL TABLES IN SCHEMA smartconnector, smartconnector_internal FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA smartconnector, smartconnector_internal FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
	smartconnector.check_email(text, text),
	smartconnector.check_webhook_url(text),
	smartconnector.check_webhook_secret(text),
	smartconnector.check_webhook_headers(jsonb),
	smartconnector.generate_webhook_secret(),
	smartconnector.caller_trigger_type(),
	smartconnector.binding_problem(text, oid, name, oid, bigint),
	smartconnector.system_identifier(),
	smartconnector_internal.masked_value(text, jsonb),
	smartconnector_internal.masked_row(jsonb)
	TO smartconnector_viewer;

/* handlers and external runners, as whatever role they run as */
GRANT EXECUTE ON FUNCTION
	smartconnector.record(text, text, text),
	smartconnector.lock_record(text),
	smartconnector.unchanged(text, jsonb),
	smartconnector.current_execution(),
	smartconnector.calling_role()
	TO PUBLIC;

/* viewers: every setting except the secrets */
GRANT SELECT (id, name, api_name, description, status, max_concurrent_executions,
			  notification_email, error_notification_email, execution_ended_webhook_url,
			  diff_check, handler, run_as, handler_oid, run_as_oid, bound_in, created_at, updated_at)
	ON smartconnector.connector TO smartconnector_viewer;
GRANT SELECT ON smartconnector.api_name_alias, smartconnector.settings_history
	TO smartconnector_viewer;
GRANT EXECUTE ON FUNCTION
	smartconnector.connector_id(text),
	smartconnector.describe(text),
	smartconnector.output_report(bigint),
	smartconnector.output_report_url(bigint),
	smartconnector.progress()
	TO smartconnector_viewer;
GRANT SELECT ON smartconnector.execution, smartconnector.execution_record,
	smartconnector.execution_progress, smartconnector.executors, smartconnector.user_email
	TO smartconnector_viewer;
GRANT EXECUTE ON FUNCTION smartconnector.executor_slots() TO smartconnector_viewer;
GRANT EXECUTE ON FUNCTION smartconnector.execution_metadata(bigint) TO smartconnector_viewer;
GRANT EXECUTE ON FUNCTION
	smartconnector.schedules(),
	smartconnector.cron_next(text, timestamptz)
	TO smartconnector_viewer;
GRANT SELECT ON smartconnector.overview, smartconnector.recent_executions, smartconnector.chain
	TO smartconnector_viewer;
/* scheduled jobs run as the role that scheduled them */
GRANT EXECUTE ON FUNCTION smartconnector.trigger_scheduled(bigint) TO smartconnector_operator;
/* every role manages its own address */
GRANT EXECUTE ON FUNCTION smartconnector.set_user_email(text, name) TO PUBLIC;
/*
 * deliveries without their credentials, and without the response body:
 * receivers that echo the request put the credentials there
 */
GRANT SELECT (id, execution_id, connector_id, channel, target, target_host, reason, webhook_id, payload, state,
			  attempts, created_at, next_attempt_at, last_attempt_at, delivered_at, last_status,
			  last_error, latency_ms)
	ON smartconnector.delivery TO smartconnector_viewer;

/* operators: status and limit */
GRANT UPDATE (status, max_concurrent_executions)
	ON smartconnector.connector TO smartconnector_operator;
GRANT EXECUTE ON FUNCTION
	smartconnector.set_status(text, smartconnector.connector_status),
	smartconnector.set_max_concurrent_executions(text, integer),
	smartconnector.trigger(text, jsonb, boolean, boolean),
	smartconnector.cancel(bigint),
	smartconnector.claim(text),
	smartconnector.finish(bigint, text, jsonb),
	smartconnector.redeliver(bigint)
	TO smartconnector_operator;

/* admins: everything */
GRANT SELECT, INSERT, UPDATE, DELETE ON smartconnector.connector TO smartconnector_admin;
GRANT SELECT ON smartconnector.record_hash TO smartconnector_admin;
GRANT SELECT ON smartconnector.delivery TO smartconnector_admin;
GRANT INSERT, UPDATE, DELETE ON smartconnector.user_email TO smartconnector_admin;
GRANT EXECUTE ON FUNCTION
	smartconnector.create_connector(text, text, text, smartconnector.connector_status, integer,
									text, text, text, text, jsonb, boolean, regprocedure, regrole),
	smartconnector.change_api_name(text, text),
	smartconnector.drop_api_name_alias(text),
	smartconnector.schedule(text, text),
	smartconnector.unschedule(text),
	smartconnector.chain(text, text, text[]),
	smartconnector.unchain(text, text),
	smartconnector.cleanup(timestamptz, integer)
	TO smartconnector_admin;

COMMENT ON SEQUENCE smartconnector.connector_id_seq IS 'Identifiers of connectors';
COMMENT ON SEQUENCE smartconnector.execution_id_seq IS 'Identifiers of executions';
COMMENT ON SEQUENCE smartconnector.delivery_id_seq IS 'Identifiers of deliveries';
COMMENT ON SEQUENCE smartconnector.settings_history_id_seq IS 'Identifiers of settings history entries';

/* pg_dump keeps connectors, aliases and their audit trail */
SELECT pg_catalog.pg_extension_config_dump('smartconnector.connector', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.api_name_alias', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.settings_history', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.connector_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.settings_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution_record', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector_internal.queue', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.delivery_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.user_email', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.chain', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.record_hash', '');

/* the workers notice the new extension at once, not at their next nap */
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.wake_dispatcher_at_commit();
