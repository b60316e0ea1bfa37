--
-- Completion dispatch, the SQL side: the outbox rows a completion queues,
-- the event payload (execution_metadata), recipients, and their errors.
-- Sending is covered by the TAP suite against real receivers.
--
\set SHOW_CONTEXT never
SELECT smartconnector.create_connector('Notify', 'notify', status => 'operational',
	execution_ended_webhook_url => 'https://hooks.example.com/etl/notify',
	notification_email => 'ops@example.com',
	error_notification_email => 'oncall@example.com') > 0 AS created;
CREATE ROLE regress_starter IN ROLE smartconnector_operator;
INSERT INTO smartconnector.user_email VALUES ('regress_starter', 'starter@example.com');
INSERT INTO smartconnector.user_email VALUES ('regress_nobody', 'two@example.com, three@example.com');

-- a successful run queues the webhook and one email per address
SET ROLE regress_starter;
SELECT smartconnector.trigger('notify') AS n1 \gset
SELECT smartconnector.claim('notify') = :n1 AS claimed;
SELECT smartconnector.record('k1', 'created');
SELECT smartconnector.finish(:n1, metadata => '{"rows": 1}');
RESET ROLE;
SELECT channel, target, reason, target_host, webhook_id ~ '^msg_[0-9a-f]{32}$' AS id_ok,
       payload = smartconnector.execution_metadata(:n1) AS payload_is_the_event
  FROM smartconnector.delivery WHERE execution_id = :n1 ORDER BY channel, target;

-- the event: every field, ISO 8601 timestamps with offset
SELECT array_agg(k ORDER BY k) AS fields
  FROM jsonb_object_keys(smartconnector.execution_metadata(:n1)) AS k;
SELECT e ->> 'type' AS type, e ->> 'status' AS status, (e -> 'connector') - 'id' AS connector,
       e ->> 'initiated_by' AS initiated_by, e ->> 'trigger_type' AS trigger_type,
       e -> 'record_counts' AS record_counts, e -> 'metadata' AS metadata, e ->> 'error' AS error,
       e ->> 'diff_check' AS diff_check, e ->> 'dry_run' AS dry_run,
       e ->> 'ended_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$' AS iso_8601,
       (e ->> 'duration_ms')::bigint >= 0 AS duration_ms
  FROM smartconnector.execution_metadata(:n1) AS e;
SELECT replace((smartconnector_internal.email_text(smartconnector.execution_metadata(:n1))).subject, :n1::text, '<id>') AS subject;

-- an ended execution's event is what was sent: a rename later does not rewrite it
UPDATE smartconnector.connector SET name = 'Notify (renamed)' WHERE api_name = 'notify';
SELECT smartconnector.execution_metadata(:n1) -> 'connector' ->> 'name' AS sent_name,
       smartconnector.execution_metadata(:n1) = (SELECT payload FROM smartconnector.delivery
                                                  WHERE execution_id = :n1 AND channel = 'webhook') AS is_the_payload;
UPDATE smartconnector.connector SET name = 'Notify' WHERE api_name = 'notify';

-- a delivery keeps the credentials of its connector when it was queued
UPDATE smartconnector.connector SET webhook_secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
       webhook_headers = '{"Authorization": "Bearer vendor-a"}' WHERE api_name = 'notify';
SET ROLE regress_starter;
SELECT smartconnector.trigger('notify') AS n6 \gset
SELECT smartconnector.claim('notify') = :n6 AS claimed;
SELECT smartconnector.finish(:n6);
RESET ROLE;
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://vendor-b.example.com/hook',
       webhook_secret = NULL, webhook_headers = '{"Authorization": "Bearer vendor-b"}' WHERE api_name = 'notify';
SELECT target, webhook_secret IS NOT NULL AS signed, webhook_headers
  FROM smartconnector.delivery WHERE execution_id = :n6 AND channel = 'webhook';
SELECT channel, webhook_secret, webhook_headers
  FROM smartconnector.delivery WHERE execution_id = :n6 AND channel = 'email' ORDER BY target;
UPDATE smartconnector.connector SET execution_ended_webhook_url = 'https://hooks.example.com/etl/notify',
       webhook_secret = NULL, webhook_headers = NULL WHERE api_name = 'notify';

-- a failed run also mails error_notification_email; a duplicate address is mailed once
UPDATE smartconnector.connector SET error_notification_email = 'OPS@example.com' WHERE api_name = 'notify';
SELECT smartconnector.trigger('notify') AS n2 \gset
SELECT smartconnector.claim('notify') = :n2 AS claimed;
SELECT smartconnector.finish(:n2, 'target table is locked');
SELECT channel, target, reason FROM smartconnector.delivery WHERE execution_id = :n2 ORDER BY channel, target;
UPDATE smartconnector.connector SET error_notification_email = 'oncall@example.com' WHERE api_name = 'notify';
SELECT smartconnector.set_status('notify', 'operational');

-- a cancelled queued execution is a completion too
SELECT smartconnector.trigger('notify') AS n3 \gset
SELECT smartconnector.cancel(:n3);
SELECT channel, reason, payload ->> 'status' AS status FROM smartconnector.delivery
 WHERE execution_id = :n3 ORDER BY channel, target;

-- no webhook URL and no addresses: nothing to deliver
SELECT smartconnector.create_connector('Silent', 'silent', status => 'operational') > 0 AS created;
SELECT smartconnector.trigger('silent') AS n4 \gset
SELECT smartconnector.claim('silent') = :n4 AS claimed;
SELECT smartconnector.finish(:n4);
SELECT count(*) AS deliveries FROM smartconnector.delivery WHERE execution_id = :n4;

-- huge handler metadata does not make a huge payload
SELECT smartconnector.trigger('silent') AS n5 \gset
SELECT smartconnector.claim('silent') = :n5 AS claimed;
SELECT smartconnector.finish(:n5, metadata => jsonb_build_object('blob', repeat('x', 300000)));
SELECT (smartconnector.execution_metadata(:n5) -> 'metadata') - 'size_bytes' AS metadata;
-- and a huge error is cut, saying so: it reaches every payload and email
SELECT smartconnector.trigger('silent') AS n7 \gset
SELECT smartconnector.claim('silent') = :n7 AS claimed;
SELECT smartconnector.finish(:n7, repeat('E', 3000000));
SELECT octet_length(error) <= 8192 AS bounded, right(error, 45) AS says_so
  FROM smartconnector.execution WHERE id = :n7;
SELECT octet_length(smartconnector.execution_metadata(:n7) ->> 'error') <= 8192 AS payload_bounded;
SELECT smartconnector.set_status('silent', 'operational');

-- redeliver
SELECT smartconnector.redeliver(0);
SET ROLE regress_starter;
SELECT smartconnector.redeliver(id) FROM smartconnector.delivery WHERE execution_id = :n1 AND channel = 'webhook';
RESET ROLE;
CREATE ROLE regress_watcher IN ROLE smartconnector_viewer;
SET ROLE regress_watcher;
SELECT count(*) > 0 AS viewer_sees_deliveries FROM smartconnector.delivery;
SELECT smartconnector.redeliver(id) FROM smartconnector.delivery WHERE execution_id = :n1 AND channel = 'webhook';
-- but not their credentials, nor the response (receivers may echo the request's headers)
SELECT webhook_secret FROM smartconnector.delivery;
SELECT webhook_headers FROM smartconnector.delivery;
SELECT last_response FROM smartconnector.delivery;
RESET ROLE;
-- an operator cannot read them either, nor end an execution claiming its work was committed
SET ROLE regress_starter;
SELECT webhook_secret FROM smartconnector.delivery;
SELECT smartconnector.finish(:n1, NULL, '{"committed": true}');
RESET ROLE;

-- the per-host key of a URL, as libcurl parses it
SELECT smartconnector.url_host('https://hooks.example.com/a'),
       smartconnector.url_host('http://hooks.example.com:8080/a'),
       smartconnector.url_host('https://[2001:db8::1]/a');

-- settings of the dispatcher
SHOW smartconnector.webhook_retry_schedule;
SHOW smartconnector.webhook_timeout;
SHOW smartconnector.block_private_addresses;
SET smartconnector.smtp_url = 'smtp://mail.example.com';
ALTER SYSTEM SET smartconnector.webhook_retry_schedule = '1s,soon';
ALTER SYSTEM SET smartconnector.webhook_retry_schedule = '1s,-5s';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = '10.0.0.0/8, fd00::/8, 192.168.1.7';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = '10.0.0.0/33';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = 'intranet.example.com';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = '10.1.2.3/8';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = '::ffff:10.20.0.0/16';
ALTER SYSTEM SET smartconnector.allowed_private_addresses = '::ffff:10.20.0.0/112';
ALTER SYSTEM RESET smartconnector.allowed_private_addresses;
SHOW smartconnector.smtp_allow_plaintext_auth;
-- the SMTP settings are the superuser's: a URL may hold credentials
SET ROLE regress_watcher;
SHOW smartconnector.smtp_password;
SHOW smartconnector.smtp_url;
SHOW smartconnector.smtp_allow_plaintext_auth;
RESET ROLE;
