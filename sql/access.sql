--
-- Access: admin > operator > viewer; secrets never readable by viewers;
-- operators change only status and limit; no privilege escalation through
-- handlers; SECURITY DEFINER functions pin search_path.
--
\set SHOW_CONTEXT never
CREATE ROLE regress_admin LOGIN IN ROLE smartconnector_admin;
CREATE ROLE regress_operator LOGIN IN ROLE smartconnector_operator;
CREATE ROLE regress_viewer LOGIN IN ROLE smartconnector_viewer;
CREATE ROLE regress_nobody LOGIN;
CREATE ROLE regress_etl LOGIN;
CREATE ROLE regress_super SUPERUSER NOLOGIN;

SELECT smartconnector.create_connector('Invoices', 'invoices',
	webhook_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	webhook_headers => '{"X-Api-Key": "top-secret"}',
	execution_ended_webhook_url => 'https://hooks.example.com/invoices',
	run_as => 'regress_super') > 0 AS created;

-- the roles exist and nest
SELECT r.rolname, r.rolcanlogin,
       pg_has_role(r.rolname, 'smartconnector_viewer', 'MEMBER') AS is_viewer,
       pg_has_role(r.rolname, 'smartconnector_operator', 'MEMBER') AS is_operator
  FROM pg_roles r WHERE r.rolname LIKE 'smartconnector\_%' ORDER BY 1;

--
-- viewer: reads settings, never secrets
--
SET ROLE regress_viewer;
SELECT api_name, status, execution_ended_webhook_url FROM smartconnector.connector;
SELECT webhook_secret FROM smartconnector.connector;
SELECT webhook_headers FROM smartconnector.connector;
SELECT * FROM smartconnector.connector;
-- the same hint for a whole-row reference, in a function body, and through a join
SELECT c FROM smartconnector.connector c;
DO $$ BEGIN PERFORM * FROM smartconnector.connector; END $$;
SELECT a.alias, c.webhook_secret FROM smartconnector.api_name_alias a
  JOIN smartconnector.connector c ON c.id = a.connector_id;
SELECT smartconnector.describe('invoices') ->> 'webhook_signed' AS signed,
       smartconnector.describe('invoices') -> 'webhook_header_names' AS header_names;
SELECT count(*) > 0 AS sees_history FROM smartconnector.settings_history;
SELECT count(*) AS history_rows_with_secrets FROM smartconnector.settings_history
 WHERE coalesce(old_value, '') || coalesce(new_value, '') ~ 'whsec_|top-secret';
UPDATE smartconnector.connector SET status = 'inactive';
SELECT smartconnector.set_status('invoices', 'inactive');
SELECT smartconnector.generate_webhook_secret() IS NOT NULL AS can_generate;
RESET ROLE;

--
-- operator: status and max_concurrent_executions only
--
SET ROLE regress_operator;
SELECT smartconnector.set_status('invoices', 'operational');
SELECT smartconnector.set_max_concurrent_executions('invoices', 4);
UPDATE smartconnector.connector SET status = 'inactive', max_concurrent_executions = 2 WHERE api_name = 'invoices';
UPDATE smartconnector.connector SET name = 'Renamed' WHERE api_name = 'invoices';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://evil.example.com/' WHERE api_name = 'invoices';
INSERT INTO smartconnector.connector (name, api_name) VALUES ('Mine', 'mine');
DELETE FROM smartconnector.connector;
SELECT smartconnector.change_api_name('invoices', 'bills');
SELECT smartconnector.create_connector('Mine', 'mine');
SELECT webhook_secret FROM smartconnector.connector;
SET smartconnector.internal_change = 'status';
-- operators may not set the timeout: it decides over the runners' sessions
UPDATE smartconnector.connector SET max_duration = '1 second' WHERE api_name = 'invoices';
-- operators trigger and cancel; initiated_by names them
SELECT smartconnector.trigger('invoices') AS op_exec \gset
SELECT initiated_by FROM smartconnector.execution WHERE id = :op_exec;
SELECT smartconnector.cancel(:op_exec);
RESET ROLE;
SET ROLE regress_viewer;
SELECT smartconnector.trigger('invoices');
SELECT smartconnector.cancel(:op_exec);
SELECT state FROM smartconnector.execution WHERE id = :op_exec;
INSERT INTO smartconnector.execution (connector_id, trigger_type, initiated_by, diff_check) VALUES (1, 'api', 'x', false);
RESET ROLE;
SELECT status, max_concurrent_executions FROM smartconnector.connector WHERE api_name = 'invoices';

--
-- admin: everything, but handlers run only as roles the admin belongs to
--
CREATE FUNCTION public.regress_handler(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
GRANT EXECUTE ON FUNCTION public.regress_handler(jsonb) TO PUBLIC;
SET ROLE regress_admin;
SELECT webhook_secret IS NOT NULL AS admin_reads_secret, webhook_headers FROM smartconnector.connector WHERE api_name = 'invoices';
SELECT smartconnector.create_connector('Admin''s', 'admins', handler => 'public.regress_handler(jsonb)') > 0 AS created;
SELECT run_as FROM smartconnector.connector WHERE api_name = 'admins';
SELECT smartconnector.create_connector('Escalate', 'escalate', handler => 'public.regress_handler(jsonb)', run_as => 'regress_etl');
SELECT smartconnector.create_connector('Escalate', 'escalate', handler => 'public.regress_handler(jsonb)', run_as => 'regress_super');
UPDATE smartconnector.connector SET run_as = 'regress_etl' WHERE api_name = 'admins';
-- invoices runs as a superuser role: the admin may not attach a handler to it
UPDATE smartconnector.connector SET handler = 'public.regress_handler(jsonb)' WHERE api_name = 'invoices';
INSERT INTO smartconnector.connector (name, api_name, status) VALUES ('Restored?', 'restored', 'need_attention');
SELECT smartconnector.change_api_name('admins', 'admins_v2');
SELECT smartconnector.drop_api_name_alias('admins');
DELETE FROM smartconnector.connector WHERE api_name = 'admins_v2';
RESET ROLE;

-- once regress_admin is a member of regress_etl it may use it
GRANT regress_etl TO regress_admin;
SET ROLE regress_admin;
SELECT smartconnector.create_connector('ETL', 'etl_job', handler => 'public.regress_handler(jsonb)', run_as => 'regress_etl') > 0 AS created;
RESET ROLE;
-- run_as must be able to execute the handler
REVOKE EXECUTE ON FUNCTION public.regress_handler(jsonb) FROM PUBLIC;
SELECT smartconnector.set_status('etl_job', 'operational');

--
-- strangers see nothing
--
SET ROLE regress_nobody;
SELECT count(*) FROM smartconnector.connector;
SELECT smartconnector.describe('invoices');
SELECT smartconnector.check_email('a@example.com');
RESET ROLE;

--
-- every SECURITY DEFINER function pins search_path and is not executable by
-- PUBLIC, except unchanged() (handlers run as any role; it acts only on the
-- calling session's own execution) and set_user_email() (every role sets its
-- own address; only admins set others')
--
SELECT p.oid::regprocedure AS unpinned
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'smartconnector'
 WHERE p.prosecdef AND NOT coalesce(p.proconfig::text[] && ARRAY['search_path=pg_catalog, pg_temp'], false);
SELECT p.oid::regprocedure AS public_executable
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'smartconnector'
 WHERE p.prosecdef AND has_function_privilege('public', p.oid, 'EXECUTE')
   AND p.oid NOT IN ('smartconnector.unchanged(text, jsonb)'::regprocedure,
                     'smartconnector.set_user_email(text, name)'::regprocedure);
-- every entry point is a SECURITY INVOKER sc_entry whose implementation is
-- SECURITY DEFINER, pinned, and executable only by the extension's owner
SELECT p.proname, p.prosecdef AS entry_definer, i.prosecdef AS impl_definer,
       i.proconfig AS impl_config,
       has_function_privilege('smartconnector_admin', i.oid, 'EXECUTE') AS impl_executable_by_admins
  FROM pg_proc p
  JOIN pg_proc i ON i.proname = p.proname || '_impl'
                AND i.pronamespace = 'smartconnector_internal'::regnamespace
                AND i.proargtypes = p.proargtypes
 WHERE p.prosrc = 'sc_entry'
 ORDER BY 1;
--
-- The API surface: smartconnector holds the public API only, each object
-- with a COMMENT; the internals are in smartconnector_internal, which no
-- role but the owner may use.
--
SELECT p.oid::regprocedure AS api_function
  FROM pg_proc p WHERE p.pronamespace = 'smartconnector'::regnamespace
 ORDER BY p.oid::regprocedure::text;
SELECT 'function' AS kind, p.oid::regprocedure::text AS uncommented
  FROM pg_proc p
 WHERE p.pronamespace = 'smartconnector'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'relation', c.oid::regclass::text
  FROM pg_class c
 WHERE c.relnamespace = 'smartconnector'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p')
   AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT 'type', t.oid::regtype::text
  FROM pg_type t
 WHERE t.typnamespace = 'smartconnector'::regnamespace AND t.typtype IN ('e', 'd', 'c')
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND obj_description(t.oid, 'pg_type') IS NULL
ORDER BY 1, 2;
SELECT r.rolname, has_schema_privilege(r.oid, 'smartconnector_internal', 'USAGE') AS internal_usage
  FROM pg_roles r
 WHERE r.rolname IN ('smartconnector_viewer', 'smartconnector_operator', 'smartconnector_admin',
                     'regress_nobody', 'regress_operator')
 ORDER BY 1;
SELECT has_schema_privilege('public', 'smartconnector_internal', 'USAGE') AS public_internal_usage,
       has_schema_privilege('public', 'smartconnector_internal', 'CREATE') AS public_internal_create;
-- what PUBLIC may execute, all of it (a function added by an upgrade script
-- without a REVOKE shows up here)
SELECT p.oid::regprocedure AS public_function
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'smartconnector'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY p.oid::regprocedure::text;
-- no internal function (one without a COMMENT: admission locks, wakeups,
-- the transitions' wrappers, e.g. enqueue()) is executable by PUBLIC, so
-- neither a handler nor a runner can reach it
SELECT p.oid::regprocedure AS internal_public_executable
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'smartconnector'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE')
   AND obj_description(p.oid, 'pg_proc') IS NULL
 ORDER BY 1;
-- e.g. a runner cannot queue past trigger()'s checks or as another role, cancel
-- past cancel()'s, nor a session take admission locks or wake workers
SET ROLE regress_nobody;
SELECT smartconnector_internal.enqueue(1, NULL, false, false, 'api', 'postgres');
SELECT smartconnector_internal.cancel_impl(1);
SELECT smartconnector_internal.lock_admissions(1);
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.require_execution(1);
-- nor reach the queue heads (0.2): drop a head to starve a connector, lock out
-- enqueues, or probe what may run
DELETE FROM smartconnector_internal.queue_head;
SELECT smartconnector_internal.may_run(c) FROM smartconnector.connector c;
SET ROLE regress_operator;
DELETE FROM smartconnector_internal.queue_head;
SELECT smartconnector_internal.enqueue(1, NULL, false, false, 'api', 'postgres');
RESET ROLE;
SELECT count(*) AS public_table_grants
  FROM information_schema.role_table_grants
 WHERE table_schema = 'smartconnector' AND grantee = 'PUBLIC';

DROP ROLE regress_nobody, regress_viewer, regress_operator;
DELETE FROM smartconnector.connector WHERE api_name = 'invoices';
DROP ROLE regress_super;
