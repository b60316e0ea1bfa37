--
-- Administration: schedules (without pg_cron here), chaining, the overview
-- and recent-executions views, user emails, history cleanup, cron_next().
-- Schedules that fire under a real pg_cron are covered by the TAP suite.
--
\set SHOW_CONTEXT never

-- without pg_cron, schedule() says what is missing
SELECT smartconnector.create_connector('Extract', 'extract', status => 'operational') > 0 AS created;
SELECT smartconnector.schedule('extract', '0 3 * * *');
SELECT smartconnector.unschedule('extract');
SELECT count(*) AS schedules FROM smartconnector.schedules();

-- chaining: extract -> transform -> load, no cycles
SELECT smartconnector.create_connector('Transform', 'transform', status => 'operational') > 0 AS created;
SELECT smartconnector.create_connector('Load', 'load', status => 'operational') > 0 AS created;
SELECT smartconnector.chain('extract', 'transform');
SELECT smartconnector.chain('transform', 'load', ARRAY['success', 'partial_success']);
SELECT smartconnector.chain('load', 'extract');
SELECT smartconnector.chain('load', 'transform', ARRAY['failed']);
SELECT smartconnector.chain('extract', 'extract');
SELECT smartconnector.chain('extract', 'load', ARRAY['done']);
SELECT smartconnector.chain('extract', 'load', ARRAY[]::text[]);
SELECT smartconnector.chain('extract', 'nosuch');
SELECT f.api_name AS "from", t.api_name AS "to", ch.on_status
  FROM smartconnector.chain ch
  JOIN smartconnector.connector f ON f.id = ch.from_connector_id
  JOIN smartconnector.connector t ON t.id = ch.to_connector_id ORDER BY 1, 2;

-- a successful extract queues transform in the same transaction, with the event as input
CREATE ROLE regress_scheduler IN ROLE smartconnector_operator;
SET ROLE regress_scheduler;
SELECT smartconnector.trigger('extract') AS x1 \gset
SELECT smartconnector.claim('extract') = :x1 AS claimed;
BEGIN;
SELECT smartconnector.finish(:x1);
SELECT c.api_name, e.state, e.trigger_type, e.initiated_by,
       e.input -> 'chained_from' ->> 'execution_id' = :'x1' AS input_names_the_source,
       e.input -> 'chained_from' ->> 'status' AS source_status
  FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id
 WHERE e.trigger_type = 'chain';
COMMIT;
RESET ROLE;
-- a dry run chains dry runs: a rehearsal has no real effects downstream either
SET ROLE regress_scheduler;
SELECT smartconnector.trigger('extract', dry_run => true) AS x0 \gset
SELECT smartconnector.claim('extract') = :x0 AS claimed;
SELECT smartconnector.finish(:x0);
RESET ROLE;
SELECT c.api_name, e.dry_run, e.input -> 'chained_from' ->> 'dry_run' AS source_dry_run
  FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id
 WHERE e.trigger_type = 'chain' ORDER BY e.id;
-- a failed extract chains nothing
SELECT smartconnector.trigger('extract') AS x2 \gset
SELECT smartconnector.claim('extract') = :x2 AS claimed;
SELECT smartconnector.finish(:x2, 'source down');
SELECT count(*) AS chained_executions FROM smartconnector.execution WHERE trigger_type = 'chain';
SELECT smartconnector.unchain('extract', 'transform');
SELECT smartconnector.unchain('extract', 'transform');
SELECT smartconnector.set_status('extract', 'operational');

-- the overview and recent executions
SELECT smartconnector.trigger('load') AS l1 \gset
SELECT api_name, name, status, max_concurrent, queued, running, last_state, failures_24h, schedule, next_run
  FROM smartconnector.overview WHERE api_name IN ('extract', 'transform', 'load');
-- what the oldest queued execution waits for, and failed deliveries
SELECT api_name, queued, waiting_for, failed_deliveries, last_delivery_error
  FROM smartconnector.overview WHERE api_name IN ('extract', 'transform', 'load');
SELECT smartconnector.set_max_concurrent_executions('load', 0);
SELECT api_name, queued, waiting_for FROM smartconnector.overview WHERE api_name = 'load';
SELECT smartconnector.set_max_concurrent_executions('load', 1);
SELECT id = :x2 AS newest_is_x2, api_name, state, trigger_type, waited >= '0'::interval AS waited,
       took >= '0'::interval AS took, created, failed, total, error
  FROM smartconnector.recent_executions LIMIT 1 OFFSET 1;

-- user emails: your own, or anyone's as an admin
CREATE ROLE regress_mailer;
CREATE ROLE regress_mail_admin IN ROLE smartconnector_admin;
SET ROLE regress_mailer;
SELECT smartconnector.set_user_email('mailer@example.com');
SELECT smartconnector.set_user_email('x@example.com', 'regress_scheduler');
SELECT smartconnector.set_user_email('not an address');
RESET ROLE;
SET ROLE regress_mail_admin;
SELECT smartconnector.set_user_email('sched@example.com', 'regress_scheduler');
SELECT smartconnector.set_user_email('a@example.com', 'regress_no_such_role');
RESET ROLE;
SELECT role_name, email FROM smartconnector.user_email WHERE role_name LIKE 'regress\_%' ORDER BY 1;
SET ROLE regress_mailer;
SELECT smartconnector.set_user_email(NULL);
RESET ROLE;
SELECT count(*) AS mailer_rows FROM smartconnector.user_email WHERE role_name = 'regress_mailer';

-- history retention: cleanup deletes ended executions (and their deliveries), keeps the rest
SHOW smartconnector.history_retention;
SELECT smartconnector.retention_cutoff() < now() - interval '29 days' AS cutoff_is_30_days_ago;
SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) AS in_flight,
       count(*) FILTER (WHERE state NOT IN ('queued', 'running')) AS ended
  FROM smartconnector.execution;
SELECT smartconnector.cleanup(now() - interval '1 day');
SELECT smartconnector.cleanup(clock_timestamp(), 2);
SELECT smartconnector.cleanup(clock_timestamp());
SELECT count(*) FILTER (WHERE state IN ('queued', 'running')) AS in_flight,
       count(*) FILTER (WHERE state NOT IN ('queued', 'running')) AS ended
  FROM smartconnector.execution;
SELECT count(*) AS orphan_deliveries FROM smartconnector.delivery d
 WHERE NOT EXISTS (SELECT 1 FROM smartconnector.execution e WHERE e.id = d.execution_id);

-- when a cron schedule fires next (UTC)
SELECT s, to_char(smartconnector.cron_next(s, '2026-11-29 21:59:30+00') AT TIME ZONE 'UTC',
                  'Dy YYYY-MM-DD HH24:MI') AS next_utc
  FROM unnest(ARRAY['* * * * *', '0 3 * * *', '*/15 * * * *', '30 2 * * mon-fri',
                    '0 0 1 jan *', '0 12 13 * 5', '5,35 9-17/4 * * *', '0 0 29 2 *',
                    '10 seconds', 'nonsense', '61 * * * *']) AS s;

-- a role that may create objects in a schema on someone's search_path cannot
-- make the rules the overview (run as its reader) and the api_name check (as
-- the writer) evaluate run its code: their operators were bound at install
CREATE ROLE regress_mallory;
CREATE SCHEMA regress_mal AUTHORIZATION regress_mallory;
SET ROLE regress_mallory;
CREATE FUNCTION regress_mal.status_eq(a smartconnector.connector_status, b smartconnector.connector_status)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	RAISE WARNING 'regress_mallory''s = ran as %', current_user;
	RETURN a::text = b::text;
END $$;
CREATE OPERATOR regress_mal.= (LEFTARG = smartconnector.connector_status,
	RIGHTARG = smartconnector.connector_status, FUNCTION = regress_mal.status_eq);
CREATE FUNCTION regress_mal.text_match(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	RAISE WARNING 'regress_mallory''s ~ ran as %', current_user;
	RETURN pg_catalog.textregexeq(a, b);
END $$;
CREATE OPERATOR regress_mal.~ (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_mal.text_match);
RESET ROLE;
SET client_min_messages = warning;
SELECT smartconnector.create_connector('Target', 'mal_target') > 0 AS created;
SELECT smartconnector.trigger('mal_target') AS mal_queued \gset
SET search_path = regress_mal, pg_catalog;
SELECT api_name, waiting_for FROM smartconnector.overview WHERE api_name = 'mal_target';
UPDATE smartconnector.connector SET name = 'Target (renamed)' WHERE api_name = 'mal_target';
RESET search_path;
SELECT smartconnector.cancel(:mal_queued);
DELETE FROM smartconnector.connector WHERE api_name = 'mal_target';
RESET client_min_messages;
DROP SCHEMA regress_mal CASCADE;
DROP ROLE regress_mallory;
