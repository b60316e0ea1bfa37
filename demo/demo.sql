-- smartconnector demo: what a psql session with the extension looks like.
\pset footer off
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE EXTENSION smartconnector;

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
SELECT changed_by, action, api_name, column_name, old_value, new_value
  FROM smartconnector.settings_history ORDER BY id;
