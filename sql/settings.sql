--
-- Settings catalog: every rule of smartconnector.connector, with good and
-- hostile input and the exact error a user sees.
--
\set SHOW_CONTEXT never
CREATE EXTENSION smartconnector;

-- a connector with every default
SELECT smartconnector.create_connector('Orders sync', 'orders') > 0 AS created;
SELECT name, api_name, description, status, max_concurrent_executions,
       notification_email, error_notification_email, execution_ended_webhook_url,
       webhook_secret, webhook_headers, diff_check, handler,
       run_as = current_user AS runs_as_creator
  FROM smartconnector.connector;

-- plain INSERT goes through the same rules
INSERT INTO smartconnector.connector (name, api_name, description)
VALUES ('Customers', 'customers', 'Copies customers from the CRM into the warehouse.');

--
-- name: non-empty, at most 200 characters, changeable
--
INSERT INTO smartconnector.connector (name, api_name) VALUES ('', 'empty_name');
INSERT INTO smartconnector.connector (name, api_name) VALUES ('   ', 'blank_name');
INSERT INTO smartconnector.connector (name, api_name) VALUES (NULL, 'null_name');
INSERT INTO smartconnector.connector (name, api_name) VALUES (repeat('n', 201), 'long_name');
INSERT INTO smartconnector.connector (name, api_name) VALUES (repeat('n', 200), 'long_name');
UPDATE smartconnector.connector SET name = 'Orders → warehouse' WHERE api_name = 'orders';
SELECT name FROM smartconnector.connector WHERE api_name = 'orders';

--
-- api_name: format, uniqueness, stability
--
SELECT smartconnector.create_connector('x', 'Orders');
SELECT smartconnector.create_connector('x', '1orders');
SELECT smartconnector.create_connector('x', 'or-ders');
SELECT smartconnector.create_connector('x', '');
SELECT smartconnector.create_connector('x', NULL);
SELECT smartconnector.create_connector('x', 'orders''; DROP TABLE smartconnector.connector; --');
SELECT smartconnector.create_connector('x', 'a' || repeat('b', 63));
SELECT smartconnector.create_connector('x', 'a' || repeat('b', 62)) > 0 AS created_63_chars;
SELECT smartconnector.create_connector('x', 'orders');
UPDATE smartconnector.connector SET api_name = 'orders_v2' WHERE api_name = 'orders';
SELECT count(*) AS still_named_orders FROM smartconnector.connector WHERE api_name = 'orders';

-- deliberate rename keeps an alias that resolves with a warning
SELECT smartconnector.change_api_name('orders', 'orders_v2');
SELECT smartconnector.connector_id('orders') = smartconnector.connector_id('orders_v2') AS alias_resolves;
SELECT smartconnector.describe('orders') ->> 'api_name' AS described_through_alias;
SELECT alias FROM smartconnector.api_name_alias;
-- an alias is not the current name, and is not free for others
SELECT smartconnector.change_api_name('orders', 'orders_v3');
SELECT smartconnector.create_connector('x', 'orders');
SELECT smartconnector.change_api_name('customers', 'orders');
SELECT smartconnector.change_api_name('customers', 'orders_v2');
SELECT smartconnector.change_api_name('nosuch', 'other');
-- renaming back to its own alias drops the alias
SELECT smartconnector.change_api_name('orders_v2', 'orders');
SELECT alias FROM smartconnector.api_name_alias ORDER BY alias;
SELECT smartconnector.drop_api_name_alias('orders_v2');
SELECT smartconnector.drop_api_name_alias('orders_v2');
SELECT smartconnector.connector_id('orders_v2');
SELECT smartconnector.connector_id('no_such_connector');

--
-- status: setup initially; users set operational or inactive
--
SELECT status FROM smartconnector.connector WHERE api_name = 'customers';
UPDATE smartconnector.connector SET status = 'paused' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET status = 'need_attention' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET status = 'operational' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET status = 'setup' WHERE api_name = 'customers';
SELECT smartconnector.set_status('customers', 'inactive');
SELECT status FROM smartconnector.connector WHERE api_name = 'customers';
SET smartconnector.internal_change = 'status';  -- superuser only, and deliberate
UPDATE smartconnector.connector SET status = 'need_attention' WHERE api_name = 'customers';
RESET smartconnector.internal_change;
SELECT status FROM smartconnector.connector WHERE api_name = 'customers';
SELECT smartconnector.set_status('customers', 'operational');

--
-- max_concurrent_executions: >= 0, default 1
--
SELECT smartconnector.set_max_concurrent_executions('customers', -1);
UPDATE smartconnector.connector SET max_concurrent_executions = NULL WHERE api_name = 'customers';
SELECT smartconnector.set_max_concurrent_executions('customers', 0);
SELECT smartconnector.set_max_concurrent_executions('customers', 8);
SELECT max_concurrent_executions FROM smartconnector.connector WHERE api_name = 'customers';

--
-- max_duration (0.2): NULL (no limit) by default, otherwise positive; audited
--
SELECT max_duration FROM smartconnector.connector WHERE api_name = 'customers';
UPDATE smartconnector.connector SET max_duration = '0 seconds' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET max_duration = '-5 minutes' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET max_duration = '90 minutes' WHERE api_name = 'customers';
SELECT max_duration, smartconnector.describe('customers') -> 'max_duration' AS described
  FROM smartconnector.connector WHERE api_name = 'customers';
SELECT column_name, old_value, new_value FROM smartconnector.settings_history
 WHERE api_name = 'customers' AND column_name = 'max_duration';
UPDATE smartconnector.connector SET max_duration = NULL WHERE api_name = 'customers';

--
-- email columns: exactly one valid address each
--
UPDATE smartconnector.connector SET notification_email = 'ops@example.com',
       error_notification_email = 'oncall+etl@alerts.example.co.uk' WHERE api_name = 'orders';
SELECT notification_email, error_notification_email FROM smartconnector.connector WHERE api_name = 'orders';
UPDATE smartconnector.connector SET notification_email = 'a@example.com, b@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET notification_email = 'a@example.com;b@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET notification_email = 'Ops Team <ops@example.com>' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET notification_email = ' ops@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET notification_email = E'ops@example.com\r\nBcc: victim@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops.example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = '' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = '@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = repeat('o', 65) || '@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@localhost' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@127.0.0.1' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@exämple.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops.@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'o..ps@example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@-example.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'ops@exa_mple.com' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = 'o[ps]@example.com' WHERE api_name = 'orders';
SELECT notification_email, error_notification_email FROM smartconnector.connector WHERE api_name = 'orders';
UPDATE smartconnector.connector SET error_notification_email = NULL WHERE api_name = 'orders';

--
-- webhook URL: absolute http(s), parsed by libcurl, no credentials
--
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://hooks.example.com/etl?source=smartconnector' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'http://[2001:db8::1]:8080/done' WHERE api_name = 'orders';
SELECT execution_ended_webhook_url FROM smartconnector.connector WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'ftp://example.com/upload' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'file:///etc/passwd' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'gopher://127.0.0.1:6379/_FLUSHALL' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'javascript:alert(1)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'example.com/hook' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://user:hunter2@example.com/hook' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://token@example.com/hook' WHERE api_name = 'orders';
-- a refused URL is never echoed: it may hold credentials
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'ftp://user:hunter2@example.com/up' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'user:hunter2@example.com/hook' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://example.com/a hook' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = E'https://example.com/hook\r\nX-Injected: 1' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://example.com/' || repeat('a', 2048) WHERE api_name = 'orders';
SELECT execution_ended_webhook_url FROM smartconnector.connector WHERE api_name = 'orders';

--
-- webhook_secret: Standard Webhooks form
--
SELECT smartconnector.generate_webhook_secret() ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS well_formed,
       smartconnector.generate_webhook_secret() <> smartconnector.generate_webhook_secret() AS random;
UPDATE smartconnector.connector SET webhook_secret = smartconnector.generate_webhook_secret() WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'my-secret-password' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'whsec_' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'whsec_not*base64!' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'whsec_' || encode('0123456789abcdef', 'base64') WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_secret = 'whsec_' || replace(encode(convert_to(repeat('k', 65), 'UTF8'), 'base64'), E'\n', '') WHERE api_name = 'orders';

--
-- webhook_headers: names and values validated, signature headers protected
--
UPDATE smartconnector.connector SET webhook_headers = '{"Authorization": "Bearer abc", "X-Api-Key": "k1"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '["Authorization: Bearer abc"]' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '"Authorization: Bearer abc"' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"X-Retries": 3}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"Content-Type": "text/plain"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"webhook-signature": "v1,forged"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"Webhook-Id": "msg_1"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"Host": "internal.example"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"User-Agent": "x"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"content-encoding": "gzip"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"Proxy-Authorization": "Basic x"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"X Api Key": "k"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"X-Api-Key:": "k"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"": "k"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"X-Api-Key": "k\r\nX-Injected: 1"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = '{"X-Key": "a", "x-key": "b"}' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = (SELECT jsonb_object_agg('X-H' || i, 'v') FROM generate_series(1, 33) i) WHERE api_name = 'orders';
UPDATE smartconnector.connector SET webhook_headers = jsonb_build_object('X-Big', repeat('v', 4097)) WHERE api_name = 'orders';
SELECT webhook_headers FROM smartconnector.connector WHERE api_name = 'orders';

--
-- handler: a routine taking one jsonb and returning void or jsonb
--
CREATE FUNCTION public.sync_orders(ctx jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE PROCEDURE public.sync_orders_proc(ctx jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION public.wrong_args(ctx json) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.two_args(ctx jsonb, extra int) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION public.wrong_result(ctx jsonb) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION public.set_result(ctx jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT ctx $$;
UPDATE smartconnector.connector SET handler = 'public.sync_orders(jsonb)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET handler = 'public.sync_orders_proc(jsonb)' WHERE api_name = 'customers';
UPDATE smartconnector.connector SET handler = 'public.wrong_args(json)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET handler = 'public.two_args(jsonb, int)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET handler = 'public.wrong_result(jsonb)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET handler = 'public.set_result(jsonb)' WHERE api_name = 'orders';
UPDATE smartconnector.connector SET handler = 'public.no_such_function(jsonb)' WHERE api_name = 'orders';
SELECT api_name, handler FROM smartconnector.connector WHERE handler IS NOT NULL ORDER BY api_name;
-- a connector whose handler was dropped cannot be activated
SELECT smartconnector.set_status('orders', 'inactive');
DROP FUNCTION public.sync_orders(jsonb);
SELECT smartconnector.set_status('orders', 'operational');
SELECT smartconnector.binding_problem(handler, handler_oid, run_as, run_as_oid, bound_in)
  FROM smartconnector.connector WHERE api_name = 'orders';
-- a NULL handler means an external runner, and is valid
UPDATE smartconnector.connector SET handler = NULL WHERE api_name = 'orders';
SELECT smartconnector.set_status('orders', 'operational');
SELECT status FROM smartconnector.connector WHERE api_name = 'orders';

--
-- diff_check
--
UPDATE smartconnector.connector SET diff_check = true WHERE api_name = 'orders';
UPDATE smartconnector.connector SET diff_check = NULL WHERE api_name = 'orders';
UPDATE smartconnector.connector SET status = NULL WHERE api_name = 'orders';
UPDATE smartconnector.connector SET description = NULL WHERE api_name = 'orders';

--
-- describe(): machine-readable, without secrets
--
SELECT jsonb_pretty(smartconnector.describe('orders') - 'created_at' - 'updated_at' - 'id' - 'run_as');
SELECT smartconnector.describe('orders')::text ~ 'whsec_|Bearer|k1' AS leaks_secret;
SELECT smartconnector.describe('nosuch');

-- the validators can be called directly
SELECT smartconnector.check_email('ops@example.com');
SELECT smartconnector.check_email('not an address');
SELECT smartconnector.check_webhook_url('https://example.com/hook');

-- deleting a connector removes its aliases
SELECT smartconnector.change_api_name('customers', 'crm_customers');
DELETE FROM smartconnector.connector WHERE api_name = 'crm_customers';
SELECT count(*) AS aliases_left FROM smartconnector.api_name_alias WHERE alias = 'customers';
