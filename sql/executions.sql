--
-- Executions: the SQL contract of trigger(), claim(), finish(), cancel(),
-- record(), unchanged() and the output report, driven by an external
-- runner (this session).  Handler runs by executor workers, concurrency and
-- crashes are covered by the TAP suite.
--
\set SHOW_CONTEXT never
SET smartconnector.report_url_template = 'https://reports.example.com/{api_name}/{execution_id}.csv';
SELECT smartconnector.create_connector('External', 'ext', status => 'operational',
	max_concurrent_executions => 1) AS ext_id \gset

-- trigger queues and returns an id at once
SELECT smartconnector.trigger('ext', '{"since": "2026-01-01"}') AS e1 \gset
SELECT smartconnector.trigger('ext') AS e2 \gset
SELECT state, trigger_type, initiated_by = current_user AS by_me, diff_check, dry_run, input,
       queued_at <= clock_timestamp() AS queued_at_set, started_at, ended_at
  FROM smartconnector.execution WHERE id = :e1;
SELECT smartconnector.trigger('no_such_connector');
SELECT smartconnector.trigger(NULL);
SELECT smartconnector.trigger('ext', jsonb_build_object('blob', repeat('x', 1100000)));
-- the real size counts, not the compressed one
CREATE TEMP TABLE big_input AS SELECT jsonb_build_object('blob', repeat('x', 4000000)) AS j;
SELECT pg_column_size(j) < 1048576 AS stored_compressed FROM big_input;
SELECT smartconnector.trigger('ext', j) FROM big_input;
DROP TABLE big_input;

-- claim admits the oldest, one at a time (limit 1)
SELECT smartconnector.claim('ext') = :e1 AS claimed_oldest;
SELECT smartconnector.current_execution() = :e1 AS is_current;
SELECT smartconnector.claim('ext');
SELECT state, started_at IS NOT NULL AS started, runner_pid = pg_backend_pid() AS runner_is_me
  FROM smartconnector.execution WHERE id = :e1;
SELECT smartconnector.runner_alive(:e1);

-- the run reports records; progress is visible while it runs
SELECT smartconnector.record('order-1', 'created');
SELECT smartconnector.record('order-2', 'updated', 'price changed');
SELECT smartconnector.record('order-3', 'failed', 'missing customer');
SELECT smartconnector.record('order-4', 'deleted');
SELECT smartconnector.record(NULL, 'created');
SELECT smartconnector.record(repeat('k', 1025), 'created');
SELECT records_created, records_updated, records_failed, records_total
  FROM smartconnector.execution_progress WHERE execution_id = :e1;

-- finish: some records failed, so partial_success
SELECT smartconnector.finish(:e1, metadata => '{"source_rows": 3}');
SELECT state, records_created, records_updated, records_skipped, records_failed, records_total,
       error, metadata, ended_at >= started_at AS ended_after_start
  FROM smartconnector.execution WHERE id = :e1;
SELECT * FROM smartconnector.output_report(:e1);
SELECT smartconnector.output_report_url(:e1) = 'https://reports.example.com/ext/' || :e1 || '.csv' AS url_ok;
SELECT smartconnector.finish(:e1);
SELECT smartconnector.record('late', 'created');

-- the next one fails; the connector then needs attention (and still executes)
SELECT smartconnector.claim('ext') = :e2 AS claimed_next;
SELECT smartconnector.record('order-9', 'created');
SELECT smartconnector.finish(:e2, 'source database unreachable');
SELECT state, error, records_created FROM smartconnector.execution WHERE id = :e2;
SELECT status FROM smartconnector.connector WHERE api_name = 'ext';
SELECT smartconnector.trigger('ext') AS e3 \gset
SELECT smartconnector.claim('ext') = :e3 AS need_attention_still_executes;
SELECT smartconnector.finish(:e3);
SELECT smartconnector.set_status('ext', 'operational');

-- a claim rolled back leaves the execution queued and claimable again
SELECT smartconnector.trigger('ext') AS e4 \gset
BEGIN;
SELECT smartconnector.claim('ext') = :e4 AS claimed_in_tx;
ROLLBACK;
SELECT state, smartconnector.current_execution() AS current FROM smartconnector.execution WHERE id = :e4;
SELECT smartconnector.claim('ext') = :e4 AS claimed_again;
-- finish in a rolled-back transaction ends nothing
BEGIN;
SELECT smartconnector.finish(:e4);
ROLLBACK;
SELECT state FROM smartconnector.execution WHERE id = :e4;
-- finished twice in one transaction: the second says so, and the first stands
BEGIN;
SELECT smartconnector.record('twice-1', 'created');
SELECT smartconnector.finish(:e4);
SELECT smartconnector.finish(:e4);
COMMIT;
SELECT state, records_created FROM smartconnector.execution WHERE id = :e4;

-- claim refuses other isolation levels, and connectors with a handler
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT smartconnector.claim('ext');
ROLLBACK;
CREATE FUNCTION public.exec_handler(ctx jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT smartconnector.create_connector('With handler', 'with_handler', handler => 'public.exec_handler(jsonb)') > 0 AS created;
SELECT smartconnector.claim('with_handler');

--
-- status and limit hold the queue
--
SELECT smartconnector.set_status('ext', 'inactive');
SELECT smartconnector.trigger('ext') AS e5 \gset
SELECT smartconnector.claim('ext') AS claimed_while_inactive;
SELECT smartconnector.set_status('ext', 'operational');
SELECT smartconnector.set_max_concurrent_executions('ext', 0);
SELECT smartconnector.claim('ext') AS claimed_while_paused;
SELECT smartconnector.set_max_concurrent_executions('ext', 1);
SELECT smartconnector.claim('ext') = :e5 AS claimed_after_resume;
SELECT smartconnector.finish(:e5);
-- a connector in setup queues too, and admits nothing
SELECT smartconnector.create_connector('New', 'brand_new') > 0 AS created;
SELECT smartconnector.trigger('brand_new') AS e6 \gset
SELECT smartconnector.claim('brand_new') AS claimed_in_setup;
SELECT state FROM smartconnector.execution WHERE id = :e6;

--
-- cancel
--
SELECT smartconnector.cancel(:e6);
SELECT state, ended_at IS NOT NULL AS ended, metadata ? 'cancelled_by' AS who_recorded
  FROM smartconnector.execution WHERE id = :e6;
SELECT smartconnector.cancel(:e6);
SELECT smartconnector.cancel(0);
-- every function taking an execution id says so for an unknown one (42704), none answers "nothing"
SELECT * FROM smartconnector.output_report(0);
SELECT smartconnector.output_report_url(0);
SELECT smartconnector.execution_metadata(0);
SELECT smartconnector.finish(0);
SELECT smartconnector.redeliver(0);
DO $$
DECLARE
	f text;
BEGIN
	FOREACH f IN ARRAY ARRAY['output_report', 'output_report_url', 'execution_metadata', 'finish', 'cancel'] LOOP
		BEGIN
			EXECUTE format('SELECT smartconnector.%I(0)', f);
		EXCEPTION WHEN undefined_object THEN
			RAISE NOTICE '%: 42704', f;
		END;
	END LOOP;
END $$;
-- a running external execution ends cancelled at once; its runner learns at finish
SELECT smartconnector.trigger('ext') AS e7 \gset
SELECT smartconnector.claim('ext') = :e7 AS claimed;
SELECT smartconnector.record('order-20', 'created');
SELECT smartconnector.cancel(:e7);
SELECT state, records_created, error FROM smartconnector.execution WHERE id = :e7;
SELECT smartconnector.finish(:e7);
SELECT count(*) AS report_rows_kept FROM smartconnector.output_report(:e7);
SELECT smartconnector.current_execution();

--
-- diff check: unchanged() compares with the hash of the last successful run
--
UPDATE smartconnector.connector SET diff_check = true WHERE api_name = 'ext';
SELECT smartconnector.trigger('ext') AS d1 \gset
SELECT smartconnector.claim('ext') = :d1 AS claimed;
SELECT smartconnector.unchanged('cust-1', '{"name": "Ada", "tier": 1}') AS first_run_unchanged;
SELECT smartconnector.record('cust-1', 'created');
SELECT smartconnector.finish(:d1);
SELECT smartconnector.trigger('ext') AS d2 \gset
SELECT smartconnector.claim('ext') = :d2 AS claimed;
SELECT smartconnector.unchanged('cust-1', '{"tier": 1, "name": "Ada"}') AS same_data_unchanged;
SELECT smartconnector.unchanged('cust-2', '{"name": "Bob"}') AS new_record_unchanged;
SELECT smartconnector.finish(:d2, 'failed before the end');
SELECT records_skipped FROM smartconnector.execution WHERE id = :d2;
-- the failed run did not store cust-2's hash
SELECT smartconnector.trigger('ext') AS d3 \gset
SELECT smartconnector.claim('ext') = :d3 AS claimed;
SELECT smartconnector.unchanged('cust-2', '{"name": "Bob"}') AS after_failure_unchanged;
SELECT smartconnector.unchanged('cust-1', '{"name": "Ada", "tier": 2}') AS changed_data_unchanged;
-- a key too long for the hash index is refused at once, as record() refuses it
SELECT smartconnector.unchanged(repeat('k', 1025), '{}');
SELECT smartconnector.finish(:d3);
-- disable_diff_check processes everything, and still advances the hashes
SELECT smartconnector.trigger('ext', disable_diff_check => true) AS d4 \gset
SELECT diff_check FROM smartconnector.execution WHERE id = :d4;
SELECT smartconnector.claim('ext') = :d4 AS claimed;
SELECT smartconnector.unchanged('cust-2', '{"name": "Bob"}') AS diff_check_disabled_unchanged;
SELECT smartconnector.finish(:d4);
SELECT smartconnector.unchanged('cust-2', '{}');

-- lock_record only inside a run
SELECT smartconnector.lock_record('cust-1');

-- executions cannot be written directly, and connectors with work in flight stay
SELECT smartconnector.trigger('ext') AS e8 \gset
DELETE FROM smartconnector.connector WHERE api_name = 'ext';
SELECT smartconnector.change_api_name('ext', 'external');
-- a claim by the old name warns once that it is an alias
SELECT smartconnector.claim('ext') = :e8 AS claimed_by_alias;
SELECT smartconnector.finish(:e8);
SELECT smartconnector.drop_api_name_alias('ext');
DELETE FROM smartconnector.connector WHERE api_name = 'external';
SELECT count(*) AS executions_left FROM smartconnector.execution WHERE connector_id = :ext_id;

-- a runner whose cancelled execution cleanup() deleted is not stuck
SELECT smartconnector.create_connector('Ext2', 'ext2', status => 'operational') > 0 AS created;
SELECT smartconnector.trigger('ext2') AS g1 \gset
SELECT smartconnector.claim('ext2') = :g1 AS claimed;
SELECT smartconnector.cancel(:g1);
SELECT smartconnector.cleanup(clock_timestamp()) > 0 AS history_deleted;
SELECT smartconnector.finish(:g1);
SELECT smartconnector.current_execution();
SELECT smartconnector.trigger('ext2') AS g2 \gset
SELECT smartconnector.claim('ext2') = :g2 AS claimed;
SELECT smartconnector.cancel(:g2);
SELECT smartconnector.cleanup(clock_timestamp()) > 0 AS history_deleted;
SELECT smartconnector.trigger('ext2') AS g3 \gset
SELECT smartconnector.claim('ext2') = :g3 AS claimed_after_deleted;
SELECT smartconnector.finish(:g3);

-- trigger() says why a new execution cannot start now
SELECT smartconnector.create_connector('Why', 'why', status => 'operational',
	max_concurrent_executions => 0) > 0 AS created;
SELECT smartconnector.trigger('why') > 0 AS queued_while_paused;
SELECT smartconnector.set_max_concurrent_executions('why', 1);
SELECT smartconnector.claim('why') IS NOT NULL AS claimed;
SELECT smartconnector.trigger('why') > 0 AS queued_at_the_limit;
SELECT smartconnector.finish(smartconnector.current_execution());
-- a limit above the executor pool, for a connector with a handler
SELECT smartconnector.set_max_concurrent_executions('with_handler', 50);
SELECT smartconnector.set_max_concurrent_executions('with_handler', 1);
SELECT count(smartconnector.cancel(e.id)) AS cancelled FROM smartconnector.execution e
  JOIN smartconnector.connector c ON c.id = e.connector_id WHERE c.api_name = 'why' AND e.state = 'queued';
DELETE FROM smartconnector.connector WHERE api_name = 'why';
