/*
 * Section 40: the state machine of an execution.
 *
 * An execution is queued by enqueue() (from trigger(), trigger_scheduled()
 * and chains), becomes running when admit() lets it start under the
 * connector's limit, and is ended exactly once by complete_execution(),
 * whose transaction also queues its deliveries and chained executions
 * (execution_ended()): success, partial_success, failed, or cancelled by
 * cancel().  The launcher's pass fails those whose runner is gone; external
 * runners take and end theirs with claim() and finish().
 *
 * Rules: the connector's admission lock serialises its admissions and its
 * status, limit and handler changes, so the count of running executions
 * cannot go stale before an admission commits; queue row before execution
 * row, in admission and cancel(), so the two never deadlock; the end of
 * an execution only queues its webhook and emails (50-outbox), which the
 * dispatcher sends after the commit.
 */

/* ---- queue and admission ---- */

/*
 * The connector's enqueue lock in share mode, to the end of the
 * transaction: an admission that empties the queue keeps the head row while
 * a transaction that holds it is queueing (src/admission.c).
 */
CREATE FUNCTION smartconnector_internal.lock_enqueue(connector_id bigint)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'lock_enqueue';
REVOKE ALL ON FUNCTION smartconnector_internal.lock_enqueue(bigint) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.enqueue(bigint, jsonb, boolean, boolean, text, name) FROM PUBLIC;

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
/*
 * trigger() also says when an execution of a connector without a handler
 * waits for an external runner: none has a claim on the connector now.
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
REVOKE ALL ON FUNCTION smartconnector_internal.admit(bigint) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.execution_ended(bigint) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.complete_execution(bigint, bigint, bigint, bigint, bigint,
																  text, jsonb, jsonb, boolean)
	FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.launcher_pass(jsonb) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector.claim(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.claim(text) TO smartconnector_operator;

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
REVOKE ALL ON FUNCTION smartconnector.finish(bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.finish(bigint, text, jsonb) TO smartconnector_operator;

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
REVOKE ALL ON FUNCTION smartconnector_internal.cancel_impl(bigint) FROM PUBLIC;
CREATE FUNCTION smartconnector.cancel(execution_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.cancel(bigint) IS
	'Cancel a queued or running execution; returns false if it had already ended';
REVOKE ALL ON FUNCTION smartconnector.cancel(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.cancel(bigint) TO smartconnector_operator;
