/*
 * Section 75: history retention.
 *
 * cleanup() deletes ended executions, with their report rows and
 * deliveries, older than smartconnector.history_retention; the launcher
 * calls it every minute.  It waits for no one and never touches queued or
 * running executions, so admission never waits for it.
 */

CREATE FUNCTION smartconnector.retention_cutoff()
RETURNS timestamptz LANGUAGE C STRICT STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'retention_cutoff';
COMMENT ON FUNCTION smartconnector.retention_cutoff() IS
	'now() minus smartconnector.history_retention, or NULL when history is kept forever';
REVOKE ALL ON FUNCTION smartconnector.retention_cutoff() FROM PUBLIC;

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
REVOKE ALL ON FUNCTION smartconnector.cleanup(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.cleanup(timestamptz, integer) TO smartconnector_admin;
