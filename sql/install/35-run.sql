/*
 * Section 35: the session's run, its wakeups and the handler API.
 *
 * What a backend that runs an execution holds (an executor running a
 * handler, or an external runner's session after claim()): its current
 * execution, live record counts in shared memory, the hashes it keeps for
 * the diff check; the admission lock, the wakeups at commit and the
 * signals to runners (C: src/locks.c, src/run.c); and the handler
 * API, record(), lock_record() and unchanged(), which every role may call,
 * since a handler runs as any role.  Nothing else here is PUBLIC's.
 */

/* ---- internals (C) ---- */

CREATE FUNCTION smartconnector_internal.lock_admissions(connector_id bigint)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lock_admissions';
REVOKE ALL ON FUNCTION smartconnector_internal.lock_admissions(bigint) FROM PUBLIC;

CREATE FUNCTION smartconnector.runner_alive(execution_id bigint)
RETURNS boolean LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'runner_alive';
COMMENT ON FUNCTION smartconnector.runner_alive(bigint) IS
	'Whether a live backend runs an execution (its progress slot in shared memory names it)';
REVOKE ALL ON FUNCTION smartconnector.runner_alive(bigint) FROM PUBLIC;

CREATE FUNCTION smartconnector_internal.wake_at_commit()
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'wake_at_commit';
REVOKE ALL ON FUNCTION smartconnector_internal.wake_at_commit() FROM PUBLIC;

CREATE FUNCTION smartconnector.current_execution()
RETURNS bigint LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'current_execution';
COMMENT ON FUNCTION smartconnector.current_execution() IS
	'The execution this session runs (a handler, or an external runner after claim()), or NULL';
REVOKE ALL ON FUNCTION smartconnector.current_execution() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.current_execution() TO PUBLIC;

CREATE FUNCTION smartconnector_internal.current_execution_info(
	OUT execution_id bigint, OUT connector_id bigint, OUT diff_check boolean, OUT dry_run boolean)
RETURNS record LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'current_execution_info';
REVOKE ALL ON FUNCTION smartconnector_internal.current_execution_info() FROM PUBLIC;

CREATE FUNCTION smartconnector_internal.remember_hash(record_key text, hash bytea)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'remember_hash';
REVOKE ALL ON FUNCTION smartconnector_internal.remember_hash(text, bytea) FROM PUBLIC;

CREATE FUNCTION smartconnector.progress(
	OUT execution_id bigint, OUT pid integer,
	OUT records_created bigint, OUT records_updated bigint,
	OUT records_skipped bigint, OUT records_failed bigint, OUT records_total bigint)
RETURNS SETOF record LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'progress';
COMMENT ON FUNCTION smartconnector.progress() IS
	'Live record counts of every execution running now, from shared memory';
REVOKE ALL ON FUNCTION smartconnector.progress() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.progress() TO smartconnector_viewer;

/* ---- handler API (C), callable by any role a handler runs as ---- */

CREATE FUNCTION smartconnector.record(record_key text, action text, detail text DEFAULT NULL)
RETURNS void LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'record';
COMMENT ON FUNCTION smartconnector.record(text, text, text) IS
	'Count a record of the running execution (created, updated, skipped or failed) and add it to the output report';
REVOKE ALL ON FUNCTION smartconnector.record(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.record(text, text, text) TO PUBLIC;

CREATE FUNCTION smartconnector.lock_record(record_key text)
RETURNS void LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lock_record';
COMMENT ON FUNCTION smartconnector.lock_record(text) IS
	'Wait until no other execution of this connector holds the record, and hold it until this transaction ends';
REVOKE ALL ON FUNCTION smartconnector.lock_record(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.lock_record(text) TO PUBLIC;

/*
 * unchanged(record_key, data): true when diff check is on for this run and
 * data hashes the same as at the last successful run; the record then
 * counts as skipped.  Otherwise the new hash is kept, to be stored if this
 * run succeeds.
 */
CREATE FUNCTION smartconnector.unchanged(record_key text, data jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	run record;
	new_hash bytea;
	old_hash bytea;
BEGIN
	SELECT * INTO run FROM smartconnector_internal.current_execution_info();
	new_hash := sha256(convert_to(data::text, 'UTF8'));
	IF run.diff_check THEN
		SELECT h.hash INTO old_hash FROM smartconnector.record_hash h
		 WHERE h.connector_id = run.connector_id AND h.record_key = $1;
		IF old_hash = new_hash THEN
			PERFORM smartconnector.record($1, 'skipped', 'unchanged since the last successful run');
			RETURN true;
		END IF;
	END IF;
	PERFORM smartconnector_internal.remember_hash($1, new_hash);
	RETURN false;
END
$$;
COMMENT ON FUNCTION smartconnector.unchanged(text, jsonb) IS
	'True (and counted as skipped) when diff check is on and the record''s data is as at the last successful run';
REVOKE ALL ON FUNCTION smartconnector.unchanged(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.unchanged(text, jsonb) TO PUBLIC;
