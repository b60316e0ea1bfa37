# Deliveries are exactly what they claim, against a real HTTP receiver and
# real SMTP servers on 127.0.0.1:
# - a delivery keeps the URL *and* the credentials it was queued with, on
#   retries and on redeliver(), whatever the connector is changed to;
# - webhook-timestamp and the signature are made when a request is sent,
#   not when it was fetched, so a webhook waiting behind a slow host is not
#   sent stale;
# - whether a delivery was refused is decided by its outcome: a name that
#   resolves to a refused and an allowed address is delivered;
# - an empty header value is sent as such;
# - with no smtp_url, emails stay pending and untouched until it is set;
# - SMTP credentials are never sent without TLS, unless plain text is
#   explicitly allowed;
# - a failed or dry run says its counts were not committed; a cancelled
#   handler is logged as cancelled, not failed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(decode_base64 encode_base64);
use Encode qw(encode_utf8);
use JSON::PP;
use SmartConnectorTest qw(new_node wait_until start_receiver start_smtp read_jsonl run_and_wait);

my $dir = PostgreSQL::Test::Utils::tempdir;
my $http = start_receiver($dir);
my $smtp = start_smtp($dir, auth => 1);
my $base = "http://127.0.0.1:$http->{port}";
my $secret_a = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $secret_b = 'whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY';
my $json = JSON::PP->new;

my $node = new_node('delivery', conf => qq{
smartconnector.block_private_addresses = off
smartconnector.webhook_retry_schedule = '3s,3s'
smartconnector.max_connections_per_host = 1
smartconnector.smtp_from = 'etl\@example.com'
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION smartconnector;
	CREATE ROLE regress_etl LOGIN;
	CREATE TABLE public.sink (n int);
	GRANT INSERT ON public.sink TO regress_etl;
	CREATE FUNCTION public.step(ctx jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.sink VALUES (1);
		PERFORM smartconnector.record('r1', 'created');
		IF ctx -> 'input' ? 'fail' THEN
			RAISE EXCEPTION 'source down';
		END IF;
		IF ctx -> 'input' ? 'sleep' THEN
			PERFORM pg_sleep((ctx -> 'input' ->> 'sleep')::float);
		END IF;
		RETURN NULL;
	END $$;
	SELECT smartconnector.create_connector('Step', 'step', status => 'operational',
		handler => 'public.step(jsonb)', run_as => 'regress_etl');
});

# Run one execution of $api as an external runner; returns its id.
sub complete
{
	my ($api) = @_;
	my $out = $node->safe_psql('postgres', qq{
		SELECT smartconnector.trigger('$api') AS id \\gset
		SELECT smartconnector.claim('$api') = :id;
		SELECT smartconnector.finish(:id);
		SELECT :id;});
	return (split /\n/, $out)[-1];
}

sub webhook
{
	my ($id, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM smartconnector.delivery WHERE execution_id = $id AND channel = 'webhook'");
}

sub requests_with_id
{
	my ($msg_id) = @_;
	return grep { $_->{headers}{'webhook-id'} eq $msg_id } read_jsonl($http->{log});
}

sub signed_with
{
	my ($req, $secret) = @_;
	my $h = $req->{headers};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}." . encode_utf8($req->{body});
	return $h->{'webhook-signature'} eq
	  'v1,' . encode_base64(hmac_sha256($signed, decode_base64(substr($secret, 6))), '');
}

# Create a connector posting to /fail/1/$api with secret A and the header
# "Authorization: Bearer $token", run it, let the first attempt fail, apply
# $change (SQL SET list) to the connector, and wait for the retry; returns
# the execution and the requests its webhook made.
sub retry_after_change
{
	my ($api, $token, $change) = @_;
	$node->safe_psql('postgres', qq{
		SELECT smartconnector.create_connector('$api', '$api', status => 'operational',
			execution_ended_webhook_url => '$base/fail/1/$api',
			webhook_secret => '$secret_a',
			webhook_headers => '{"Authorization": "Bearer $token"}')});
	my $id = complete($api);
	wait_until($node, "SELECT attempts = 1 FROM smartconnector.delivery WHERE execution_id = $id",
		"$api: the first attempt failed (500)");
	$node->safe_psql('postgres', "UPDATE smartconnector.connector SET $change WHERE api_name = '$api'");
	wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $id",
		"$api: the retry is delivered");
	return ($id, requests_with_id(webhook($id, 'webhook_id')));
}

# --- a retry goes to the URL it was queued for, with that URL's credentials ---
my ($moved, @tries) = retry_after_change('vendor_a', 'token-of-a',
	"execution_ended_webhook_url = '$base/ok/vendor-b', webhook_secret = '$secret_b',"
	  . " webhook_headers = '{\"Authorization\": \"Bearer token-of-b\"}'");
is(scalar @tries, 2, 'two attempts reached a receiver');
is(join(',', map { $_->{path} } @tries), '/fail/1/vendor_a,/fail/1/vendor_a',
	'both went to the URL the delivery was queued for');
is($tries[1]{headers}{authorization}, 'Bearer token-of-a',
	"the retry carries vendor A's header, not the connector's new one");
ok(signed_with($tries[1], $secret_a) && !signed_with($tries[1], $secret_b),
	"the retry is signed with A's secret");

my $moved_delivery = webhook($moved, 'id');
$node->safe_psql('postgres', "SELECT smartconnector.redeliver($moved_delivery)");
wait_until($node, "SELECT state = 'delivered' AND attempts = 1 FROM smartconnector.delivery WHERE id = $moved_delivery",
	'redeliver() of the old delivery is delivered');
@tries = requests_with_id(webhook($moved, 'webhook_id'));
is(scalar @tries, 3, 'a third request with the same webhook-id');
ok($tries[2]{path} eq '/fail/1/vendor_a' && $tries[2]{headers}{authorization} eq 'Bearer token-of-a'
	  && signed_with($tries[2], $secret_a),
	'redeliver() replays to the old URL with its own credentials only');
is(scalar(grep { ($_->{headers}{authorization} // '') eq 'Bearer token-of-b' } read_jsonl($http->{log})), 0,
	"B's token was never sent anywhere");

# --- while the URL stays, rotated credentials apply to pending retries ---
my ($rotated, @rot) = retry_after_change('rotate', 'leaked',
	"webhook_secret = '$secret_b', webhook_headers = '{\"Authorization\": \"Bearer rotated\"}'");
ok(@rot == 2 && $rot[1]{headers}{authorization} eq 'Bearer rotated' && signed_with($rot[1], $secret_b),
	'the same URL gets the rotated token and secret on the retry');

# --- signed when sent: a webhook waiting behind a slow host is not stale ---
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Slow', 'slow', status => 'operational',
		max_concurrent_executions => 3,
		execution_ended_webhook_url => '$base/slow/1.5',
		webhook_secret => '$secret_a')});
my @slow = map { complete('slow') } 1 .. 3;
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.delivery WHERE execution_id IN ("
	  . join(',', @slow) . ") AND state = 'delivered'",
	'three webhooks to one slow host (one connection) are delivered one after another');
my @sent = map { (requests_with_id(webhook($_, 'webhook_id')))[0] } @slow;
my @age = map { $_->{time} - $_->{headers}{'webhook-timestamp'} } @sent;
ok($sent[2]{time} - $sent[0]{time} >= 2.5, 'the last waited about 3 s behind the others')
  or diag("received at @{[ map { $_->{time} } @sent ]}");
ok((!grep { $_ > 1.5 || $_ < -1 } @age), 'yet each was signed within a second of being sent')
  or diag("ages: @age");
ok((!grep { !signed_with($_, $secret_a) } @sent), 'and each signature verifies');

# --- an empty header value is sent, not dropped ---
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Empty', 'empty', status => 'operational',
		execution_ended_webhook_url => '$base/ok/empty',
		webhook_headers => '{"X-Empty": "", "X-Full": "v"}')});
my $empty = complete('empty');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $empty",
	'a webhook with an empty header value is delivered');
my ($req) = requests_with_id(webhook($empty, 'webhook_id'));
ok(exists $req->{headers}{'x-empty'} && $req->{headers}{'x-empty'} eq '', 'X-Empty arrives, empty');
is($req->{headers}{'x-full'}, 'v', 'X-Full arrives');
is(scalar(grep { /^user-agent$/i } keys %{ $req->{headers} }), 1, 'one User-Agent');

# --- blocked means not delivered: decided by the outcome ---
# "localhost" resolves to 127.0.0.1 and ::1.  Allow one of them, listen on
# that one only, and curl meets the refused address either first or second:
# both orders must end delivered, and neither called refused.
my $http6 = start_receiver($dir, host => '::1');
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Dual4', 'dual4', status => 'operational',
		execution_ended_webhook_url => 'http://localhost:$http->{port}/ok/dual4');
	SELECT smartconnector.create_connector('Dual6', 'dual6', status => 'operational',
		execution_ended_webhook_url => 'http://localhost:$http6->{port}/ok/dual6');
	SELECT smartconnector.create_connector('Other', 'other', status => 'operational',
		execution_ended_webhook_url => 'http://127.0.0.2:$http->{port}/ok/other');
	SELECT smartconnector.create_connector('V6', 'v6', status => 'operational',
		execution_ended_webhook_url => 'http://[::1]:$http6->{port}/ok/v6')});
for my $case (['127.0.0.1/32', 'dual4', $http, 'other', 'v6'], ['::1/128', 'dual6', $http6])
{
	my ($allowed, $api, $receiver, @refused) = @$case;
	$node->append_conf('postgresql.conf', qq{
smartconnector.block_private_addresses = on
smartconnector.allowed_private_addresses = '$allowed'
});
	$node->reload;
	wait_until($node, "SELECT current_setting('smartconnector.allowed_private_addresses') = '$allowed'",
		"allowed: $allowed");
	my $id = complete($api);
	wait_until($node, "SELECT state <> 'pending' FROM smartconnector.delivery WHERE execution_id = $id",
		"$api: the delivery to localhost has an outcome");
	is(webhook($id, "state || ' ' || last_status || ' ' || coalesce(last_error, '')"), 'delivered 200 ',
		"$api: a name with a refused and an allowed address is delivered, and not called refused");
	is(scalar(grep { $_->{headers}{'webhook-id'} eq webhook($id, 'webhook_id') } read_jsonl($receiver->{log})), 1,
		"$api: the receiver got it once");
	for my $other (@refused)
	{
		my $oid = complete($other);
		wait_until($node, "SELECT state = 'failed' FROM smartconnector.delivery WHERE execution_id = $oid",
			"$other: an address outside the allowed networks still fails");
		like(webhook($oid, "attempts || ' ' || last_error"), qr/^1 refused to connect to private address/,
			"$other: at once, as refused");
	}
}

$node->append_conf('postgresql.conf', "smartconnector.block_private_addresses = off\n");
$node->reload;
wait_until($node, "SELECT current_setting('smartconnector.block_private_addresses') = 'off'",
	'private addresses allowed again');

# --- emails wait for an SMTP server; credentials never go out in clear ---
$node->safe_psql('postgres', qq{
	SELECT smartconnector.create_connector('Mailed', 'mailed', status => 'operational',
		execution_ended_webhook_url => '$base/ok/mailed',
		notification_email => 'ops\@example.com')});
my $mailed = complete('mailed');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $mailed AND channel = 'webhook'",
	'with no smtp_url the webhook is delivered');
my $later = complete('mailed');
wait_until($node, "SELECT state = 'delivered' FROM smartconnector.delivery WHERE execution_id = $later AND channel = 'webhook'",
	'and the next one too');
is($node->safe_psql('postgres', "SELECT string_agg(state || ' ' || attempts, ',') FROM smartconnector.delivery WHERE execution_id IN ($mailed, $later) AND channel = 'email'"),
	'pending 0,pending 0', 'while the emails stay pending, not attempted');

$node->append_conf('postgresql.conf', qq{
smartconnector.smtp_url = 'smtp://127.0.0.1:$smtp->{port}'
smartconnector.smtp_user = 'etl'
smartconnector.smtp_password = 'mail-secret'
});
$node->reload;
wait_until($node, "SELECT current_setting('smartconnector.smtp_url') <> ''", 'smtp_url is set');
wait_until($node, "SELECT bool_and(attempts >= 1) FROM smartconnector.delivery WHERE execution_id IN ($mailed, $later) AND channel = 'email'",
	'once smtp_url is set the waiting emails are attempted');
my $creds = complete('mailed');
wait_until($node, "SELECT attempts >= 1 FROM smartconnector.delivery WHERE execution_id = $creds AND channel = 'email'",
	'a new email is attempted');
like($node->safe_psql('postgres', "SELECT state || ': ' || last_error FROM smartconnector.delivery WHERE execution_id = $creds AND channel = 'email'"),
	qr/^pending: .*does not offer STARTTLS.*credentials are not sent without TLS/,
	'with credentials and a server without STARTTLS the attempt fails, saying why, to be retried');
is(scalar(grep { exists $_->{auth} || exists $_->{data} } read_jsonl($smtp->{log})), 0,
	'the server received no credentials and no message');

$node->append_conf('postgresql.conf', "smartconnector.smtp_allow_plaintext_auth = on\n");
$node->reload;
wait_until($node, "SELECT current_setting('smartconnector.smtp_allow_plaintext_auth') = 'on'", 'plain text allowed');
$node->safe_psql('postgres', "SELECT smartconnector.redeliver(id) FROM smartconnector.delivery WHERE execution_id IN ($mailed, $later, $creds) AND channel = 'email'");
wait_until($node, "SELECT count(*) = 3 FROM smartconnector.delivery WHERE execution_id IN ($mailed, $later, $creds) AND channel = 'email' AND state = 'delivered'",
	'allowed explicitly, the emails are delivered');
my @logins = grep { exists $_->{auth} } read_jsonl($smtp->{log});
ok(@logins >= 1 && $logins[0]{login} eq 'etl' && $logins[0]{password} eq 'mail-secret',
	'with the credentials (so the server above would have seen them)');

# --- committed says whether the counted work was kept ---
my $good = run_and_wait($node, 'step');
my $bad = run_and_wait($node, 'step', '{"fail": true}');
$node->safe_psql('postgres', "SELECT smartconnector.set_status('step', 'operational')");
my $dry = run_and_wait($node, 'step', '{}', dry_run => 1);
my $ext = complete('vendor_a');
is(join(' ', map {
	$node->safe_psql('postgres', "SELECT e ->> 'status' || ':' || (e -> 'record_counts' ->> 'created') || ':'"
		  . " || coalesce(e -> 'record_counts' ->> 'committed', 'null') FROM smartconnector.execution_metadata($_) e")
} $good, $bad, $dry, $ext), 'success:1:true failed:1:false success:1:false success:0:null',
	'record_counts.committed: true for a committed run, false for a failed one and a dry run, null for an external runner');
is($node->safe_psql('postgres', 'SELECT count(*) FROM public.sink'), '1', 'and only the committed run left a row');

# --- a cancelled handler is logged as cancelled ---
my $log_start = -s $node->logfile;
my $long = $node->safe_psql('postgres', q{SELECT smartconnector.trigger('step', '{"sleep": 60}')});
wait_until($node, "SELECT state = 'running' FROM smartconnector.execution WHERE id = $long", 'a long run is running');
$node->safe_psql('postgres', "SELECT smartconnector.cancel($long)");
wait_until($node, "SELECT state = 'cancelled' FROM smartconnector.execution WHERE id = $long", 'cancel() ends it cancelled');
ok(eval { $node->wait_for_log(qr/smartconnector execution $long was cancelled/, $log_start); 1 },
	'the log says it was cancelled');
unlike(slurp_file($node->logfile, $log_start), qr/smartconnector execution $long failed/, 'not that it failed');

# --- a database that is not UTF-8: payloads and emails are converted ---
my $smtp_plain = start_smtp($dir);
my $latin = new_node('latin1', init => { extra => ['--encoding=LATIN1', '--locale=C'] }, conf => qq{
smartconnector.block_private_addresses = off
smartconnector.smtp_url = 'smtp://127.0.0.1:$smtp_plain->{port}'
});
$latin->safe_psql('postgres', qq{
	CREATE EXTENSION smartconnector;
	SELECT smartconnector.create_connector('Caf' || chr(233), 'cafe', status => 'operational',
		execution_ended_webhook_url => '$base/ok/latin1', notification_email => 'ops\@example.com');
	SELECT smartconnector.trigger('cafe') AS id \\gset
	SELECT smartconnector.claim('cafe') = :id;
	SELECT smartconnector.finish(:id, 'na' || chr(239) || 've error');});
wait_until($latin, "SELECT count(*) = 2 FROM smartconnector.delivery WHERE state = 'delivered'",
	'LATIN1 database: webhook and email delivered');
my ($latin_req) = grep { $_->{path} eq '/ok/latin1' } read_jsonl($http->{log});
my $event = eval { JSON::PP->new->utf8->decode(encode_utf8($latin_req->{body})) };
is($event->{connector}{name} // '', "Caf\x{e9}", 'the webhook body is UTF-8: the name arrives intact');
is($event->{error} // '', "na\x{ef}ve error", 'and so does the error');
my ($latin_mail) = read_jsonl($smtp_plain->{log});
my ($b64) = $latin_mail->{data} =~ /\r?\n\r?\n(.*)$/s;
like(Encode::decode('UTF-8', decode_base64($b64)), qr/Caf\x{e9}/, 'the email body is UTF-8 as labelled');

done_testing();
