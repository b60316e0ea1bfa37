-- smartconnector demo: what a psql session with the extension looks like.
\pset footer off
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE EXTENSION smartconnector;
CREATE EXTENSION pg_cron;     -- for schedules (optional)

-- An admin role, the way a team would set one up.
CREATE ROLE etl_admin LOGIN IN ROLE smartconnector_admin;
SET ROLE etl_admin;

-- Connectors are rows in a catalog table; create one with named settings...
SELECT smartconnector.create_connector(
	name => 'Orders → warehouse',
	api_name => 'orders_to_warehouse',
	description => 'Copies new and changed orders from the shop database into the warehouse.',
	max_concurrent_executions => 2,
	notification_email => 'etl-team@example.com',
	error_notification_email => 'oncall@example.com',
	execution_ended_webhook_url => 'https://hooks.example.com/etl/orders',
	webhook_secret => smartconnector.generate_webhook_secret(),
	webhook_headers => '{"X-Api-Key": "demo-key"}') AS connector_id;

-- ...or with plain SQL: the database enforces the same rules.
INSERT INTO smartconnector.connector (name, api_name) VALUES ('Customers', 'customers');

-- Bad input gets a clear error (this script keeps going past them).
\set ON_ERROR_STOP off
UPDATE smartconnector.connector SET notification_email = 'a@example.com, b@example.com' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'file:///etc/passwd' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET api_name = 'clients' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET status = 'need_attention' WHERE api_name = 'customers';
\set ON_ERROR_STOP on

-- Renaming the api_name is deliberate, and the old name keeps working.
SELECT smartconnector.change_api_name('customers', 'crm_customers');
SELECT smartconnector.set_status('customers', 'operational');

-- Operators look at the settings in psql...
SELECT api_name, name, status, max_concurrent_executions AS max_conc,
       notification_email, execution_ended_webhook_url
  FROM smartconnector.connector ORDER BY id;

-- ...AI tools and scripts read a machine-readable description without secrets.
SELECT jsonb_pretty(smartconnector.describe('orders_to_warehouse'));

-- Every change is audited, with secrets masked.
SELECT changed_by, action, api_name, column_name, old_value, left(new_value, 48) AS new_value
  FROM smartconnector.settings_history ORDER BY id;

-- ======================================================================
-- Executions: a queue admitted under a concurrency limit
-- ======================================================================
RESET ROLE;
-- A handler: any function taking one jsonb. This one "loads" three records.
CREATE FUNCTION public.load_orders(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	IF ctx -> 'input' ? 'shop_down' THEN
		PERFORM smartconnector.record('order-1', 'failed', 'connection refused');
		RAISE EXCEPTION 'could not read orders: the shop database refused the connection'
			USING HINT = 'Check that shop-db is up.';
	END IF;
	FOR i IN 1 .. 3 LOOP
		PERFORM smartconnector.record(format('order-%s-%s', ctx ->> 'execution_id', i),
		                              CASE WHEN i = 3 THEN 'updated' ELSE 'created' END);
	END LOOP;
	PERFORM pg_sleep(0.3);   -- the "work"
	RETURN jsonb_build_object('source', 'shop', 'batch', ctx -> 'input' -> 'batch');
END $$;
GRANT EXECUTE ON FUNCTION public.load_orders(jsonb) TO etl_admin;
SET ROLE etl_admin;
UPDATE smartconnector.connector
   SET handler = 'public.load_orders(jsonb)', status = 'operational'
 WHERE api_name = 'orders_to_warehouse';

-- Completion events go to the local receiver (started by demo/run) and by email to the
-- local SMTP server: the connector's addresses and the initiating role's own.
UPDATE smartconnector.connector SET execution_ended_webhook_url = :'webhook_url'
 WHERE api_name = 'orders_to_warehouse';
INSERT INTO smartconnector.user_email VALUES ('etl_admin', 'etl-admin@example.com');

-- Six triggers return at once; at most max_concurrent_executions = 2 run at a time.
SELECT smartconnector.trigger('orders_to_warehouse', jsonb_build_object('batch', n)) AS execution_id
  FROM generate_series(1, 6) AS n;

CREATE FUNCTION pg_temp.wait_for(condition text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE done boolean := false;
BEGIN
	WHILE NOT done LOOP
		EXECUTE condition INTO done;
		IF NOT done THEN PERFORM pg_sleep(0.02); END IF;
	END LOOP;
END $$;
SELECT pg_temp.wait_for($$SELECT (SELECT count(*) = 2 FROM smartconnector.execution_progress
                                  WHERE records_total = 3)
                             OR (SELECT count(*) > 0 FROM smartconnector.execution
                                  WHERE state NOT IN ('queued', 'running'))$$);
SELECT id, state, trigger_type, initiated_by FROM smartconnector.execution ORDER BY id;
-- Progress of the running ones, live from shared memory:
SELECT execution_id, api_name, records_created, records_updated, records_total
  FROM smartconnector.execution_progress ORDER BY execution_id;

SELECT pg_temp.wait_for($$SELECT count(*) = 6 FROM smartconnector.execution WHERE state NOT IN ('queued', 'running')$$);
SELECT id, state, records_created AS created, records_updated AS updated,
       to_char(started_at, 'HH24:MI:SS.MS') AS started, to_char(ended_at, 'HH24:MI:SS.MS') AS ended,
       metadata
  FROM smartconnector.execution ORDER BY id;
-- The most that ever ran at once:
SELECT max(overlap) AS max_running_at_once FROM (
	SELECT (SELECT count(*) FROM smartconnector.execution y
	         WHERE y.started_at <= x.started_at AND y.ended_at > x.started_at) AS overlap
	  FROM smartconnector.execution x) s;
SELECT * FROM smartconnector.output_report(1);

-- Every completion queued its webhook and emails in the same transaction (outbox);
-- the dispatcher was woken at commit and sent them.
SELECT pg_temp.wait_for($$SELECT count(*) = 18 FROM smartconnector.delivery WHERE state <> 'pending'$$);
SELECT execution_id, channel, target, reason, state, attempts, last_status,
       round(latency_ms::numeric, 1) AS latency_ms
  FROM smartconnector.delivery ORDER BY execution_id, channel, target LIMIT 6;
SELECT channel, count(*), count(*) FILTER (WHERE state = 'delivered') AS delivered,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1) AS median_latency_ms
  FROM smartconnector.delivery GROUP BY channel;

-- ======================================================================
-- A failure: the run fails, the connector needs attention, on-call is told
-- ======================================================================
SELECT smartconnector.trigger('orders_to_warehouse', '{"shop_down": true}') AS failed_id \gset
SELECT pg_temp.wait_for(format($$SELECT count(*) = 4 FROM smartconnector.delivery
                                 WHERE execution_id = %s AND state <> 'pending'$$, :failed_id));
SELECT id, state, records_failed, error FROM smartconnector.execution WHERE id = :failed_id;
SELECT * FROM smartconnector.output_report(:failed_id);
-- A failure moves an operational connector to "Operational - Needs Attention" (it still runs).
SELECT status FROM smartconnector.connector WHERE api_name = 'orders_to_warehouse';
-- The webhook says "failed"; the error address is emailed as well as the others.
SELECT channel, target, reason, state, last_status
  FROM smartconnector.delivery WHERE execution_id = :failed_id ORDER BY channel, target;
-- Once the cause is fixed, an operator sets it back.
SELECT smartconnector.set_status('orders_to_warehouse', 'operational');

-- ======================================================================
-- Schedules, chaining and the overview
-- ======================================================================
-- A nightly schedule is a pg_cron job that survives renames; the overview shows the next run.
SELECT smartconnector.schedule('orders_to_warehouse', '0 3 * * *') > 0 AS scheduled;
-- When the customers sync succeeds, the orders sync runs next (in the same transaction).
SELECT smartconnector.chain('crm_customers', 'orders_to_warehouse');
\x on
SELECT * FROM smartconnector.overview WHERE api_name = 'orders_to_warehouse';
\x off
SELECT id, api_name, state, trigger_type, waited, took, created, updated, total
  FROM smartconnector.recent_executions LIMIT 3;
