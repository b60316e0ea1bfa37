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

our @EXPORT_OK = qw(new_node wait_until start_pgbench finish_pgbench
  start_receiver start_smtp read_jsonl run_and_wait execution_field);

my @peers;	# background servers, stopped at exit
END { local $?; $_->kill_kill for @peers; }

my $lib = __FILE__ =~ s{/[^/]+$}{}r;

# Create, configure and start a node; extra lines go to postgresql.conf.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $preload = $opts{preload} // 'smartconnector';
	my $conf = "shared_preload_libraries = '$preload'\n"
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

# Trigger a connector and wait until the execution has ended; returns its id.
sub run_and_wait
{
	my ($node, $api_name, $input, %opt) = @_;
	my $args = "'$api_name', '" . ($input // '{}') . "'";
	$args .= ", dry_run => true" if $opt{dry_run};
	my $id = $node->safe_psql('postgres', "SELECT smartconnector.trigger($args)");
	$node->poll_query_until('postgres',
		"SELECT state::text NOT IN ('queued', 'running') FROM smartconnector.execution WHERE id = $id")
	  or die "execution $id did not end";
	return $id;
}

# An expression over one execution's row.
sub execution_field
{
	my ($node, $id, $expr) = @_;
	return $node->safe_psql('postgres', "SELECT $expr FROM smartconnector.execution WHERE id = $id");
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

# Wait until a file exists (a background server wrote it when ready).
sub wait_for_file
{
	my ($file, $what) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	until (-s $file)
	{
		die "$what did not start" if time > $deadline;
		select(undef, undef, undef, 0.05);
	}
	return PostgreSQL::Test::Utils::slurp_file($file);
}

# Start the test HTTP receiver (test/lib/receiver.py) on 127.0.0.1; returns
# { port, log, h }.  The path of a URL chooses how it answers.  host => '::1'
# makes it listen on the IPv6 loopback instead.
sub start_receiver
{
	my ($dir, %opt) = @_;
	my $n = int(rand(1e9));
	my $log = "$dir/http_$n.jsonl";
	my $portfile = "$dir/http_$n.port";
	my @cmd = ('/usr/bin/python3', "$lib/receiver.py", '--log', $log, '--port-file', $portfile,
		'--port', $opt{port} // 0, '--host', $opt{host} // '127.0.0.1');
	my $h = IPC::Run::start(\@cmd, '>', "$dir/http_$n.out", '2>&1');
	push @peers, $h;
	my $port = wait_for_file($portfile, 'the HTTP receiver');
	return { port => $port, log => $log, h => $h };
}

# Start the test SMTP server (test/lib/smtp_sink.py, aiosmtpd); returns
# { port, log, h }.  With auth => 1 it offers AUTH without STARTTLS and
# records the credentials it receives.
sub start_smtp
{
	my ($dir, %opt) = @_;
	my $n = int(rand(1e9));
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $log = "$dir/smtp_$n.jsonl";
	my $ready = "$dir/smtp_$n.ready";
	my @cmd = ('/usr/bin/python3', "$lib/smtp_sink.py", '--port', $port, '--log', $log,
		'--ready-file', $ready, ($opt{auth} ? ('--auth') : ()));
	my $h = IPC::Run::start(\@cmd, '>', "$dir/smtp_$n.out", '2>&1');
	push @peers, $h;
	wait_for_file($ready, 'the SMTP server');
	return { port => $port, log => $log, h => $h };
}

# The JSON lines a receiver or SMTP server recorded.
sub read_jsonl
{
	my ($file) = @_;
	return () unless -e $file;
	require JSON::PP;
	my $json = JSON::PP->new;
	return map { $json->decode($_) } grep { /\S/ } split /\n/,
	  PostgreSQL::Test::Utils::slurp_file($file);
}

1;
