# Upgrading an installation: the released 0.1 schema, with today's library
# loaded (a new package and a restart come before ALTER EXTENSION UPDATE),
# holding connectors, queued, running and ended executions and pending
# deliveries.  Until the update the workers wait and say why; after it
# everything is still there and keeps working: the queued executions run,
# the running one finishes, every pending webhook is delivered once, the
# settings and their history are unchanged, and the new setting works.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_receiver read_jsonl);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $node = new_node('upgrade', conf => "smartconnector.block_private_addresses = off\n");
my $hook = "http://127.0.0.1:$http->{port}/ok";

$node->safe_psql('postgres', q{
	CREATE ROLE regress_etl LOGIN;
	CREATE TABLE public.done (id bigint);
	GRANT INSERT ON public.done TO regress_etl;
	CREATE FUNCTION public.quick(ctx jsonb) RETURNS void LANGUAGE sql AS
		$$ INSERT INTO public.done VALUES ((ctx ->> 'execution_id')::bigint) $$;
	CREATE EXTENSION smartconnector VERSION '0.1';
});
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'smartconnector'}),
	'0.1', 'the released version installs');
is($node->safe_psql('postgres', q{
	SELECT path FROM pg_extension_update_paths('smartconnector') WHERE source = '0.1' AND target = '0.2'}),
	'0.1--0.2', 'an update path leads from the previous release to this one');
$node->wait_for_log(qr/smartconnector library 0\.2 waits: the database has extension version 0\.1/);

# state made under 0.1
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Quick', 'quick', status => 'operational',
		handler => 'public.quick(jsonb)', run_as => 'regress_etl',
		execution_ended_webhook_url => '$hook');
	SELECT smartconnector.create_connector('External', 'ext', status => 'operational',
		max_concurrent_executions => 2, execution_ended_webhook_url => '$hook');
	UPDATE smartconnector.connector SET description = 'Runs outside the database.' WHERE api_name = 'ext';
	-- what an external execution's end triggers waits here (inactive)
	SELECT smartconnector.create_connector('After external', 'after_ext', status => 'inactive');
	SELECT smartconnector.chain('ext', 'after_ext');
});
my @queued = split /\n/, $node->safe_psql('postgres',
	q{SELECT smartconnector.trigger('quick') FROM generate_series(1, 3)});
my $cancelled = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('quick')});
$node->safe_psql('postgres', "SELECT smartconnector.cancel($cancelled)");

my $runner = $node->background_psql('postgres');
$runner->query_safe('SET client_min_messages = warning');
my $running = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
is($runner->query_safe(q{SELECT smartconnector.claim('ext')}), $running, 'an external runner claims under 0.1');
my $ended = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('ext')});
$node->safe_psql('postgres', qq{
	SET client_min_messages = warning;
	SELECT smartconnector.claim('ext');
	SELECT smartconnector.finish($ended);
});

my $chained = q{SELECT string_agg(e.trigger_type || ' ' || e.state || ' ' || (e.input #>> '{chained_from,execution_id}'),
									', ' ORDER BY e.id)
				   FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id
				  WHERE c.api_name = 'after_ext'};
is($node->safe_psql('postgres', $chained), "chain queued $ended",
	'the end of an external execution under 0.1 queued its chained connector');
my $states = qq{SELECT string_agg(e.id || ' ' || e.state, ', ' ORDER BY e.id)
				 FROM smartconnector.execution e JOIN smartconnector.connector c ON c.id = e.connector_id
				WHERE c.api_name <> 'after_ext'};
is($node->safe_psql('postgres', $states),
	join(', ', (map { "$_ queued" } @queued), "$cancelled cancelled", "$running running", "$ended success"),
	'before the update: queued, cancelled, running and ended executions');
is($node->safe_psql('postgres', q{SELECT count(*) FROM smartconnector.delivery WHERE state = 'pending'}),
	'2', 'and the webhooks of the two ended ones are pending');
my $settings = q{
	SELECT string_agg(jsonb_build_object('describe', smartconnector.describe(api_name) - 'updated_at' - 'max_duration',
										 'history', (SELECT count(*) FROM smartconnector.settings_history h
													  WHERE h.connector_id = c.id))::text, E'\n' ORDER BY id)
	  FROM smartconnector.connector c};
my $settings_before = $node->safe_psql('postgres', $settings);

# the update
my $log_at = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER EXTENSION smartconnector UPDATE');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'smartconnector'}),
	'0.2', 'ALTER EXTENSION UPDATE takes it to 0.2');
$node->wait_for_log(qr/smartconnector extension version 0\.2 is installed: resuming/, $log_at);

wait_until($node, "SELECT count(*) = 3 FROM smartconnector.execution WHERE id IN (" . join(',', @queued)
	  . ") AND state = 'success'", 'the executions queued under 0.1 run after the update');
is($node->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM public.done'),
	join(',', @queued), 'each once, in order');
is($runner->query_safe(q{SELECT smartconnector.current_execution()}), $running,
	'the external runner still holds its claim');
is($runner->query_safe("SELECT smartconnector.finish($running)"), 'success',
	'and finishes its execution after the update');
$runner->quit;
is($node->safe_psql('postgres', $chained), "chain queued $ended, chain queued $running",
	'which queues its chained connector too');

wait_until($node, q{SELECT count(*) = 0 FROM smartconnector.delivery WHERE state <> 'delivered'},
	'every webhook, pending from before the update or new, is delivered');
my @got = grep { $_->{path} eq '/ok' } read_jsonl($http->{log});
my %ids;
$ids{ $_->{headers}{'webhook-id'} }++ for @got;
is(scalar(keys %ids), 6, 'the receiver got one webhook per ended execution (3 queued, cancelled, 2 external)');
ok(!grep({ $_ != 1 } values %ids), 'each exactly once');

is($node->safe_psql('postgres', $settings), $settings_before, 'settings and their history are unchanged');
is($node->safe_psql('postgres', q{SELECT smartconnector.describe('ext') ->> 'max_duration'}), '',
	'the new setting is there, unset');
$node->safe_psql('postgres', q{UPDATE smartconnector.connector SET max_duration = '1 hour' WHERE api_name = 'quick'});
is($node->safe_psql('postgres', q{SELECT smartconnector.describe('quick') ->> 'max_duration'}), 'PT1H',
	'and can be set');
my $after = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('quick')});
wait_until($node, "SELECT state = 'success' FROM smartconnector.execution WHERE id = $after",
	'a new execution runs under 0.2');

my $log = slurp_file($node->logfile, $log_at);
unlike($log, qr/ERROR|PANIC|TRAP/, 'nothing failed in the log after the update');

done_testing();
