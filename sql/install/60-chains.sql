/*
 * Section 60: chains between connectors.
 *
 * When an execution of from_connector ends in one of on_status, an
 * execution of to_connector is queued in the same transaction
 * (40-state-machine); a chain from a dry run queues a dry
 * run.  chain() refuses cycles, and chain changes are serialised so that
 * two of them cannot close one together.
 */

CREATE TABLE smartconnector.chain (
	from_connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	to_connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	on_status smartconnector.execution_state[] NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	PRIMARY KEY (from_connector_id, to_connector_id),
	CONSTRAINT chain_not_self CHECK (from_connector_id <> to_connector_id),
	CONSTRAINT chain_on_status_check CHECK (
		cardinality(on_status) > 0 AND
		on_status <@ ARRAY['success', 'partial_success', 'failed', 'cancelled']::smartconnector.execution_state[])
);
CREATE INDEX chain_to_idx ON smartconnector.chain (to_connector_id);
COMMENT ON TABLE smartconnector.chain IS
	'When an execution of from_connector ends in one of on_status, an execution of to_connector is triggered in the same transaction';
REVOKE ALL ON smartconnector.chain FROM PUBLIC;
GRANT SELECT ON smartconnector.chain TO smartconnector_viewer;

/*
 * Trigger to_api_name whenever an execution of from_api_name ends in one of
 * on_status.  Cycles are refused.  Chaining the same pair again replaces
 * its statuses.
 */
CREATE FUNCTION smartconnector_internal.chain_impl(from_api_name text, to_api_name text,
									 on_status text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	from_id bigint := smartconnector.connector_id(from_api_name);
	to_id bigint := smartconnector.connector_id(to_api_name);
	bad text;
BEGIN
	IF on_status IS NULL OR cardinality(on_status) = 0 THEN
		RAISE EXCEPTION 'on_status must name at least one end state'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use success, partial_success, failed or cancelled.';
	END IF;
	SELECT s INTO bad FROM unnest(on_status) AS s
	 WHERE s IS NULL OR s NOT IN ('success', 'partial_success', 'failed', 'cancelled') LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'invalid chain status: "%"', coalesce(bad, 'NULL')
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use success, partial_success, failed or cancelled.';
	END IF;
	IF from_id = to_id THEN
		RAISE EXCEPTION 'cannot chain connector "%" to itself', from_api_name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	/* one chain change at a time, so two cannot close a cycle together */
	LOCK TABLE smartconnector.chain IN SHARE ROW EXCLUSIVE MODE;
	IF EXISTS (
		WITH RECURSIVE reach(id) AS (
			SELECT to_id
			UNION
			SELECT c.to_connector_id FROM smartconnector.chain c JOIN reach r ON c.from_connector_id = r.id)
		SELECT 1 FROM reach WHERE id = from_id) THEN
		RAISE EXCEPTION 'chaining "%" to "%" would create a cycle', from_api_name, to_api_name
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%L already leads back to %L.', to_api_name, from_api_name);
	END IF;
	INSERT INTO smartconnector.chain (from_connector_id, to_connector_id, on_status, created_by)
	VALUES (from_id, to_id, on_status::smartconnector.execution_state[], smartconnector.calling_role())
	ON CONFLICT (from_connector_id, to_connector_id)
	DO UPDATE SET on_status = excluded.on_status, created_by = excluded.created_by;
END
$$;
REVOKE ALL ON FUNCTION smartconnector_internal.chain_impl(text, text, text[]) FROM PUBLIC;
CREATE FUNCTION smartconnector.chain(from_api_name text, to_api_name text,
									 on_status text[] DEFAULT ARRAY['success'])
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.chain(text, text, text[]) IS
	'Trigger a connector when another''s execution ends in one of the given states (default success); no cycles';
REVOKE ALL ON FUNCTION smartconnector.chain(text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.chain(text, text, text[]) TO smartconnector_admin;

CREATE FUNCTION smartconnector.unchain(from_api_name text, to_api_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM smartconnector.chain
	 WHERE from_connector_id = smartconnector.connector_id(from_api_name)
	   AND to_connector_id = smartconnector.connector_id(to_api_name);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'connector "%" is not chained to "%"', from_api_name, to_api_name
			USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION smartconnector.unchain(text, text) IS
	'Remove a chain between two connectors';
REVOKE ALL ON FUNCTION smartconnector.unchain(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.unchain(text, text) TO smartconnector_admin;
