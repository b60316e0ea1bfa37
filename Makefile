# smartconnector: PGXS build, pg_regress suite (sql/, expected/) and TAP suite (test/t/).
#
# `make installcheck` runs both suites against their own temporary servers;
# it must run as a non-root user (see test/run for the full CI entry point).

EXTENSION = smartconnector
MODULE_big = smartconnector
OBJS = \
	src/smartconnector.o \
	src/guc.o \
	src/shmem.o \
	src/locks.o \
	src/plans.o \
	src/run.o \
	src/outbox.o \
	src/execution.o \
	src/compat.o \
	src/settings.o \
	src/identity.o \
	src/binding.o \
	src/url.o \
	src/worker.o \
	src/executor.o \
	src/launcher.o \
	src/dispatcher.o \
	src/transport.o \
	src/payload.o \
	src/cron.o

DATA = sql/smartconnector--0.1.sql sql/smartconnector--0.1--0.2.sql

REGRESS = settings access audit executions dispatch operations
REGRESS_OPTS = --temp-instance=./tmp_check_regress \
	--temp-config=$(srcdir)/test/regress.conf

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config

CURL_CFLAGS := $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS := $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

PG_CPPFLAGS = -I$(srcdir)/src $(CURL_CFLAGS)
# No -Werror here: a newer compiler's new warning must not break a user's
# build.  CI adds it (test/deps.sh, SC_WERROR=1): make COPT=-Werror.
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = $(CURL_LIBS)

EXTRA_CLEAN = tmp_check tmp_check_regress results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# A VPATH build (pg_buildext builds in build-<version>/) writes src/*.o there
ifdef VPATH
$(shell mkdir -p src)
endif

# PGXS tracks no header dependencies: every object depends on the shared header
$(OBJS): $(srcdir)/src/smartconnector.h
src/url.o src/transport.o: $(srcdir)/src/sc_curl.h

# after the include, which resets PROVE_FLAGS
PROVE_FLAGS += -I test/lib
