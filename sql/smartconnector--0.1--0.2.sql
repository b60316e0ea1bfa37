/*
 * smartconnector--0.1--0.2.sql
 *		Upgrade 0.1 to 0.2: an execution timeout per connector.
 *
 * CREATE EXTENSION runs this too, after smartconnector--0.1.sql.  New
 * functions are revoked from PUBLIC here, as in the install script; the
 * library of 0.2 waits (and says so once) until this script has run.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION smartconnector UPDATE TO '0.2'" to load this file. \quit

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
		'executable', c.status IN ('operational', 'need_attention'),
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
 * and the launcher repairs what they cannot see (src/admission.c,
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
 * src/lifecycle.c) follow.  Inlined where it is called.
 */
CREATE FUNCTION smartconnector_internal.may_run(c smartconnector.connector)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
	SELECT c.handler IS NOT NULL AND c.status IN ('operational', 'need_attention')
		   AND c.max_concurrent_executions > 0
$$;
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

CREATE FUNCTION smartconnector_internal.lock_enqueue(connector_id bigint)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'lock_enqueue';
REVOKE ALL ON FUNCTION smartconnector_internal.lock_enqueue(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION smartconnector_internal.enqueue(connector_id bigint, input jsonb, disable_diff_check boolean,
									   dry_run boolean, trigger_type text, initiated_by name)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	new_id bigint;
	connector_diff_check boolean;
	runnable boolean;
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
	/*
	 * The connector, read once.  Executors find connectors with work by
	 * their queue head (src/admission.c), of those that may run now; one
	 * paused now gets its head when it is resumed (connector_queue_head()).
	 */
	SELECT c.diff_check, smartconnector_internal.may_run(c) INTO connector_diff_check, runnable
	  FROM smartconnector.connector c WHERE c.id = enqueue.connector_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector with id % does not exist', connector_id
			USING ERRCODE = 'undefined_object';
	END IF;
	INSERT INTO smartconnector.execution
		(connector_id, trigger_type, initiated_by, diff_check, dry_run, input)
	VALUES (enqueue.connector_id, enqueue.trigger_type, enqueue.initiated_by,
			connector_diff_check AND NOT coalesce(disable_diff_check, false),
			coalesce(enqueue.dry_run, false), input)
	RETURNING id INTO new_id;
	IF runnable THEN
		PERFORM smartconnector_internal.lock_enqueue(enqueue.connector_id);
	END IF;
	INSERT INTO smartconnector_internal.queue (connector_id, execution_id)
	VALUES (enqueue.connector_id, new_id);
	IF runnable THEN
		/* an older snapshot may still see a row an executor has deleted: add one then */
		INSERT INTO smartconnector_internal.queue_head (connector_id, head)
		SELECT enqueue.connector_id, new_id
		 WHERE pg_catalog.current_setting('transaction_isolation') <> 'read committed'
			OR NOT EXISTS (SELECT 1 FROM smartconnector_internal.queue_head h
							WHERE h.connector_id = enqueue.connector_id);
	END IF;
	PERFORM smartconnector_internal.wake_at_commit();
	RETURN new_id;
END
$$;

/* the workers speak this schema now: wake them rather than wait for their nap */
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.wake_dispatcher_at_commit();
