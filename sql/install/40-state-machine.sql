/*
 * Section 40: the state machine of an execution, in C (src/execution.c);
 * these are its SQL wrappers and the functions that explain it.
 *
 * An execution is queued by enqueue() (from trigger(), trigger_scheduled()
 * and chains), becomes running when an executor admits it under the
 * connector's limit or an external runner claim()s it, and is ended exactly
 * once: by its executor, by finish(), by cancel(), or by the launcher when
 * its runner is gone; the transaction that ends it also queues its
 * deliveries (50-outbox) and chained executions (60-chains).
 *
 * Rules: the connector's admission lock serialises its admissions and its
 * status, limit and handler changes, so the count of running executions
 * cannot go stale before an admission commits; queue row before execution
 * row, in admission and cancel(), so the two never deadlock; the end of
 * an execution only queues its webhook and emails, which the dispatcher
 * sends after the commit.
 */

/* ---- queue and admission ---- */

/* Queue an execution; the launcher is woken when this commits. */
CREATE FUNCTION smartconnector_internal.enqueue(connector_id bigint, input jsonb, disable_diff_check boolean,
									   dry_run boolean, trigger_type text, initiated_by name)
RETURNS bigint
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'enqueue';
REVOKE ALL ON FUNCTION smartconnector_internal.enqueue(bigint, jsonb, boolean, boolean, text, name) FROM PUBLIC;

/*
 * Queue an execution for the caller by api_name (or alias), and say with a
 * NOTICE when it cannot start now, and why: the connector's status, a limit
 * of 0, the limit reached, every executor busy, or (without a handler) no
 * external runner holding a claim.  A connector that may not execute still
 * queues; nothing is admitted until its status is executable again.
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
REVOKE ALL ON FUNCTION smartconnector_internal.trigger_impl(text, jsonb, boolean, boolean) FROM PUBLIC;
CREATE FUNCTION smartconnector.trigger(api_name text, input jsonb DEFAULT '{}',
									   disable_diff_check boolean DEFAULT false,
									   dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.trigger(text, jsonb, boolean, boolean) IS
	'Queue an execution and return its id at once (trigger_type: schedule from a pg_cron job, manual from psql, api otherwise)';
REVOKE ALL ON FUNCTION smartconnector.trigger(text, jsonb, boolean, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.trigger(text, jsonb, boolean, boolean) TO smartconnector_operator;

/* ---- external runners ---- */

/*
 * Admit and return the next execution of a connector without a handler,
 * or NULL; this session then runs it until finish().
 */
CREATE FUNCTION smartconnector.claim(api_name text)
RETURNS bigint
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'claim';
COMMENT ON FUNCTION smartconnector.claim(text) IS
	'External runners: admit the next execution of a connector without a handler (or return NULL); this session runs it until finish()';
REVOKE ALL ON FUNCTION smartconnector.claim(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.claim(text) TO smartconnector_operator;

/* End the execution this session claimed. */
CREATE FUNCTION smartconnector.finish(execution_id bigint, error text DEFAULT NULL,
									  metadata jsonb DEFAULT NULL)
RETURNS smartconnector.execution_state
LANGUAGE C VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'finish';
COMMENT ON FUNCTION smartconnector.finish(bigint, text, jsonb) IS
	'External runners: end the claimed execution (failed when error is given, partial_success when records failed)';
REVOKE ALL ON FUNCTION smartconnector.finish(bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.finish(bigint, text, jsonb) TO smartconnector_operator;

/*
 * Cancel an execution: a queued one ends cancelled at once; a running one
 * is interrupted and ends cancelled (what its runner committed stays).
 * Returns false when it had already ended.
 */
CREATE FUNCTION smartconnector_internal.cancel_impl(execution_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'cancel_impl';
REVOKE ALL ON FUNCTION smartconnector_internal.cancel_impl(bigint) FROM PUBLIC;
CREATE FUNCTION smartconnector.cancel(execution_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.cancel(bigint) IS
	'Cancel a queued or running execution; returns false if it had already ended';
REVOKE ALL ON FUNCTION smartconnector.cancel(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.cancel(bigint) TO smartconnector_operator;
