# test/deps.sh: sourced by test/run, test/package.sh and demo/run.
#
# sc_install_packages installs, from Debian 12's own repositories, what
# smartconnector needs to build, test and demonstrate itself, and skips
# what is already there.  Debian's postgresql-common would create and start a
# "15/main" cluster on install; we tell it not to, since every test and the
# demo bring their own throwaway cluster.

SC_PACKAGES=(
	build-essential pkg-config perl procps binutils
	debhelper dpkg-dev postgresql-server-dev-all
	postgresql-15 postgresql-server-dev-15 postgresql-15-cron
	libcurl4-openssl-dev
	libipc-run-perl
	python3 python3-aiosmtpd
)

sc_install_packages()
{
	local missing=() p
	for p in "${SC_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0

	if [[ $(id -u) -ne 0 ]]; then
		echo "smartconnector: missing Debian packages: ${missing[*]}" >&2
		echo "smartconnector: run this as root, or install them first" >&2
		return 1
	fi
	echo "smartconnector: installing ${missing[*]}"
	if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
		mkdir -p /etc/postgresql-common
		echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"${missing[@]}" >/dev/null
}

# Build and install the extension into PostgreSQL 15.
sc_build_install()
{
	local src=$1
	# CI (SC_WERROR=1, set by .ci/run) treats warnings as errors; users' builds do not
	make -C "$src" -s -j2 PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config \
		${SC_WERROR:+COPT=-Werror} >/dev/null
	if [[ $(id -u) -eq 0 ]]; then
		make -C "$src" -s install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config >/dev/null
	else
		sudo make -C "$src" -s install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config >/dev/null
	fi
}

# The library exports only what PostgreSQL looks up by name (the module
# magic, _PG_init, SQL-callable functions and their pg_finfo_ records) and
# symbols prefixed sc_ (our workers' entry points and shared internals), so
# that it cannot clash with another extension's symbols.
sc_check_exports()
{
	local lib=$1 syms bad=""
	syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {print $3}')
	for s in $syms; do
		case $s in
			sc_* | pg_finfo_* | _PG_init | Pg_magic_func | _init | _fini) ;;
			*) grep -qx "pg_finfo_$s" <<<"$syms" || bad="$bad $s" ;;
		esac
	done
	if [[ -n $bad ]]; then
		echo "smartconnector.so exports symbols without the sc_ prefix:$bad" >&2
		return 1
	fi
}

# Run a command as the postgres user when we are root (PostgreSQL refuses
# to run as root), as ourselves otherwise.
sc_as_postgres()
{
	if [[ $(id -u) -eq 0 ]]; then
		# from /, which postgres may enter (the checkout may be under /root)
		(cd / && runuser -u postgres -- env PATH="/usr/lib/postgresql/15/bin:$PATH" "$@")
	else
		env PATH="/usr/lib/postgresql/15/bin:$PATH" "$@"
	fi
}

# A copy of the source tree that the postgres user may write in (the
# checkout may sit in a directory only root can enter).
sc_writable_copy()
{
	local src=$1 dest
	dest=$(mktemp -d /tmp/smartconnector.XXXXXX)
	tar -C "$src" --exclude=.git --exclude=tmp_check --exclude=tmp_check_regress -cf - . |
		tar -C "$dest" -xf -
	[[ $(id -u) -eq 0 ]] && chown -R postgres: "$dest"
	chmod 755 "$dest"
	echo "$dest"
}
