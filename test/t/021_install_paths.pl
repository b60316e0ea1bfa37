# The two roads to 0.2 give the same catalog: a fresh CREATE EXTENSION runs
# the full script smartconnector--0.2.sql (written by make from
# sql/install/), an installation of 0.1 runs the released script and then
# ALTER EXTENSION UPDATE (smartconnector--0.1--0.2.sql).  Both databases are
# described object by object, with everything that can differ and only OIDs
# normalised away, and the descriptions must be equal; on failure the test
# prints their unified diff.  The extension installs only in
# smartconnector.database_name, so the node serves one database, then the
# other after a restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use SmartConnectorTest qw(new_node);

# One line per fact, in a fixed order: (key, position, line).  A position
# orders what has an order (columns, enum labels, lines of a definition,
# extconfig); everything else is sorted by its text.  Names that embed an
# OID (foreign key triggers, TOAST tables) lose the number.
my $describe = q{
WITH ns AS (
	SELECT n.oid, n.nspname FROM pg_namespace n
	 WHERE n.nspname IN ('smartconnector', 'smartconnector_internal')),
ext AS (SELECT e.* FROM pg_extension e WHERE e.extname = 'smartconnector'),
rel AS (
	SELECT c.*, format('%I.%I', ns.nspname, c.relname) AS qname
	  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace),
fn AS (
	SELECT p.*, p.oid::regprocedure::text AS sig
	  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace),
typ AS (
	SELECT t.*, format('%I.%I', ns.nspname, t.typname) AS qname
	  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace),
facts(k, n, line) AS (
	-- the extension, what pg_dump keeps of it, and its members
	SELECT 'extension', 0, format('extension %s version %s schema %s relocatable %s owner %s',
		e.extname, e.extversion, e.extnamespace::regnamespace, e.extrelocatable,
		pg_get_userbyid(e.extowner))
	  FROM ext e
	UNION ALL
	SELECT 'extension config', c.n::int, format('extension config %s: %s condition %L',
		c.n, c.relid::regclass, e.extcondition[c.n])
	  FROM ext e, unnest(e.extconfig) WITH ORDINALITY AS c(relid, n)
	UNION ALL
	SELECT 'extension member', 0, 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
	  FROM pg_depend d, ext e
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid AND d.deptype = 'e'
	UNION ALL
	-- schemas
	SELECT 'schema ' || n.nspname, 0, format('schema %s owner %s acl %s comment %L', n.nspname,
		pg_get_userbyid(n.nspowner), n.nspacl, obj_description(n.oid, 'pg_namespace'))
	  FROM pg_namespace n, ns WHERE n.oid = ns.oid
	UNION ALL
	-- functions: attributes, then every line of pg_get_functiondef (body included)
	SELECT 'function ' || p.sig, 0, format('function %s: kind %s language %s volatility %s strict %s '
		'security definer %s leakproof %s parallel %s cost %s rows %s returns set %s result %s '
		'arguments %s identity (%s) config %s support %s',
		p.sig, p.prokind, l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.proleakproof,
		p.proparallel, p.procost, p.prorows, p.proretset, pg_get_function_result(p.oid),
		pg_get_function_arguments(p.oid), pg_get_function_identity_arguments(p.oid), p.proconfig,
		p.prosupport)
	  FROM fn p JOIN pg_language l ON l.oid = p.prolang
	UNION ALL
	SELECT 'function ' || p.sig, 0, format('acl %s owner %s', p.proacl, pg_get_userbyid(p.proowner))
	  FROM fn p
	UNION ALL
	SELECT 'function ' || p.sig, 0, format('comment %L', obj_description(p.oid, 'pg_proc'))
	  FROM fn p
	UNION ALL
	SELECT 'function ' || p.sig, d.n::int, 'def ' || d.line
	  FROM fn p, regexp_split_to_table(pg_get_functiondef(p.oid), E'\n') WITH ORDINALITY AS d(line, n)
	 WHERE p.prokind <> 'a'
	UNION ALL
	-- relations (tables, indexes, sequences, views, ...)
	SELECT 'relation ' || c.qname, 0, format('relation %s: kind %s persistence %s '
		'options %s access method %s of type %s row security %s forced %s replica identity %s '
		'partition %s has index %s has triggers %s has rules %s has subclass %s checks %s '
		'attributes %s has toast %s',
		c.qname, c.relkind, c.relpersistence, c.reloptions,
		(SELECT amname FROM pg_am WHERE oid = c.relam), c.reloftype::regtype, c.relrowsecurity,
		c.relforcerowsecurity, c.relreplident, c.relispartition, c.relhasindex, c.relhastriggers,
		c.relhasrules, c.relhassubclass, c.relchecks, c.relnatts, c.reltoastrelid <> 0)
	  FROM rel c
	UNION ALL
	SELECT 'relation ' || c.qname, 0, format('acl %s owner %s', c.relacl, pg_get_userbyid(c.relowner))
	  FROM rel c
	UNION ALL
	SELECT 'relation ' || c.qname, 0, format('comment %L', obj_description(c.oid, 'pg_class'))
	  FROM rel c
	UNION ALL
	SELECT 'relation ' || c.qname || ' column', a.attnum, format('column %s %s: type %s not null %s '
		'default %s identity %L generated %L collation %s acl %s dimensions %s storage %s '
		'compression %L statistics %s missing %s local %s inherited %s dropped %s comment %L',
		a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
		pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
		(SELECT collname FROM pg_collation WHERE oid = a.attcollation), a.attacl, a.attndims,
		a.attstorage, a.attcompression, a.attstattarget, a.atthasmissing, a.attislocal,
		a.attinhcount, a.attisdropped, col_description(c.oid, a.attnum))
	  FROM rel c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	UNION ALL
	SELECT 'relation ' || c.qname || ' constraint', 0, format('constraint %s: type %s %s deferrable %s '
		'deferred %s validated %s local %s no inherit %s index %s comment %L',
		o.conname, o.contype, pg_get_constraintdef(o.oid), o.condeferrable, o.condeferred,
		o.convalidated, o.conislocal, o.connoinherit, nullif(o.conindid, 0)::regclass,
		obj_description(o.oid, 'pg_constraint'))
	  FROM rel c JOIN pg_constraint o ON o.conrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.qname || ' index', 0, format('index %s: unique %s primary %s exclusion %s '
		'immediate %s clustered %s valid %s replica identity %s nulls not distinct %s',
		pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indisexclusion,
		i.indimmediate, i.indisclustered, i.indisvalid, i.indisreplident, i.indnullsnotdistinct)
	  FROM rel c JOIN pg_index i ON i.indrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.qname || ' trigger', 0, format('trigger %s enabled %s internal %s '
		'constraint %s comment %L', pg_get_triggerdef(t.oid), t.tgenabled, t.tgisinternal,
		(SELECT conname FROM pg_constraint WHERE oid = t.tgconstraint),
		obj_description(t.oid, 'pg_trigger'))
	  FROM rel c JOIN pg_trigger t ON t.tgrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.qname || ' view', d.n::int, 'view ' || d.line
	  FROM rel c, regexp_split_to_table(pg_get_viewdef(c.oid), E'\n') WITH ORDINALITY AS d(line, n)
	 WHERE c.relkind IN ('v', 'm')
	UNION ALL
	SELECT 'relation ' || c.qname || ' rule', 0, format('rule %s enabled %s %s', r.rulename,
		r.ev_enabled, pg_get_ruledef(r.oid))
	  FROM rel c JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename <> '_RETURN'
	UNION ALL
	SELECT 'relation ' || c.qname || ' policy', 0, format('policy %s command %s permissive %s '
		'roles %s using %s check %s', p.polname, p.polcmd, p.polpermissive,
		(SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END ORDER BY 1)
		   FROM unnest(p.polroles) AS r),
		pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
	  FROM rel c JOIN pg_policy p ON p.polrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.qname || ' sequence', 0, format('sequence: type %s start %s increment %s '
		'max %s min %s cache %s cycle %s owned by %s',
		s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax, s.seqmin, s.seqcache, s.seqcycle,
		(SELECT string_agg(pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
						   || ' (' || d.deptype::text || ')', ', ' ORDER BY 1)
		   FROM pg_depend d
		  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
			AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
	  FROM rel c JOIN pg_sequence s ON s.seqrelid = c.oid
	UNION ALL
	SELECT 'relation ' || c.qname || ' statistics', 0, pg_get_statisticsobjdef(s.oid)
	  FROM rel c JOIN pg_statistic_ext s ON s.stxrelid = c.oid
	UNION ALL
	-- types: enums with their labels in order, domains with their constraints
	SELECT 'type ' || t.qname, 0, format('type %s: type %s category %s owner %s acl %s not null %s '
		'base %s default %L collation %s element %s relation %s array %s comment %L',
		t.qname, t.typtype, t.typcategory, pg_get_userbyid(t.typowner), t.typacl, t.typnotnull,
		CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) END, t.typdefault,
		(SELECT collname FROM pg_collation WHERE oid = t.typcollation),
		CASE WHEN t.typelem <> 0 THEN format_type(t.typelem, NULL) END,
		nullif(t.typrelid, 0)::regclass, CASE WHEN t.typarray <> 0 THEN format_type(t.typarray, NULL) END,
		obj_description(t.oid, 'pg_type'))
	  FROM typ t
	UNION ALL
	SELECT 'type ' || t.qname || ' label', (rank() OVER (PARTITION BY t.oid ORDER BY e.enumsortorder))::int,
		format('label %s sort order %s', e.enumlabel, e.enumsortorder)
	  FROM typ t JOIN pg_enum e ON e.enumtypid = t.oid
	UNION ALL
	SELECT 'type ' || t.qname || ' constraint', 0, format('constraint %s: %s validated %s comment %L',
		o.conname, pg_get_constraintdef(o.oid), o.convalidated, obj_description(o.oid, 'pg_constraint'))
	  FROM typ t JOIN pg_constraint o ON o.contypid = t.oid
	UNION ALL
	-- operators, casts, event triggers, and any other object in the schemas
	SELECT 'operator', 0, format('operator %s: code %s result %s commutator %s negator %s '
		'restrict %s join %s merges %s hashes %s comment %L', o.oid::regoperator, o.oprcode,
		o.oprresult::regtype, nullif(o.oprcom, 0)::regoperator, nullif(o.oprnegate, 0)::regoperator,
		o.oprrest, o.oprjoin, o.oprcanmerge, o.oprcanhash, obj_description(o.oid, 'pg_operator'))
	  FROM pg_operator o JOIN ns ON ns.oid = o.oprnamespace
	UNION ALL
	SELECT 'cast', 0, format('cast %s: function %s context %s method %s',
		pg_describe_object('pg_cast'::regclass, c.oid, 0), c.castfunc::regprocedure, c.castcontext,
		c.castmethod)
	  FROM pg_cast c
	 WHERE c.castsource IN (SELECT oid FROM typ) OR c.casttarget IN (SELECT oid FROM typ)
		OR c.castfunc IN (SELECT oid FROM fn)
	UNION ALL
	SELECT 'event trigger', 0, format('event trigger %s: event %s function %s enabled %s tags %s',
		t.evtname, t.evtevent, t.evtfoid::regprocedure, t.evtenabled, t.evttags)
	  FROM pg_event_trigger t
	UNION ALL
	SELECT 'schema object', 0, 'in schema: ' || pg_describe_object(x.classid, x.objid, 0)
	  FROM (SELECT 'pg_opclass'::regclass, oid, opcnamespace FROM pg_opclass
			UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfnamespace FROM pg_opfamily
			UNION ALL SELECT 'pg_collation'::regclass, oid, collnamespace FROM pg_collation
			UNION ALL SELECT 'pg_conversion'::regclass, oid, connamespace FROM pg_conversion
			UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgnamespace FROM pg_ts_config
			UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictnamespace FROM pg_ts_dict
			UNION ALL SELECT 'pg_ts_parser'::regclass, oid, prsnamespace FROM pg_ts_parser
			UNION ALL SELECT 'pg_ts_template'::regclass, oid, tmplnamespace FROM pg_ts_template)
		   AS x(classid, objid, nsp)
	 WHERE x.nsp IN (SELECT oid FROM ns)
	UNION ALL
	SELECT 'default acl', 0, format('default acl of %s in %s for %s: %s',
		pg_get_userbyid(a.defaclrole), a.defaclnamespace::regnamespace, a.defaclobjtype, a.defaclacl)
	  FROM pg_default_acl a
	UNION ALL
	-- catch-alls over every object this database made (OIDs from 16384 on):
	-- initial privileges, comments, dependencies, shared dependencies (roles)
	SELECT 'init privs', 0, format('init privs %s: %s %s',
		pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype, i.initprivs)
	  FROM pg_init_privs i WHERE i.privtype = 'e'
	UNION ALL
	SELECT 'comment', 0, format('comment on %s: %L',
		pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
	  FROM pg_description d WHERE d.objoid >= 16384
	UNION ALL
	SELECT 'depend', 0, format('%s depends on %s (%s)',
		pg_describe_object(d.classid, d.objid, d.objsubid),
		pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), d.deptype)
	  FROM pg_depend d WHERE d.objid >= 16384 OR d.refobjid >= 16384
	UNION ALL
	SELECT 'shared depend', 0, format('%s depends on %s (%s)',
		pg_describe_object(d.classid, d.objid, d.objsubid),
		pg_describe_object(d.refclassid, d.refobjid, 0), d.deptype)
	  FROM pg_shdepend d WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT f.k || ' | ' || f.n || ' | ' || f.line
  FROM (SELECT regexp_replace(regexp_replace(k, '(RI_ConstraintTrigger_[ac])_[0-9]+', '\1_N', 'g'),
							  'pg_toast_[0-9]+', 'pg_toast_N', 'g') AS k, n,
			   replace(regexp_replace(regexp_replace(line, '(RI_ConstraintTrigger_[ac])_[0-9]+', '\1_N', 'g'),
									  'pg_toast_[0-9]+', 'pg_toast_N', 'g'), E'\n', '\n') AS line
		  FROM facts) f
 ORDER BY f.k, f.n, f.line;
};

my $node = new_node('paths', conf => "smartconnector.database_name = 'direct'\n");
$node->safe_psql('postgres', 'CREATE DATABASE direct');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
my $version = q{SELECT extversion FROM pg_extension WHERE extname = 'smartconnector'};

# CREATE EXTENSION runs the install script of the version it installs when
# there is one, and looks for a chain of scripts only when there is none:
# the script is there, and it is the generated one.
note('extension scripts come from '
	  . $node->safe_psql('postgres', q{SELECT setting FROM pg_config WHERE name = 'SHAREDIR'}) . '/extension');
like($node->safe_psql('postgres', q{
	SELECT pg_read_file(setting || '/extension/smartconnector--0.2.sql', 0, 200)
	  FROM pg_config WHERE name = 'SHAREDIR'}),
	qr{^-- generated by make from sql/install/},
	'the server has the full install script of 0.2, written from sql/install/');
$node->safe_psql('direct', 'CREATE EXTENSION smartconnector');
is($node->safe_psql('direct', $version), '0.2', 'direct: CREATE EXTENSION installs 0.2');
my $direct = $node->safe_psql('direct', $describe);

$node->append_conf('postgresql.conf', "smartconnector.database_name = 'upgraded'\n");
$node->restart;
$node->safe_psql('upgraded', q{CREATE EXTENSION smartconnector VERSION '0.1'});
is($node->safe_psql('upgraded', $version), '0.1', 'upgraded: the released 0.1 installs');
$node->safe_psql('upgraded', 'ALTER EXTENSION smartconnector UPDATE');
is($node->safe_psql('upgraded', $version), '0.2', 'upgraded: ALTER EXTENSION UPDATE takes it to 0.2');
my $upgraded = $node->safe_psql('upgraded', $describe);

# the description covers the objects (a broken query must not compare two empty texts)
my %kinds;
$kinds{$_}++ for ($direct =~ /^(?:function|relation|type|extension) [^|]+\| 0 \| (function|relation|type|member) /mg);
note(join(', ', map { "$kinds{$_} ${_}s" } sort keys %kinds));
cmp_ok($kinds{function} // 0, '>=', 70, 'the description has every function');
cmp_ok($kinds{relation} // 0, '>=', 40, 'and every table, index, sequence and view');
cmp_ok($kinds{member} // 0, '>=', 90, 'and every member of the extension');

my $dir = PostgreSQL::Test::Utils::tempdir;
PostgreSQL::Test::Utils::append_to_file("$dir/direct", "$direct\n");
PostgreSQL::Test::Utils::append_to_file("$dir/upgraded", "$upgraded\n");
my $diff = '';
IPC::Run::run([ 'diff', '-u', '--label', '0.1 + ALTER EXTENSION UPDATE', '--label',
		'CREATE EXTENSION (the full script)', "$dir/upgraded", "$dir/direct" ], '>', \$diff);
ok($direct eq $upgraded,
	'the full script gives the catalog of 0.1 and the upgrade, object by object')
  or diag($diff);

done_testing();
