# SmartConnectorTest: helpers shared by the TAP tests under test/t/.
#
# new_node() gives a PostgreSQL::Test::Cluster with smartconnector preloaded
# and serving the database "postgres", so each test starts from the same
# server configuration that the README documents.  The other helpers wait
# for conditions (never for fixed times) and run load in the background.
package SmartConnectorTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use Exporter 'import';

our @EXPORT_OK = qw(new_node wait_until start_pgbench finish_pgbench);

# Create, configure and start a node; extra lines go to postgresql.conf.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $conf = "shared_preload_libraries = 'smartconnector'\n"
	  . "smartconnector.database_name = 'postgres'\n"
	  . "max_worker_processes = 16\n"
	  . ($opts{conf} // '');
	$node->append_conf('postgresql.conf', $conf);
	$node->start unless $opts{no_start};
	return $node;
}

# Wait until $query returns 't', failing the test (with $what) on timeout.
sub wait_until
{
	my ($node, $query, $what) = @_;
	ok($node->poll_query_until('postgres', $query), $what)
	  or diag("last result: " . $node->safe_psql('postgres', $query));
}

# Run pgbench with a custom script in the background; returns a handle for
# finish_pgbench.
sub start_pgbench
{
	my ($node, $script, @args) = @_;
	my $file = $node->basedir . "/bench_" . int(rand(1e9)) . ".sql";
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my ($out, $err) = ('', '');
	my @cmd = ('pgbench', '-n', '-f', $file, @args, '-h', $node->host, '-p', $node->port, 'postgres');
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# Wait for a background pgbench; fail the test if it failed.
sub finish_pgbench
{
	my ($run, $what) = @_;
	$run->{h}->finish;
	is($run->{h}->result(0), 0, $what)
	  or diag(${ $run->{out} } . ${ $run->{err} });
	return ${ $run->{out} };
}

1;
