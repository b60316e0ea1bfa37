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

/* the workers speak this schema now: wake them rather than wait for their nap */
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.wake_dispatcher_at_commit();
