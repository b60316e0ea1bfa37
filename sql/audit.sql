--
-- Audit: every settings change in smartconnector.settings_history: who, when,
-- which column, old and new, with secrets masked.  "who" is the calling role,
-- even through SECURITY DEFINER functions.
--
\set SHOW_CONTEXT never
TRUNCATE smartconnector.settings_history;
SELECT smartconnector.create_connector('Audited', 'audited',
	notification_email => 'ops@example.com',
	webhook_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') > 0 AS created;

SET ROLE regress_admin;
UPDATE smartconnector.connector
   SET name = 'Audited connector', max_concurrent_executions = 3,
       webhook_secret = smartconnector.generate_webhook_secret(),
       webhook_headers = '{"Authorization": "Bearer s3cret"}'
 WHERE api_name = 'audited';
SELECT smartconnector.change_api_name('audited', 'audited_v2');
-- a refused change leaves no trace
UPDATE smartconnector.connector SET notification_email = 'a@example.com, b@example.com' WHERE api_name = 'audited_v2';
-- an update that changes nothing records nothing
UPDATE smartconnector.connector SET name = name WHERE api_name = 'audited_v2';
DELETE FROM smartconnector.connector WHERE api_name = 'audited_v2';
RESET ROLE;

SELECT api_name, changed_by, action, column_name, old_value, new_value
  FROM smartconnector.settings_history
 WHERE action = 'update'
 ORDER BY id;
SELECT action, CASE WHEN changed_by = session_user THEN 'the superuser' ELSE changed_by END AS changed_by,
       new_value::jsonb ->> 'webhook_secret' AS insert_secret,
       old_value::jsonb -> 'webhook_headers' AS delete_headers
  FROM smartconnector.settings_history
 WHERE action IN ('insert', 'delete')
 ORDER BY id;
SELECT bool_and(changed_at <= clock_timestamp()) AND count(DISTINCT changed_at) = count(*) AS real_moments
  FROM smartconnector.settings_history;
-- nobody but the extension writes history
SET ROLE regress_admin;
INSERT INTO smartconnector.settings_history (connector_id, api_name, changed_by, action) VALUES (1, 'x', 'x', 'update');
DELETE FROM smartconnector.settings_history;
RESET ROLE;
