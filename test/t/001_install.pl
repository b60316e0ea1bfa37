# Installation guard and pg_dump: the extension refuses to install where its
# workers cannot serve, and connectors survive a dump and restore.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node);

# Without shared_preload_libraries, CREATE EXTENSION refuses with a hint.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($ret, $stdout, $stderr) =
  $plain->psql('postgres', 'CREATE EXTENSION smartconnector');
isnt($ret, 0, 'CREATE EXTENSION fails without preloading');
like($stderr,
	qr/smartconnector must be loaded via "shared_preload_libraries".*HINT:  Add smartconnector to "shared_preload_libraries"/s,
	'error names the setting and hints at the fix');
$plain->stop;

# Preloaded, it installs only in smartconnector.database_name.
my $node = new_node('main');
$node->safe_psql('postgres', 'CREATE DATABASE other');
($ret, $stdout, $stderr) =
  $node->psql('other', 'CREATE EXTENSION smartconnector');
isnt($ret, 0, 'CREATE EXTENSION fails outside smartconnector.database_name');
like($stderr, qr/smartconnector can only be created in database "postgres"/,
	'error names the served database');
$node->safe_psql('postgres', 'CREATE EXTENSION smartconnector');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'smartconnector'"),
	'0.2', 'installed in the served database');
is($node->safe_psql('postgres', 'SHOW smartconnector.database_name'),
	'postgres', 'database_name GUC is defined');
($ret, $stdout, $stderr) = $node->psql('postgres', 'SET smartconnector.no_such_setting = 1');
like($stderr, qr/invalid configuration parameter name "smartconnector.no_such_setting"/,
	'the smartconnector GUC prefix is reserved');

# Connectors, aliases, statuses, secrets and history survive pg_dump.
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.load_orders(ctx jsonb) RETURNS jsonb
		LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
	SELECT smartconnector.create_connector('Orders', 'orders',
		description => 'Loads orders',
		status => 'operational',
		max_concurrent_executions => 3,
		notification_email => 'ops@example.com',
		execution_ended_webhook_url => 'https://hooks.example.com/orders',
		webhook_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
		webhook_headers => '{"X-Api-Key": "k"}',
		handler => 'public.load_orders(jsonb)');
	SELECT smartconnector.create_connector('Customers', 'customers');
	SELECT smartconnector.change_api_name('orders', 'orders_v2');
	SET smartconnector.internal_change = 'status';
	UPDATE smartconnector.connector SET status = 'need_attention' WHERE api_name = 'customers';
});

# (the bindings of handler and run_as are per cluster: compared below)
my $snapshot = q{
	SELECT to_jsonb(c) - '{handler_oid,run_as_oid,bound_in}'::text[]
	  FROM smartconnector.connector c ORDER BY id;
	SELECT a.alias, a.connector_id FROM smartconnector.api_name_alias a ORDER BY 1;
	SELECT id, api_name, changed_by, action, column_name, old_value, new_value
	  FROM smartconnector.settings_history ORDER BY id;
};
my $before = $node->safe_psql('postgres', $snapshot);

my $dump = $node->basedir . '/dump.sql';
$node->command_ok(
	[ 'pg_dump', '--no-owner', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump succeeds');

my $copy = new_node('restored');
$copy->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump, '-d', $copy->connstr('postgres') ],
	'restore succeeds');
is($copy->safe_psql('postgres', $snapshot), $before,
	'connectors, aliases and history are identical after restore');
is($copy->safe_psql('postgres', q{SELECT handler_oid = 'public.load_orders(jsonb)'::regprocedure
	AND run_as_oid = 'postgres'::regrole AND bound_in = smartconnector.system_identifier()
	FROM smartconnector.connector WHERE api_name = 'orders_v2'}), 't',
	'the restored handler and run_as are bound to the objects of the new cluster');

# The restored sequences continue, so new connectors and history do not collide.
$copy->safe_psql('postgres', "SELECT smartconnector.create_connector('Invoices', 'invoices')");
is($copy->safe_psql('postgres',
	"SELECT count(DISTINCT id) FROM smartconnector.connector"), '3',
	'a connector created after restore gets a fresh id');
is($copy->safe_psql('postgres', q{
	SELECT smartconnector.connector_id('orders') = smartconnector.connector_id('orders_v2')}),
	't', 'the alias still resolves after restore');

done_testing();
