#!/usr/bin/env bash
# test/package.sh: the Debian package.  Builds postgresql-15-smartconnector
# from this tree as PostgreSQL's own extension packages are built
# (dpkg-buildpackage, pg_buildext), installs it, checks that the files in
# place are the package's, and runs the pg_regress suite against them.
# Run by test/run after the source-built suites; needs root (dpkg -i).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$src/test/deps.sh"
sc_install_packages

build=$(mktemp -d /tmp/smartconnector-deb.XXXXXX)
trap 'rm -rf "$build"' EXIT
mkdir "$build/smartconnector"
# the tracked files only: what a release tarball would hold
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
	git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$build/smartconnector")
else
	tar -C "$src" --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=tmp_check \
		--exclude=tmp_check_regress --exclude=results -cf - . | tar -C "$build/smartconnector" -xf -
fi
(cd "$build/smartconnector" && dpkg-buildpackage -us -uc -b >"$build/build.log" 2>&1) ||
	{ tail -n 40 "$build/build.log"; exit 1; }
deb=$(ls "$build"/postgresql-15-smartconnector_*.deb)
echo "smartconnector: built $(basename "$deb")"
dpkg -i "$deb" >/dev/null

# what PostgreSQL loads now is what the package installed
dpkg --verify postgresql-15-smartconnector
for f in smartconnector.so smartconnector.control smartconnector--0.1.sql smartconnector--0.1--0.2.sql \
	smartconnector--0.2.sql; do
	dpkg -L postgresql-15-smartconnector | grep -q "/$f\$" || { echo "package lacks $f" >&2; exit 1; }
done
sc_check_exports /usr/lib/postgresql/15/lib/smartconnector.so

work=$(sc_writable_copy "$src")
trap 'rm -rf "$build" "$work"' EXIT
sc_as_postgres make -C "$work" -s installcheck TAP_TESTS= \
	PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ||
	{ cat "$work/regression.diffs" 2>/dev/null; exit 1; }
echo "smartconnector: the installed package passes the pg_regress suite"
