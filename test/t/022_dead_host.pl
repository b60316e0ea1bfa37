# A host that never answers does not hold up deliveries to the others: while
# its attempts stay open (webhook_timeout), every webhook to an answering host
# arrives.  Before: when only the dead host's deliveries were ready and
# transfer slots were free, the dispatcher slept until a transfer finished,
# which for the dead host is its timeout.
use strict;
use warnings;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SmartConnectorTest qw(new_node wait_until start_receiver);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
# accepts connections (the kernel's backlog) and never answers
my $dead = IO::Socket::INET->new(Listen => 1024, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
  or die "cannot listen: $!";
my $dead_port = $dead->sockport;

my $node = new_node('deadhost', conf => q{
smartconnector.block_private_addresses = off
smartconnector.max_deliveries_in_flight = 64
smartconnector.max_connections_per_host = 32
smartconnector.webhook_timeout = 300s
});
$node->safe_psql('postgres', qq{
	CREATE EXTENSION smartconnector;
	SELECT smartconnector.create_connector('Answers', 'answers', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.1:$http->{port}/slow/0.1');
	SELECT smartconnector.create_connector('Silent', 'silent', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.1:$dead_port/hook');
});

# ended executions whose webhooks wait, postponed, as the outbox queues them
sub backlog
{
	my ($api_name, $n) = @_;
	$node->safe_psql('postgres', qq{
	WITH e AS (
		INSERT INTO smartconnector.execution
			(connector_id, state, trigger_type, initiated_by, diff_check, queued_at, started_at, ended_at)
		SELECT smartconnector.connector_id('$api_name'), 'success', 'api', 'test', false,
			   clock_timestamp(), clock_timestamp(), clock_timestamp()
		  FROM generate_series(1, $n)
		RETURNING *)
	INSERT INTO smartconnector.delivery
		(execution_id, connector_id, channel, target, target_host, reason, webhook_id, payload, next_attempt_at)
	SELECT e.id, c.id, 'webhook', c.execution_ended_webhook_url,
		   smartconnector.url_host(c.execution_ended_webhook_url), 'webhook',
		   'msg_' || replace(gen_random_uuid()::text, '-', ''),
		   smartconnector_internal.event(e::smartconnector.execution, c), now() + interval '1 day'
	  FROM e JOIN smartconnector.connector c ON c.id = e.connector_id});
}
backlog('answers', 600);
backlog('silent', 600);
$node->safe_psql('postgres', q{
	BEGIN;
	UPDATE smartconnector.delivery SET next_attempt_at = clock_timestamp();
	SELECT smartconnector_internal.wake_dispatcher_at_commit();
	COMMIT});

my $of = q{FROM smartconnector.delivery d JOIN smartconnector.connector c ON c.id = d.connector_id};
wait_until($node, "SELECT count(*) = 600 $of WHERE c.api_name = 'answers' AND d.state = 'delivered'",
	'every webhook to the answering host arrives');
is($node->safe_psql('postgres', "SELECT count(*) $of WHERE c.api_name = 'silent' AND d.attempts > 0"), '0',
	'while the silent host\'s first attempts are still open');
close($dead);

done_testing();
