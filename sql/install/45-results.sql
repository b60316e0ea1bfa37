/*
 * Section 45: reading results, the executor pool and live progress.
 *
 * The output report and its download URL of one execution, the executor
 * workers and the running executions with their live counts (views for
 * psql).  Viewers may read all of it; every function that takes an
 * execution id says when it does not exist (42704), never "nothing".
 */

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
REVOKE ALL ON FUNCTION smartconnector_internal.require_execution(bigint) FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector.output_report(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.output_report(bigint) TO smartconnector_viewer;

/* An execution's output report URL, from smartconnector.report_url_template (NULL when unset) */
CREATE FUNCTION smartconnector_internal.report_url(execution_id bigint, api_name text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NULLIF(pg_catalog.replace(pg_catalog.replace(
	pg_catalog.current_setting('smartconnector.report_url_template'),
	'{execution_id}', execution_id::text), '{api_name}', api_name), '');
REVOKE ALL ON FUNCTION smartconnector_internal.report_url(bigint, text) FROM PUBLIC;

CREATE FUNCTION smartconnector.output_report_url(execution_id bigint)
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
COMMENT ON FUNCTION smartconnector.output_report_url(bigint) IS
	'Download URL of an execution''s output report, from smartconnector.report_url_template (NULL when unset)';
REVOKE ALL ON FUNCTION smartconnector.output_report_url(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.output_report_url(bigint) TO smartconnector_viewer;

/* The executor pool: one executor per slot, each serving one role. */
CREATE FUNCTION smartconnector.executor_slots(OUT slot integer, OUT pid integer, OUT role name,
										 OUT state text)
RETURNS SETOF record LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'executor_slots';
COMMENT ON FUNCTION smartconnector.executor_slots() IS
	'The executor workers: slot, pid, the role each connects as, and state (starting, idle, busy, retiring)';
REVOKE ALL ON FUNCTION smartconnector.executor_slots() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.executor_slots() TO smartconnector_viewer;
CREATE VIEW smartconnector.executors AS SELECT * FROM smartconnector.executor_slots();
COMMENT ON VIEW smartconnector.executors IS
	'The executor pool (smartconnector.max_workers slots, shared by the run_as roles): slot, pid, role, state';
REVOKE ALL ON smartconnector.executors FROM PUBLIC;
GRANT SELECT ON smartconnector.executors TO smartconnector_viewer;

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
REVOKE ALL ON smartconnector.execution_progress FROM PUBLIC;
GRANT SELECT ON smartconnector.execution_progress TO smartconnector_viewer;
