/*
 * Section 15: api names, and the settings functions that take one.
 *
 * A connector's api_name is its stable identifier: UPDATE cannot change
 * it (connector_validate), only change_api_name() can, and the old name
 * stays as an alias that resolves, with a warning, until
 * drop_api_name_alias().  connector_id() resolves a name or an alias for
 * every function that takes one; set_status(),
 * set_max_concurrent_executions() and describe() are here because they are
 * SQL functions, which need connector_id() to exist when they are created.
 */

/*
 * Old api_names kept by change_api_name(), so callers and schedules that
 * still use them keep working (with a warning).  Written only by the
 * extension's functions.
 */
CREATE TABLE smartconnector.api_name_alias (
	alias text PRIMARY KEY,
	connector_id bigint NOT NULL
		REFERENCES smartconnector.connector (id) ON DELETE CASCADE,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by name NOT NULL,
	CONSTRAINT api_name_alias_alias_check
		CHECK (smartconnector_internal.api_name_valid(alias))
);
CREATE INDEX api_name_alias_connector_id_idx
	ON smartconnector.api_name_alias (connector_id);
COMMENT ON TABLE smartconnector.api_name_alias IS
	'Former api_names that still resolve to their connector, until smartconnector.drop_api_name_alias()';
REVOKE ALL ON smartconnector.api_name_alias FROM PUBLIC;
GRANT SELECT ON smartconnector.api_name_alias TO smartconnector_viewer;

/*
 * The id of the connector called api_name, following aliases (with a
 * warning, so callers learn the new name).  Unknown names are an error.
 */
CREATE FUNCTION smartconnector.connector_id(api_name text)
RETURNS bigint
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	result bigint;
	current_name text;
BEGIN
	IF $1 IS NULL THEN
		RAISE EXCEPTION 'api_name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT c.id INTO result FROM smartconnector.connector c WHERE c.api_name = $1;
	IF FOUND THEN
		RETURN result;
	END IF;
	SELECT c.id, c.api_name INTO result, current_name
	  FROM smartconnector.api_name_alias a
	  JOIN smartconnector.connector c ON c.id = a.connector_id
	 WHERE a.alias = $1;
	IF FOUND THEN
		RAISE WARNING 'connector api_name "%" is an alias of "%"', $1, current_name
			USING HINT = format('Use %L; the alias works until smartconnector.drop_api_name_alias(%L).',
								current_name, $1);
		RETURN result;
	END IF;
	RAISE EXCEPTION 'connector "%" does not exist', $1
		USING ERRCODE = 'undefined_object';
END
$$;
COMMENT ON FUNCTION smartconnector.connector_id(text) IS
	'Id of the connector with this api_name or alias (warns on aliases); error if unknown';
REVOKE ALL ON FUNCTION smartconnector.connector_id(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.connector_id(text) TO smartconnector_viewer;

/* Set status by api_name (or alias), with the caller's privileges. */
CREATE FUNCTION smartconnector.set_status(api_name text, status smartconnector.connector_status)
RETURNS void
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE smartconnector.connector SET status = $2
	 WHERE id = smartconnector.connector_id($1)
$$;
COMMENT ON FUNCTION smartconnector.set_status(text, smartconnector.connector_status) IS
	'Set a connector''s status: operational or inactive (operators and admins)';
REVOKE ALL ON FUNCTION smartconnector.set_status(text, smartconnector.connector_status) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.set_status(text, smartconnector.connector_status)
	TO smartconnector_operator;

/* Set max_concurrent_executions by api_name (or alias). */
CREATE FUNCTION smartconnector.set_max_concurrent_executions(api_name text, max_concurrent_executions integer)
RETURNS void
LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
	UPDATE smartconnector.connector SET max_concurrent_executions = $2
	 WHERE id = smartconnector.connector_id($1)
$$;
COMMENT ON FUNCTION smartconnector.set_max_concurrent_executions(text, integer) IS
	'Set how many executions of a connector may run at once; 0 pauses (operators and admins)';
REVOKE ALL ON FUNCTION smartconnector.set_max_concurrent_executions(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.set_max_concurrent_executions(text, integer)
	TO smartconnector_operator;

/*
 * Rename a connector's api_name deliberately.  The old name becomes an alias
 * that keeps resolving (with a warning) until drop_api_name_alias().
 * Renaming back to one of the connector's own aliases drops that alias.
 */
CREATE FUNCTION smartconnector_internal.change_api_name_impl(old_api_name text, new_api_name text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	target smartconnector.connector%ROWTYPE;
	alias_owner text;
BEGIN
	SELECT * INTO target FROM smartconnector.connector WHERE api_name = old_api_name FOR UPDATE;
	IF NOT FOUND THEN
		SELECT c.api_name INTO alias_owner
		  FROM smartconnector.api_name_alias a
		  JOIN smartconnector.connector c ON c.id = a.connector_id
		 WHERE a.alias = old_api_name;
		IF FOUND THEN
			RAISE EXCEPTION '"%" is an alias, not the current api_name', old_api_name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = format('The current api_name is %L.', alias_owner);
		END IF;
		RAISE EXCEPTION 'connector "%" does not exist', old_api_name
			USING ERRCODE = 'undefined_object';
	END IF;
	IF new_api_name = old_api_name THEN
		RETURN;
	END IF;

	/* serialise renames that involve the same names */
	PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('smartconnector.api_name'),
											 pg_catalog.hashtext(new_api_name));

	DELETE FROM smartconnector.api_name_alias
	 WHERE alias = new_api_name AND connector_id = target.id;
	INSERT INTO smartconnector.api_name_alias (alias, connector_id, created_by)
	VALUES (old_api_name, target.id, smartconnector.calling_role());

	PERFORM pg_catalog.set_config('smartconnector.internal_change', 'api_name', true);
	UPDATE smartconnector.connector SET api_name = new_api_name WHERE id = target.id;
	PERFORM pg_catalog.set_config('smartconnector.internal_change', '', true);

	IF EXISTS (SELECT 1 FROM smartconnector.schedules() s WHERE s.connector_id = target.id) THEN
		RAISE WARNING 'connector "%" has a schedule', old_api_name
			USING DETAIL = 'The schedule runs by connector id and keeps working under the new name.';
	END IF;
	IF EXISTS (SELECT 1 FROM smartconnector.execution e WHERE e.connector_id = target.id) THEN
		RAISE WARNING 'connector "%" has executions recorded under its old api_name', old_api_name
			USING DETAIL = 'Completion webhooks and reports name the connector by its new api_name from now on.',
				  HINT = format('Callers and schedules that use %L keep working through the alias; move them to %L, then drop the alias.',
								old_api_name, new_api_name);
	END IF;

	RAISE NOTICE 'connector "%" renamed to "%"', old_api_name, new_api_name
		USING DETAIL = format('%L remains usable as an alias until smartconnector.drop_api_name_alias(%L).',
							  old_api_name, old_api_name);
END
$$;
REVOKE ALL ON FUNCTION smartconnector_internal.change_api_name_impl(text, text) FROM PUBLIC;
CREATE FUNCTION smartconnector.change_api_name(old_api_name text, new_api_name text)
RETURNS void
LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.change_api_name(text, text) IS
	'Rename a connector''s api_name deliberately, keeping the old name as an alias (admins)';
REVOKE ALL ON FUNCTION smartconnector.change_api_name(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.change_api_name(text, text) TO smartconnector_admin;

/* Stop an old api_name from resolving. */
CREATE FUNCTION smartconnector.drop_api_name_alias(alias text)
RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM smartconnector.api_name_alias a WHERE a.alias = $1;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'api_name alias "%" does not exist', $1
			USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION smartconnector.drop_api_name_alias(text) IS
	'Drop an api_name alias left by change_api_name() (admins)';
REVOKE ALL ON FUNCTION smartconnector.drop_api_name_alias(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.drop_api_name_alias(text) TO smartconnector_admin;

/*
 * Settings and description as jsonb, without secrets: for AI tools and
 * scripts.  Readable by viewers.
 */
/* describe() gives max_duration in ISO 8601 ("PT1H30M"), whatever the session's IntervalStyle */
CREATE FUNCTION smartconnector.describe(api_name text)
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
		'executable', smartconnector_internal.status_executable(c.status),
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
COMMENT ON FUNCTION smartconnector.describe(text) IS
	'Machine-readable settings and description of one connector, without secrets';
REVOKE ALL ON FUNCTION smartconnector.describe(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION smartconnector.describe(text) TO smartconnector_viewer;
