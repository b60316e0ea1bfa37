/*
 * Section 55: schedules, through pg_cron.
 *
 * A schedule is a pg_cron job named "smartconnector:<connector id>" that
 * runs trigger_scheduled() as the role that scheduled it; pg_cron is
 * optional, and only schedule() and unschedule() need it (schedules() is
 * empty without it).  Only the jobs that schedule() made are shown or
 * touched, and a connector's schedule goes with it (the AFTER DELETE
 * trigger connector_after_delete).
 */

CREATE FUNCTION smartconnector.cron_next(schedule text, after timestamptz)
RETURNS timestamptz LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'cron_next';
COMMENT ON FUNCTION smartconnector.cron_next(text, timestamptz) IS
	'When a five-field cron schedule fires next after a moment (UTC, as pg_cron 1.4); NULL for other syntax';
REVOKE ALL ON FUNCTION smartconnector.cron_next(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.cron_next(text, timestamptz) TO smartconnector_viewer;

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
REVOKE ALL ON FUNCTION smartconnector_internal.refuse_unscheduled() FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.trigger_scheduled_impl(bigint) FROM PUBLIC;
CREATE FUNCTION smartconnector.trigger_scheduled(connector_id bigint)
RETURNS bigint
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.trigger_scheduled(bigint) IS
	'What a smartconnector schedule runs: queue an execution with trigger_type schedule';
REVOKE ALL ON FUNCTION smartconnector.trigger_scheduled(bigint) FROM PUBLIC;
/* scheduled jobs run as the role that scheduled them */
GRANT EXECUTE ON FUNCTION smartconnector.trigger_scheduled(bigint) TO smartconnector_operator;

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
REVOKE ALL ON FUNCTION smartconnector_internal.require_pg_cron() FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector_internal.schedule_impl(text, text) FROM PUBLIC;
CREATE FUNCTION smartconnector.schedule(api_name text, cron text)
RETURNS bigint
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.schedule(text, text) IS
	'Run a connector on a cron schedule (through pg_cron), as the calling role; replaces its previous schedule';
REVOKE ALL ON FUNCTION smartconnector.schedule(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.schedule(text, text) TO smartconnector_admin;

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
REVOKE ALL ON FUNCTION smartconnector.unschedule(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.unschedule(text) TO smartconnector_admin;

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
REVOKE ALL ON FUNCTION smartconnector.schedules() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.schedules() TO smartconnector_viewer;

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
REVOKE ALL ON FUNCTION smartconnector_internal.connector_after_delete() FROM PUBLIC;
CREATE TRIGGER connector_after_delete
	AFTER DELETE ON smartconnector.connector
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.connector_after_delete();
