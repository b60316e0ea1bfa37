/*
 * Section 70: the email addresses of roles.
 *
 * The initiator of an execution is mailed at its end when its role has an
 * address here.  Every role sets its own (set_user_email()), admins anyone's;
 * addresses are checked like the connectors' (check_email()).
 */

/* Email addresses of roles, for notifying whoever initiated an execution. */
CREATE TABLE smartconnector.user_email (
	role_name name PRIMARY KEY,
	email text NOT NULL
);
COMMENT ON TABLE smartconnector.user_email IS
	'Email address of a role; the initiator of an execution is notified of its completion';
REVOKE ALL ON smartconnector.user_email FROM PUBLIC;
GRANT SELECT ON smartconnector.user_email TO smartconnector_viewer;
GRANT INSERT, UPDATE, DELETE ON smartconnector.user_email TO smartconnector_admin;

CREATE FUNCTION smartconnector_internal.user_email_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM smartconnector.check_email(NEW.email, 'email');
	RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION smartconnector_internal.user_email_validate() FROM PUBLIC;
CREATE TRIGGER user_email_validate
	BEFORE INSERT OR UPDATE ON smartconnector.user_email
	FOR EACH ROW EXECUTE FUNCTION smartconnector_internal.user_email_validate();

/* Set (or with NULL remove) a role's email; your own, or anyone's as an admin. */
CREATE FUNCTION smartconnector_internal.set_user_email_impl(email text, role_name name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	caller name := smartconnector.calling_role();
	target name := coalesce(set_user_email_impl.role_name, caller);
BEGIN
	IF target <> caller AND NOT pg_catalog.pg_has_role(caller, 'smartconnector_admin', 'MEMBER') THEN
		RAISE EXCEPTION 'permission denied to set the email of role "%"', target
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Roles set their own address; admins may set anyone''s.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = target) THEN
		RAISE EXCEPTION 'role "%" does not exist', target USING ERRCODE = 'undefined_object';
	END IF;
	IF email IS NULL THEN
		DELETE FROM smartconnector.user_email u WHERE u.role_name = target;
	ELSE
		INSERT INTO smartconnector.user_email AS u (role_name, email) VALUES (target, email)
		ON CONFLICT (role_name) DO UPDATE SET email = excluded.email;
	END IF;
END
$$;
REVOKE ALL ON FUNCTION smartconnector_internal.set_user_email_impl(text, name) FROM PUBLIC;
CREATE FUNCTION smartconnector.set_user_email(email text, role_name name DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sc_entry';
COMMENT ON FUNCTION smartconnector.set_user_email(text, name) IS
	'Set or (with NULL) remove the email address a role is notified at';
REVOKE ALL ON FUNCTION smartconnector.set_user_email(text, name) FROM PUBLIC;
/* every role manages its own address */
GRANT EXECUTE ON FUNCTION smartconnector.set_user_email(text, name) TO PUBLIC;
