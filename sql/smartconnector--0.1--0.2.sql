/*
 * smartconnector--0.1--0.2.sql
 *		Upgrade 0.1 to 0.2: an execution timeout per connector, queue heads,
 *		the state machine in C, one definition per rule.
 *
 * A fresh install runs the full script instead (smartconnector--0.2.sql,
 * made from sql/install/); test/t/021_install_paths.pl proves that both
 * give the same catalog, so every change here has its twin in a section.
 * New functions are revoked from PUBLIC here, as in the install script; the
 * library of 0.2 waits (and says so once) until this script has run.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION smartconnector UPDATE TO '0.2'" to load this file. \quit

/* ------------------------------------------------------------------------
 * Rules, one definition each.  Each is an inlinable SQL function (its body
 * is planned into the statement that calls it); C asks them too.  PUBLIC
 * may execute them: constraints and the overview view evaluate them as the
 * user who writes or reads, and none reveals anything.  Their bodies are
 * SQL-standard (RETURN ...), so their operators are bound now, under this
 * script's search_path: a text body would be parsed with the caller's, and
 * whoever can create an operator =(connector_status, connector_status) in
 * a schema on a reader's path would run code as the overview's reader.
 * ------------------------------------------------------------------------ */

/* Which statuses may execute (README: status) */
CREATE FUNCTION smartconnector_internal.status_executable(status smartconnector.connector_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN status IN ('operational', 'need_attention');

/* What an api_name (or an alias) looks like */
CREATE FUNCTION smartconnector_internal.api_name_valid(api_name text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN api_name ~ '^[a-z][a-z0-9_]{0,62}$';

/* An execution's output report URL, from smartconnector.report_url_template (NULL when unset) */
CREATE FUNCTION smartconnector_internal.report_url(execution_id bigint, api_name text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NULLIF(pg_catalog.replace(pg_catalog.replace(
	pg_catalog.current_setting('smartconnector.report_url_template'),
	'{execution_id}', execution_id::text), '{api_name}', api_name), '');
REVOKE ALL ON FUNCTION smartconnector_internal.report_url(bigint, text) FROM PUBLIC;

ALTER TABLE smartconnector.connector DROP CONSTRAINT connector_api_name_check,
	ADD CONSTRAINT connector_api_name_check CHECK (smartconnector_internal.api_name_valid(api_name));
ALTER TABLE smartconnector.api_name_alias DROP CONSTRAINT api_name_alias_alias_check,
	ADD CONSTRAINT api_name_alias_alias_check CHECK (smartconnector_internal.api_name_valid(alias));

/* the settings trigger asks the api_name rule */
CREATE OR REPLACE FUNCTION smartconnector_internal.connector_validate_impl()
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

/* the event and output_report_url() ask the report URL rule */
CREATE OR REPLACE FUNCTION smartconnector_internal.event(e smartconnector.execution, c smartconnector.connector)
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
		'output_report_url', smartconnector_internal.report_url(e.id, c.api_name),
		'error', e.error,
		'metadata', CASE WHEN pg_catalog.octet_length(e.metadata::text) > 262144
						 THEN pg_catalog.jsonb_build_object('truncated', true,
							 'size_bytes', pg_catalog.octet_length(e.metadata::text))
						 ELSE e.metadata END)
$$;

CREATE OR REPLACE FUNCTION smartconnector.output_report_url(execution_id bigint)
RETURNS text
LANGUAGE plpgsql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector_internal.require_execution(output_report_url.execution_id);
	RETURN (SELECT smartconnector_internal.report_url(e.id, c.api_name)
			  FROM smartconnector.execution e
			  JOIN smartconnector.connector c ON c.id = e.connector_id
			 WHERE e.id = output_report_url.execution_id);
END
$$;

/* the overview asks the status rule */
CREATE OR REPLACE VIEW smartconnector.overview AS
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
				WHEN NOT smartconnector_internal.status_executable(c.status) THEN 'status ' || c.status::text
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
GRANT EXECUTE ON FUNCTION
	smartconnector_internal.status_executable(smartconnector.connector_status),
	smartconnector_internal.api_name_valid(text)
	TO PUBLIC;
COMMENT ON FUNCTION smartconnector_internal.status_executable(smartconnector.connector_status) IS
	'Whether connectors in this status may execute (operational, need_attention)';
COMMENT ON FUNCTION smartconnector_internal.api_name_valid(text) IS
	'Whether a text is a valid api_name: a lowercase letter, then up to 62 lowercase letters, digits or underscores';

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
ALTER TABLE smartconnector.connector ADD COLUMN max_duration smartconnector.duration;
COMMENT ON COLUMN smartconnector.connector.max_duration IS
	'How long an execution may run before it is stopped and fails (NULL: no limit); applies to running executions too';
GRANT SELECT (max_duration) ON smartconnector.connector TO smartconnector_viewer;

/* describe() gives max_duration in ISO 8601 ("PT1H30M"), whatever the session's IntervalStyle */
CREATE OR REPLACE FUNCTION smartconnector.describe(api_name text)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET intervalstyle = 'iso_8601'
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
		'executable', smartconnector_internal.status_executable(c.status),
		'max_concurrent_executions', c.max_concurrent_executions,
		'max_duration', c.max_duration,
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

/*
 * trigger() also says when an execution of a connector without a handler
 * waits for an external runner: none has a claim on the connector now.
 */
CREATE OR REPLACE FUNCTION smartconnector_internal.trigger_impl(api_name text, input jsonb,
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
	IF NOT smartconnector_internal.status_executable(c.status) THEN
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
	IF c.handler IS NULL THEN
		IF running = 0 THEN
			RAISE NOTICE 'execution % waits for an external runner: connector "%" has no handler, and no runner has a claim now',
				new_id, c.api_name
				USING HINT = format('A runner program takes it with smartconnector.claim(%L).', c.api_name);
		END IF;
	ELSE
		SELECT count(*) INTO busy FROM smartconnector.executor_slots() s WHERE s.state = 'busy';
		IF busy >= pg_catalog.current_setting('smartconnector.max_workers')::integer THEN
			RAISE NOTICE 'execution % waits for an executor: all % are busy', new_id, busy
				USING HINT = 'The pool (smartconnector.max_workers) is shared by all connectors; the next free executor takes it.';
		END IF;
	END IF;
	RETURN new_id;
END
$$;

/*
 * Queue heads: one row per connector with queued work that may run now (a
 * handler, an executable status, a limit above 0), with (about) its oldest
 * queued execution, so that an executor finds the next
 * connector to admit from by an index scan, however many connectors have
 * work.  enqueue() adds the row, executors' admissions move or delete it,
 * and the launcher repairs what they cannot see (src/execution.c,
 * src/launcher.c).  Not dumped: the launcher rebuilds it from the queue.
 * No unique key on purpose: an execution queued in a transaction that stays
 * open must not make every other enqueue() of its connector wait for it to
 * end (a unique check would).  Two enqueues that each see no row both add
 * one; the rows of a connector are moved and deleted together, and readers
 * take each connector once.
 */
/*
 * Whether a connector's executors may start its queued executions now: the
 * one definition that the queue heads (here, src/launcher.c,
 * src/execution.c) follow.  Inlined where it is called.
 */
CREATE FUNCTION smartconnector_internal.may_run(c smartconnector.connector)
RETURNS boolean
LANGUAGE sql IMMUTABLE
RETURN c.handler IS NOT NULL AND smartconnector_internal.status_executable(c.status)
	   AND c.max_concurrent_executions > 0;
REVOKE ALL ON FUNCTION smartconnector_internal.may_run(smartconnector.connector) FROM PUBLIC;

CREATE TABLE smartconnector_internal.queue_head (
	connector_id bigint NOT NULL,	-- no foreign key: its KEY SHARE lock would let a user's
									-- open transaction hold up the launcher's repair
	head bigint NOT NULL
);
CREATE INDEX queue_head_connector_idx ON smartconnector_internal.queue_head (connector_id);
CREATE INDEX queue_head_head_idx ON smartconnector_internal.queue_head (head);
COMMENT ON TABLE smartconnector_internal.queue_head IS
	'Connectors with queued work that may run now, by their oldest queued execution (an ordering hint)';
INSERT INTO smartconnector_internal.queue_head (connector_id, head)
SELECT q.connector_id, min(q.execution_id)
  FROM smartconnector_internal.queue q
  JOIN smartconnector.connector c ON c.id = q.connector_id
 WHERE smartconnector_internal.may_run(c)
 GROUP BY q.connector_id;
REVOKE ALL ON smartconnector_internal.queue_head FROM PUBLIC;

/*
 * A connector that may run again (resumed, activated, given a handler or
 * another run_as) gets its head row at once, and one that may not loses it,
 * in the transaction of the change, so that executors neither wait for the
 * launcher's repair nor walk past paused backlogs.
 */
CREATE FUNCTION smartconnector_internal.connector_queue_head()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF smartconnector_internal.may_run(NEW) THEN
		INSERT INTO smartconnector_internal.queue_head (connector_id, head)
		SELECT NEW.id, q.head
		  FROM (SELECT min(x.execution_id) AS head FROM smartconnector_internal.queue x
				 WHERE x.connector_id = NEW.id) q
		 WHERE q.head IS NOT NULL
		   AND NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue_head h
							WHERE h.connector_id = NEW.id);
	ELSE
		DELETE FROM smartconnector_internal.queue_head h WHERE h.connector_id = NEW.id;
	END IF;
	RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION smartconnector_internal.connector_queue_head() FROM PUBLIC;
CREATE TRIGGER connector_queue_head
	AFTER UPDATE OF status, max_concurrent_executions, handler, run_as ON smartconnector.connector
	FOR EACH ROW
	WHEN (OLD.status IS DISTINCT FROM NEW.status
		  OR OLD.max_concurrent_executions IS DISTINCT FROM NEW.max_concurrent_executions
		  OR OLD.handler IS DISTINCT FROM NEW.handler OR OLD.run_as IS DISTINCT FROM NEW.run_as)
	EXECUTE FUNCTION smartconnector_internal.connector_queue_head();


/*
 * The state machine (src/execution.c) owns every transition of an
 * execution; these SQL functions are its thin wrappers now.
 */
CREATE OR REPLACE FUNCTION smartconnector_internal.enqueue(connector_id bigint, input jsonb, disable_diff_check boolean,
									   dry_run boolean, trigger_type text, initiated_by name)
RETURNS bigint
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'enqueue';

CREATE OR REPLACE FUNCTION smartconnector.claim(api_name text)
RETURNS bigint
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'claim';

CREATE OR REPLACE FUNCTION smartconnector.finish(execution_id bigint, error text DEFAULT NULL,
									  metadata jsonb DEFAULT NULL)
RETURNS smartconnector.execution_state
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'finish';

CREATE OR REPLACE FUNCTION smartconnector_internal.cancel_impl(execution_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'cancel_impl';

/* what only 0.1's PL/pgSQL transitions called (the library keeps them for 0.1: src/compat.c) */
DROP FUNCTION smartconnector_internal.launcher_pass(jsonb);
DROP FUNCTION smartconnector_internal.admit(bigint);
DROP FUNCTION smartconnector_internal.begin_execution(bigint, bigint, boolean, boolean);
DROP FUNCTION smartconnector_internal.complete_current(text, jsonb);
DROP FUNCTION smartconnector_internal.forget_deleted_current();
DROP FUNCTION smartconnector_internal.forget_current();
DROP FUNCTION smartconnector_internal.complete_execution(bigint, bigint, bigint, bigint, bigint,
														 text, jsonb, jsonb, boolean);
DROP FUNCTION smartconnector_internal.execution_ended(bigint);
DROP FUNCTION smartconnector_internal.signal_runner_at_commit(bigint);
DROP FUNCTION smartconnector_internal.signal_committing_runner(bigint);

/* the workers speak this schema now: wake them rather than wait for their nap */
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.wake_dispatcher_at_commit();
