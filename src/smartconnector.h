/*-------------------------------------------------------------------------
 *
 * smartconnector.h
 *		Declarations shared by the smartconnector extension's source files.
 *
 * Each .c file owns one concern (see the banner of each file); this header
 * holds only what crosses file boundaries: GUC variables, the shared-memory
 * layout, and the functions one file offers to another.  libcurl types never
 * appear here: url.c and transport.c include curl (through sc_curl.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef SMARTCONNECTOR_H
#define SMARTCONNECTOR_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/spin.h"
#include "utils/guc.h"

#define SC_VERSION "0.2"
/* where the implementations and internals live (see sql/install/00-header.sql) */
#define SC_INTERNAL_SCHEMA "smartconnector_internal"

/* Room for an interval's text form in a progress slot (ScProgressSlot.overran) */
#define SC_MAX_DURATION_TEXT		64
/* Most executions an executor runs in one transaction (smartconnector.group_size) */
#define SC_MAX_GROUP				32

/* Limits on settings values, enforced by the validators in settings.c and url.c */
#define SC_MAX_URL_LENGTH			2048
#define SC_MAX_EMAIL_LENGTH			254
#define SC_MAX_EMAIL_LOCAL_LENGTH	64
#define SC_MAX_HEADERS				32
#define SC_MAX_HEADER_NAME_LENGTH	128
#define SC_MAX_HEADER_VALUE_LENGTH	4096
#define SC_MIN_SECRET_BYTES			24
#define SC_MAX_SECRET_BYTES			64

/* Limits on what a run may report (run.c) and be given (execution.c) */
#define SC_MAX_RECORD_KEY_LENGTH	1024
#define SC_MAX_RECORD_DETAIL_LENGTH	8192
/* an execution's input, as text */
#define SC_MAX_INPUT_BYTES			(1024 * 1024)
/* an execution's error, as stored and sent (payloads, emails) */
#define SC_MAX_ERROR_BYTES			8192

/*
 * Advisory lock spaces.  locktag_field4 tells advisory locks apart: SQL's
 * pg_advisory_lock uses 1 and 2, so our values never collide with an
 * application's locks, and no SQL function can take or release ours.
 * (0x5C01 marked running executions until 0.1's liveness moved to shared
 * memory; see shmem.c.)
 */
#define SC_LOCKSPACE_RECORD			0x5C02	/* lock_record() */
#define SC_LOCKSPACE_ADMISSION		0x5C03	/* admitting, or changing status or limit, by connector */
#define SC_LOCKSPACE_ENQUEUE		0x5C04	/* queueing (shared) against forgetting a queue head */

/* Record actions, in the order of the record_* columns */
typedef enum ScAction
{
	SC_ACTION_CREATED = 0,
	SC_ACTION_UPDATED,
	SC_ACTION_SKIPPED,
	SC_ACTION_FAILED,
	SC_NUM_ACTIONS
} ScAction;

/* What the owner of a progress slot is doing (ScProgressSlot.phase) */
typedef enum ScPhase
{
	SC_PHASE_IDLE = 0,
	SC_PHASE_ADMITTED,			/* admitted in a transaction not yet committed */
	SC_PHASE_HANDLER,			/* executor: inside the handler */
	SC_PHASE_COMMITTING,		/* executor: committing the handler's work, which
								 * runs its deferred triggers and held cursors */
	SC_PHASE_EXTERNAL,			/* session: between claim() and finish() */
	SC_PHASE_COMPLETING			/* executor: recording the outcome */
} ScPhase;

/*
 * The execution a backend runs, with its progress, visible to every
 * session.  execution_id is also the execution's liveness: the launcher
 * fails a running execution that no live backend's slot names.  Only our
 * code writes slots, so no SQL a handler or runner calls can give one up.
 */
typedef struct ScProgressSlot
{
	pg_atomic_uint64 execution_id;	/* 0 when none */
	pg_atomic_uint64 counts[SC_NUM_ACTIONS];
	pid_t		pid;			/* protected by ScShared.mutex */
	int			phase;			/* ScPhase; protected by ScShared.mutex */
	/* when the launcher terminates a handler that ignores cancel() or its
	 * statement_timeout (0: no such moment); protected by ScShared.mutex */
	TimestampTz stop_by;
	bool		stop_for_cancel;	/* stop_by comes from cancel() */
	bool		cancel_pending; /* cancelled before its handler started */
	/* the connector's max_duration, as text, once the launcher stopped the
	 * execution for running longer ("": not stopped); protected by
	 * ScShared.mutex */
	char		overran[SC_MAX_DURATION_TEXT];
	/* an executor's group (executor.c): the executions it admitted to run
	 * in one transaction, until that transaction's commit ends them; 0 in
	 * unused places.  They are alive as long as the backend is. */
	pg_atomic_uint64 group[SC_MAX_GROUP];
} ScProgressSlot;

/* What sc_stop_overrun() did */
typedef enum ScOverrun
{
	SC_OVERRUN_LATER,			/* nothing now: not in user code yet, or already told */
	SC_OVERRUN_INTERRUPTED,		/* the handler got a query cancel */
	SC_OVERRUN_TERMINATED,		/* the external runner's session was terminated */
	SC_OVERRUN_GONE				/* no live runner: ended as a runner that died */
} ScOverrun;

/* Phases in which a runner runs user code: cancel() interrupts it there */
#define SC_PHASE_RUNS_USER_CODE(phase) \
	((phase) == SC_PHASE_HANDLER || (phase) == SC_PHASE_COMMITTING)

/* One executor worker of the pool; each serves one role */
typedef struct ScExecutorSlot
{
	bool		in_use;			/* registered (starting or running) */
	bool		idle;			/* waiting for work on its latch */
	bool		retire;			/* the launcher wants the slot for another role */
	Oid			role;			/* the role it connects as */
	TimestampTz since;			/* when the launcher started it */
	pid_t		pid;
	Latch	   *latch;
} ScExecutorSlot;

/* A singleton worker others wake: its latch, published while it runs */
typedef struct ScWakeable
{
	Latch	   *latch;
	pid_t		pid;
} ScWakeable;

typedef struct ScShared
{
	slock_t		mutex;
	ScWakeable	launcher;
	ScWakeable	dispatcher;
	Oid			database_id;	/* set by the launcher; executors connect to it */
	int			num_progress_slots;
	ScProgressSlot *progress;	/* points after executors[] */
	int			num_executor_slots;
	ScExecutorSlot executors[FLEXIBLE_ARRAY_MEMBER];
} ScShared;

/* GUC variables (guc.c) */
extern char *sc_database_name;
extern int	sc_max_workers;
extern int	sc_executor_idle_timeout;
extern char *sc_report_url_template;
extern int	sc_webhook_timeout_ms;
extern bool sc_block_private_addresses;
extern char *sc_allowed_private_addresses;
extern bool sc_smtp_allow_plaintext_auth;
extern int	sc_max_connections_per_host;
extern int	sc_max_deliveries_in_flight;
extern char *sc_smtp_url;
extern char *sc_smtp_from;
extern char *sc_smtp_user;
extern char *sc_smtp_password;
extern int64 *sc_retry_schedule_ms;
extern int	sc_retry_schedule_len;
extern int	sc_history_retention_min;
extern int	sc_cancel_grace_ms;
extern int	sc_group_size;
extern int	sc_group_window_ms;
extern void sc_define_gucs(bool at_startup);

/*
 * What each file offers the others, from the bottom layer up.  A file calls
 * only into its own layer or those below it (README: Layout):
 *	workers (executor.c, launcher.c, dispatcher.c) and _PG_init
 *	SQL API (settings.c, identity.c, binding.c, url.c; run.c's record() ...)
 *	state machine (execution.c, outbox.c)
 *	the session's run (run.c), statements (plans.c)
 *	locks and commit actions (locks.c)
 *	shared memory (shmem.c)
 * and apart, called by the dispatcher only: transport.c, payload.c; cron.c.
 */

/* ---- shmem.c: shared state, liveness, signals ---- */
extern ScShared *sc_shared;
extern void sc_shmem_install_hooks(void);
extern void sc_publish_latch(ScWakeable *w);
extern void sc_wake_launcher(void);
extern void sc_wake_dispatcher(void);
extern bool sc_progress_slot_owner(int index, pid_t pid);
extern ScProgressSlot *sc_my_progress_slot(void);
extern bool sc_signal_runner(int64 execution_id, bool committing_only);
extern bool sc_runner_alive(int64 execution_id);
extern void sc_add_to_group(int64 execution_id);
extern void sc_remove_from_group(int64 execution_id);
extern bool sc_runner_counts(int64 execution_id, int64 *counts);
extern void sc_set_stop_by(TimestampTz stop_by, bool for_cancel);
extern ScOverrun sc_stop_overrun(int64 execution_id, const char *max_duration);
extern bool sc_my_overrun(char *max_duration);

/* ---- locks.c: per-connector locks, actions at commit or abort ---- */
typedef void (*ScXactAction) (int64 arg);
extern bool sc_lock_admissions(int64 connector_id, bool wait);
extern void sc_unlock_admissions(int64 connector_id);
extern bool sc_admissions_locked_by_executors(int64 connector_id);
extern void sc_lock_enqueue(int64 connector_id);
extern bool sc_lock_out_enqueues(int64 connector_id);
extern void sc_at_commit(ScXactAction fn, int64 arg);
extern void sc_on_abort(ScXactAction fn, int64 arg);
extern void sc_signal_runner_at_commit(int64 execution_id);
extern void sc_wake_at_commit(void);
extern void sc_wake_dispatcher_at_commit(void);

/* ---- plans.c: how our statements run ---- */
typedef struct ScPrivileged
{
	Oid			save_userid;
	int			save_sec_context;
	int			nest;
} ScPrivileged;
extern void sc_apply_plan_settings(bool whole_session);
extern struct _SPI_plan *sc_keep_plan(struct _SPI_plan **plan, const char *sql, int nargs,
									  Oid *types);
extern int	sc_pin_settings(void);
extern void sc_unpin_settings(int nest);
extern void sc_privileged_begin(ScPrivileged *p);
extern void sc_privileged_end(ScPrivileged *p);
extern void sc_privileged_reset(void);
extern bool sc_plan_settings_pinned(void);
extern void sc_spi_connect(void);
extern bool sc_try_in_subtransaction(void (*work) (void *), void *arg);

/* ---- run.c: the session's run ---- */
typedef struct ScRunInfo
{
	int64		execution_id;
	int64		connector_id;
	bool		dry_run;
	bool		external;		/* claim()ed, not a handler's */
	bool		ending;			/* ended by this transaction, not committed yet */
	const int64 *counts;		/* SC_NUM_ACTIONS */
} ScRunInfo;
extern int64 sc_current_execution_id(void);
extern bool sc_current_run(ScRunInfo *info);
extern void sc_occupy_slot(int64 execution_id);
extern void sc_begin_current(int64 execution_id, int64 connector_id,
							 bool diff_check, bool dry_run, ScPhase phase);
extern bool sc_set_phase(ScPhase phase);
extern void sc_clear_current(void);
extern void sc_clear_current_at_commit(void);
extern void sc_forget_current_on_abort(void);
extern void sc_flush_report(void);
extern void sc_flush_hashes(void);
extern void sc_install_utility_hook(void);

/* ---- outbox.c: the deliveries of an ended execution ---- */
/*
 * Columns of a statement that reads an ended execution as x joined to its
 * connector as c: the connector, the webhook's URL and host, the three
 * email addresses in order of reason (the error address only for a
 * failure), the event (event() is inlined, so it is built once), and the
 * webhook's credentials.
 */
#define SC_OUTBOX_COLUMNS \
	" x.connector_id, c.execution_ended_webhook_url," \
	" smartconnector.url_host(c.execution_ended_webhook_url)," \
	" c.notification_email," \
	" CASE WHEN x.state IN ('failed', 'partial_success')" \
	"      THEN c.error_notification_email END," \
	" (SELECT u.email FROM smartconnector.user_email u" \
	"   WHERE u.role_name = x.initiated_by)," \
	" smartconnector_internal.event(x, c)," \
	" c.webhook_secret, c.webhook_headers"
#define SC_OUTBOX_NCOLUMNS 9
struct HeapTupleData;
extern void sc_queue_deliveries(int64 execution_id, struct HeapTupleData *tup,
								TupleDesc desc, int first);

/* ---- execution.c: the state machine ---- */
/* Whether an execution's counted work was committed (execution.committed) */
typedef enum ScCommitted
{
	SC_COMMITTED_UNKNOWN,		/* an external runner commits its own work */
	SC_COMMITTED_NO,			/* rolled back: a failed handler, a dry run */
	SC_COMMITTED_YES
} ScCommitted;
/* Why the launcher stopped an execution's runner (sc_end_dead_runs()) */
typedef struct ScStopReason
{
	int64		execution_id;
	char	   *reason;
	bool		cancelled;		/* it was cancel() that the handler ignored */
} ScStopReason;
/* Whether an execution of a connector may join an executor's group */
typedef bool (*ScGroupFilter) (int64 connector_id);
extern int64 sc_admit_next(Oid role, ScGroupFilter may_join, int64 *connector_id);
extern int64 sc_claim_next(int64 connector_id, bool schema_0_1, bool *diff_check,
						   bool *dry_run);
extern int64 sc_fail_next(int64 connector_id, const char *api_name, const char *problem);
extern char *sc_end_execution(int64 execution_id, const int64 *counts, const char *error,
							  const char *metadata_json, const char *handler_result_json,
							  ScCommitted committed, Oid *state_oid);
extern char *sc_end_current(const char *error, const char *metadata_json,
							const char *handler_result_json, ScCommitted committed,
							Oid *state_oid);
extern int	sc_end_dead_runs(const ScStopReason *stops, int n_stops);
extern void sc_queue_followers_of(int64 execution_id);
extern char *sc_error_metadata(const char *sqlstate, const char *detail, const char *hint,
							   const char *context);

/* ---- the SQL API's helpers ---- */
/* settings.c: the viewer's column hint */
extern void sc_install_column_hint_hook(void);
/* identity.c: the acting role */
extern Oid	sc_acting_role(void);
/* binding.c: which routine and role a connector's handler is */
typedef struct ScBinding
{
	Oid			handler;		/* the routine to call, or InvalidOid */
	Oid			run_as;			/* the role to run it as, or InvalidOid */
	bool		is_procedure;
	Oid			rettype;
	char	   *problem;		/* why it cannot run now, or NULL */
} ScBinding;
extern int64 sc_system_identifier(void);
extern void sc_check_binding(const char *handler, Oid handler_oid, const char *run_as,
							 Oid run_as_oid, bool bound_here, ScBinding *binding);
extern char *sc_role_problem(const char *run_as, Oid run_as_oid, bool bound_here, Oid *role);
/* url.c */
extern bool sc_url_has_credentials(const char *url);

/* ---- worker.c: what the background workers share ---- */
struct BackgroundWorker;
extern void sc_fill_worker(struct BackgroundWorker *worker, const char *function,
						   const char *name, const char *type);
extern void sc_work_begin(const char *activity);
extern void sc_work_commit(void);
extern long sc_stats_nap(long timeout_ms);
extern bool sc_extension_installed(bool wait);

/* executor.c, launcher.c, dispatcher.c (bgworker entry points are exported for the postmaster) */
extern PGDLLEXPORT void sc_executor_main(Datum arg);
extern PGDLLEXPORT void sc_launcher_main(Datum arg);
extern PGDLLEXPORT void sc_dispatcher_main(Datum arg);
extern void sc_register_launcher(void);
extern void sc_register_dispatcher(void);

/* ---- apart: the dispatcher's transport (transport.c) and payloads (payload.c) ---- */
/* The outcome of one delivery attempt (transport.c to dispatcher.c) */
typedef struct ScTransferResult
{
	int64		delivery_id;
	TimestampTz due_at;			/* the delivery's next_attempt_at when it was fetched */
	bool		ok;				/* 2xx, or the SMTP server accepted it */
	bool		permanent;		/* do not retry (refused private address) */
	int			status;			/* HTTP status or SMTP reply code; 0 if none */
	int			retry_after_s;	/* Retry-After, or -1 */
	char	   *error;
	char	   *response;		/* first 4 kB of the body, or NULL */
	TimestampTz finished_at;
} ScTransferResult;
/* smartconnector.allowed_private_addresses */
extern bool sc_check_allowed_networks(char **newval, void **extra, GucSource source);
extern void sc_assign_allowed_networks(const char *newval, void *extra);
extern void sc_transport_init(void);
extern void sc_transport_configure(void);
extern void sc_transport_shutdown(void);
extern int	sc_transport_in_flight(void);
extern bool sc_transport_has(int64 delivery_id);
extern int	sc_transport_host_count(const char *host);
extern void sc_transport_add_webhook(int64 delivery_id, TimestampTz due_at, const char *host,
									 const char *url, const char *body, List *headers);
extern void sc_transport_add_email(int64 delivery_id, TimestampTz due_at, const char *to,
								   const char *message);
extern bool sc_transport_wait(long timeout_ms);
extern List *sc_transport_take_results(void);
extern void sc_transport_free_results(List *results);
extern char *sc_webhook_signature(const char *secret, const char *msg_id, int64 timestamp,
								  const char *body);
extern char *sc_email_message(const char *from, const char *to, const char *subject,
							  const char *body, const char *msg_id, int64 execution_id);

#endif							/* SMARTCONNECTOR_H */
