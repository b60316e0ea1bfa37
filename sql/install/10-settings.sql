/*
 * Section 10: settings, the connector table and the rules of its rows.
 *
 * The validators (C), the acting role and how trigger() was reached, the
 * binding check of a handler, the types of the settings, the connector
 * table with all its columns, constraints, comments and privileges, the two
 * BEFORE triggers that bind and validate every row, and create_connector().
 * Every rule is checked by the trigger connector_validate, so that plain
 * INSERT and UPDATE are as safe as the helper functions.
 *
 * The other triggers on smartconnector.connector live with their concern:
 * connector_audit (20-audit), connector_before_delete and
 * connector_queue_head (30-executions), connector_after_delete
 * (55-schedules).  Triggers of one table fire in the order of their names.
 */

/* ------------------------------------------------------------------------
 * Validators (C).  Each raises a clear error or returns nothing.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION smartconnector.check_email(address text, setting text DEFAULT 'email address')
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_email';
COMMENT ON FUNCTION smartconnector.check_email(text, text) IS
	'Raise an error unless the argument is exactly one valid email address';
REVOKE ALL ON FUNCTION smartconnector.check_email(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.check_email(text, text) TO smartconnector_viewer;

CREATE FUNCTION smartconnector.check_webhook_url(url text)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_url';
COMMENT ON FUNCTION smartconnector.check_webhook_url(text) IS
	'Raise an error unless the argument is an absolute http(s) URL with a host and no credentials (parsed by libcurl)';
REVOKE ALL ON FUNCTION smartconnector.check_webhook_url(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.check_webhook_url(text) TO smartconnector_viewer;

CREATE FUNCTION smartconnector.check_webhook_secret(secret text)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_secret';
COMMENT ON FUNCTION smartconnector.check_webhook_secret(text) IS
	'Raise an error unless the argument is a Standard Webhooks secret (whsec_ + base64 of 24 to 64 bytes)';
REVOKE ALL ON FUNCTION smartconnector.check_webhook_secret(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.check_webhook_secret(text) TO smartconnector_viewer;

CREATE FUNCTION smartconnector.check_webhook_headers(headers jsonb)
RETURNS void
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_webhook_headers';
COMMENT ON FUNCTION smartconnector.check_webhook_headers(jsonb) IS
	'Raise an error unless the argument is a JSON object of valid, non-reserved header names and string values';
REVOKE ALL ON FUNCTION smartconnector.check_webhook_headers(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.check_webhook_headers(jsonb) TO smartconnector_viewer;

CREATE FUNCTION smartconnector.generate_webhook_secret()
RETURNS text
LANGUAGE C STRICT VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'generate_webhook_secret';
COMMENT ON FUNCTION smartconnector.generate_webhook_secret() IS
	'A new random Standard Webhooks secret (whsec_ + base64 of 32 bytes)';
REVOKE ALL ON FUNCTION smartconnector.generate_webhook_secret() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.generate_webhook_secret() TO smartconnector_viewer;

/* ------------------------------------------------------------------------
 * The acting role, and how trigger() was reached (C, src/identity.c)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION smartconnector.calling_role()
RETURNS name
LANGUAGE C STRICT STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'calling_role';
COMMENT ON FUNCTION smartconnector.calling_role() IS
	'The acting role: the current user of the code that called smartconnector (what audit and privilege checks use)';
REVOKE ALL ON FUNCTION smartconnector.calling_role() FROM PUBLIC;
/* handlers and external runners, as whatever role they run as */
GRANT EXECUTE ON FUNCTION smartconnector.calling_role() TO PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector.caller_trigger_type() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.caller_trigger_type() TO smartconnector_viewer;

/* ------------------------------------------------------------------------
 * Handler bindings (C, src/binding.c)
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
REVOKE ALL ON FUNCTION smartconnector.binding_problem(text, oid, name, oid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.binding_problem(text, oid, name, oid, bigint) TO smartconnector_viewer;

CREATE FUNCTION smartconnector.system_identifier()
RETURNS bigint
LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'system_identifier';
COMMENT ON FUNCTION smartconnector.system_identifier() IS
	'This cluster''s system identifier, the value of bound_in for bindings made here';
REVOKE ALL ON FUNCTION smartconnector.system_identifier() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.system_identifier() TO smartconnector_viewer;

/* ------------------------------------------------------------------------
 * Settings catalog
 * ------------------------------------------------------------------------ */

CREATE TYPE smartconnector.connector_status AS ENUM
	('setup', 'operational', 'need_attention', 'inactive');
COMMENT ON TYPE smartconnector.connector_status IS
	'setup: new, not yet executable; operational and need_attention: executable; inactive: holds every run in the queue';

/*
 * Rules, one definition each: inlinable SQL functions (planned into the
 * statement that calls them), which SQL and C both ask.  PUBLIC may execute
 * these two: constraints and the overview evaluate them as the user who
 * writes or reads, and neither reveals anything.  Their bodies are
 * SQL-standard (RETURN ...), so their operators are bound when they are
 * created: a text body would be parsed with the caller's search_path, and
 * whoever can create an operator =(connector_status, connector_status) in
 * a schema on a reader's path would run code as the overview's reader.
 */

/* Which statuses may execute (README: status) */
CREATE FUNCTION smartconnector_internal.status_executable(status smartconnector.connector_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN status IN ('operational', 'need_attention');
COMMENT ON FUNCTION smartconnector_internal.status_executable(smartconnector.connector_status) IS
	'Whether connectors in this status may execute (operational, need_attention)';
GRANT EXECUTE ON FUNCTION smartconnector_internal.status_executable(smartconnector.connector_status)
	TO PUBLIC;

/* What an api_name (or an alias) looks like */
CREATE FUNCTION smartconnector_internal.api_name_valid(api_name text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN api_name ~ '^[a-z][a-z0-9_]{0,62}$';
COMMENT ON FUNCTION smartconnector_internal.api_name_valid(text) IS
	'Whether a text is a valid api_name: a lowercase letter, then up to 62 lowercase letters, digits or underscores';
GRANT EXECUTE ON FUNCTION smartconnector_internal.api_name_valid(text) TO PUBLIC;

/*
 * max_duration: how long an execution may run.  The launcher stops one that
 * runs longer (src/launcher.c): a handler gets a query cancel, and is
 * terminated if it does not stop within smartconnector.cancel_grace; an
 * external runner's session is terminated.  Either way the execution ends
 * failed with "execution exceeded max_duration (...)".
 */
CREATE DOMAIN smartconnector.duration AS interval
	CONSTRAINT duration_positive CHECK (VALUE > interval '0');
COMMENT ON DOMAIN smartconnector.duration IS 'A positive interval (max_duration)';

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
	max_duration smartconnector.duration,	-- last, where 0.2's ALTER TABLE ADD COLUMN put it
	CONSTRAINT connector_api_name_key UNIQUE (api_name),
	CONSTRAINT connector_name_check
		CHECK (pg_catalog.btrim(name) <> '' AND pg_catalog.length(name) <= 200),
	CONSTRAINT connector_api_name_check
		CHECK (smartconnector_internal.api_name_valid(api_name)),
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
COMMENT ON COLUMN smartconnector.connector.max_duration IS
	'How long an execution may run before it is stopped and fails (NULL: no limit); applies to running executions too';
COMMENT ON SEQUENCE smartconnector.connector_id_seq IS 'Identifiers of connectors';

REVOKE ALL ON smartconnector.connector FROM PUBLIC;
/* viewers: every setting except the secrets */
GRANT SELECT (id, name, api_name, description, status, max_concurrent_executions,
			  notification_email, error_notification_email, execution_ended_webhook_url,
			  diff_check, handler, run_as, handler_oid, run_as_oid, bound_in, created_at, updated_at,
			  max_duration)
	ON smartconnector.connector TO smartconnector_viewer;
/* operators: status and limit */
GRANT UPDATE (status, max_concurrent_executions)
	ON smartconnector.connector TO smartconnector_operator;
/* admins: everything */
GRANT SELECT, INSERT, UPDATE, DELETE ON smartconnector.connector TO smartconnector_admin;

/* ------------------------------------------------------------------------
 * Rules
 * ------------------------------------------------------------------------ */

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
REVOKE ALL ON FUNCTION smartconnector_internal.connector_bind() FROM PUBLIC;

CREATE TRIGGER connector_bind
	BEFORE INSERT OR UPDATE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_bind();

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
		IF NOT smartconnector_internal.api_name_valid(NEW.api_name) THEN
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
REVOKE ALL ON FUNCTION smartconnector_internal.connector_validate_impl() FROM PUBLIC;

CREATE FUNCTION smartconnector_internal.connector_validate()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'sc_entry';
REVOKE ALL ON FUNCTION smartconnector_internal.connector_validate() FROM PUBLIC;

CREATE TRIGGER connector_validate
	BEFORE INSERT OR UPDATE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_validate();

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
REVOKE ALL ON FUNCTION
	smartconnector.create_connector(text, text, text, smartconnector.connector_status, integer,
									text, text, text, text, jsonb, boolean, regprocedure, regrole)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	smartconnector.create_connector(text, text, text, smartconnector.connector_status, integer,
									text, text, text, text, jsonb, boolean, regprocedure, regrole)
	TO smartconnector_admin;
