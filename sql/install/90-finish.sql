/*
 * Section 90: what the install does last.
 *
 * Tell pg_dump which of the extension's tables and sequences hold users'
 * data.  One list, in 0.1's order rather than beside each table:
 * pg_extension.extconfig keeps them in the order of these calls, and an
 * installation of 0.1 that was upgraded has them in this order (the queue
 * heads are not dumped).  Then wake the workers, so that they see the new
 * extension at once.
 */

/* pg_dump keeps connectors, aliases and their audit trail */
SELECT pg_catalog.pg_extension_config_dump('smartconnector.connector', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.api_name_alias', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.settings_history', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.connector_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.settings_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.execution_record', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector_internal.queue', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.delivery_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.user_email', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.chain', '');
SELECT pg_catalog.pg_extension_config_dump('smartconnector.record_hash', '');

/* the workers notice the new extension at once, not at their next nap */
SELECT smartconnector_internal.wake_at_commit();
SELECT smartconnector_internal.wake_dispatcher_at_commit();
