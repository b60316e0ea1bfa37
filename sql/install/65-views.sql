/*
 * Section 65: administration views for psql.
 *
 * overview: one row per connector, with what its oldest queued execution
 * waits for; recent_executions: executions newest first.  Both read the
 * tables of the earlier sections and schedules() (55-schedules), so they
 * come after them; viewers may read them.
 */

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
COMMENT ON VIEW smartconnector.overview IS
	'Per connector: status, limit, queued and running, last execution, failures in 24 h, schedule and next run, what the oldest queued execution waits for, failed deliveries and the latest one''s error';
REVOKE ALL ON smartconnector.overview FROM PUBLIC;
GRANT SELECT ON smartconnector.overview TO smartconnector_viewer;

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
REVOKE ALL ON smartconnector.recent_executions FROM PUBLIC;
GRANT SELECT ON smartconnector.recent_executions TO smartconnector_viewer;
