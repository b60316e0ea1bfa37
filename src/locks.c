/*-------------------------------------------------------------------------
 *
 * locks.c
 *		The per-connector locks (admission, enqueue), and the actions that
 *		must happen exactly when a transaction commits or aborts.
 *
 * Admission of a connector's executions serialises on a transaction-level
 * advisory lock in our own lock space (SC_LOCKSPACE_ADMISSION), which
 * status, limit, handler and run_as changes take too; queueing takes the
 * enqueue lock (SC_LOCKSPACE_ENQUEUE) in share mode, against an admission
 * forgetting the connector's queue head.  A running execution's liveness is
 * not a lock but its runner's progress slot in shared memory (shmem.c),
 * which no SQL function can release.
 *
 * The actions tied to transaction end, for the layers above: a function to
 * run when the (sub)transaction commits or when it aborts
 * (sc_at_commit(), sc_on_abort(): run.c forgets a session's execution
 * with them, so there is never a moment when an execution is "running"
 * without a live runner); the launcher and the dispatcher are woken at
 * commit (never before the rows they should see are visible); runners of
 * cancelled executions are signalled.  This file calls nothing above it.
 *
 * The transaction callbacks are registered once per backend, the first time
 * they are needed, and never again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "utils/memutils.h"

#include "smartconnector.h"

PG_FUNCTION_INFO_V1(lock_admissions);
PG_FUNCTION_INFO_V1(runner_alive);
PG_FUNCTION_INFO_V1(wake_at_commit);
PG_FUNCTION_INFO_V1(wake_dispatcher_at_commit);

typedef struct PendingAction
{
	ScXactAction action;
	int64		arg;
	bool		at_commit;		/* else on abort */
	int			nest_level;		/* subtransaction level it belongs to */
} PendingAction;

static List *pending_actions = NIL;	/* in TopMemoryContext */
static bool wake_pending = false;
static bool wake_dispatcher_pending = false;
static bool callbacks_registered = false;

static void register_callbacks(void);
static void remember(ScXactAction fn, int64 arg, bool at_commit);
static void signal_runner(int64 execution_id);
static void xact_callback(XactEvent event, void *arg);
static void subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							 SubTransactionId parentSubid, void *arg);

/*
 * Our transaction callbacks, registered once per process on first use.
 */
static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	callbacks_registered = true;
}

/*
 * Remember an action for the end of the current (sub)transaction.
 */
static void
remember(ScXactAction fn, int64 arg, bool at_commit)
{
	MemoryContext old;
	PendingAction *action;

	register_callbacks();
	old = MemoryContextSwitchTo(TopMemoryContext);
	action = palloc(sizeof(PendingAction));
	action->action = fn;
	action->arg = arg;
	action->at_commit = at_commit;
	action->nest_level = GetCurrentTransactionNestLevel();
	pending_actions = lappend(pending_actions, action);
	MemoryContextSwitchTo(old);
}

/*
 * Serialise with every other admission of a connector and with changes of
 * its status or limit, until the end of the transaction.  A lock-manager
 * lock rather than the connector's row lock: taking that wrote the row's
 * lock bit (and WAL) on every admission, and cost a statement.
 */
static void
connector_locktag(LOCKTAG *tag, int64 connector_id, uint16 space)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 (uint32) ((uint64) connector_id >> 32),
						 (uint32) connector_id,
						 space);
}

static void
admission_locktag(LOCKTAG *tag, int64 connector_id)
{
	connector_locktag(tag, connector_id, SC_LOCKSPACE_ADMISSION);
}

/* Returns false only when !wait and another transaction holds it. */
bool
sc_lock_admissions(int64 connector_id, bool wait)
{
	LOCKTAG		tag;

	admission_locktag(&tag, connector_id);
	return LockAcquire(&tag, ExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Whether a connector's admission lock is held only by executors, which
 * hold it for the short transaction of one admission (or by nobody any
 * more).  Otherwise some other session holds it: a change of the
 * connector's settings, whose transaction may stay open for any time.
 */
bool
sc_admissions_locked_by_executors(int64 connector_id)
{
	LOCKTAG		tag;
	VirtualTransactionId *holders;
	int			n;
	bool		executors_only = true;

	admission_locktag(&tag, connector_id);
	holders = GetLockConflicts(&tag, ExclusiveLock, &n);
	for (int i = 0; i < n && executors_only; i++)
	{
		PGPROC	   *proc = BackendIdGetProc(holders[i].backendId);
		bool		found = false;

		if (proc == NULL)
		{
			/* not a backend: a prepared transaction, which may stay for any time */
			executors_only = false;
			break;
		}
		SpinLockAcquire(&sc_shared->mutex);
		for (int k = 0; k < sc_max_workers && !found; k++)
			found = sc_shared->executors[k].in_use && sc_shared->executors[k].pid == proc->pid;
		SpinLockRelease(&sc_shared->mutex);
		executors_only = found;
	}
	return executors_only;
}

/*
 * The queue heads (smartconnector_internal.queue_head, one row per
 * connector with a handler and queued work) are what executors read to
 * find the next connector to admit from.  An admission that empties a
 * connector's queue deletes its row, and must not do so while an execution
 * of that connector is being queued by a transaction not yet committed: its
 * queue row would then have no head row, and wait for the launcher's
 * repair.  So enqueue() takes the connector's enqueue lock in share mode
 * before it queues (enqueues never wait for each other), and the admission
 * deletes the row only if it gets the lock exclusively without waiting,
 * keeping it to the end of its own (short) transaction.
 */
static void
enqueue_locktag(LOCKTAG *tag, int64 connector_id)
{
	connector_locktag(tag, connector_id, SC_LOCKSPACE_ENQUEUE);
}

/*
 * The share lock enqueue() takes before it queues an execution, until the
 * end of the transaction.
 */
void
sc_lock_enqueue(int64 connector_id)
{
	LOCKTAG		tag;

	enqueue_locktag(&tag, connector_id);
	(void) LockAcquire(&tag, ShareLock, false, false);
}

/*
 * Whether no transaction is queueing an execution of the connector now; if
 * so, none can start to until this transaction ends.  Never waits.
 */
bool
sc_lock_out_enqueues(int64 connector_id)
{
	LOCKTAG		tag;

	enqueue_locktag(&tag, connector_id);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Give the lock back before the end of the transaction: an admission that
 * admitted nothing wrote nothing under it, and must not keep it while it
 * tries other connectors (two executors, or an executor and a statement
 * changing several connectors, could otherwise wait for each other).
 */
void
sc_unlock_admissions(int64 connector_id)
{
	LOCKTAG		tag;

	admission_locktag(&tag, connector_id);
	LockRelease(&tag, ExclusiveLock, false);
}

/*
 * Wake the launcher when the current transaction commits.
 */
void
sc_wake_at_commit(void)
{
	register_callbacks();
	wake_pending = true;
}

/*
 * Wake the dispatcher when the current transaction commits (deliveries
 * were queued).
 */
void
sc_wake_dispatcher_at_commit(void)
{
	register_callbacks();
	wake_dispatcher_pending = true;
}

/*
 * Run fn(arg) when the current (sub)transaction commits, or when it aborts.
 * It runs outside any transaction, so it must not fail or touch tables.
 */
void
sc_at_commit(ScXactAction fn, int64 arg)
{
	remember(fn, arg, true);
}

void
sc_on_abort(ScXactAction fn, int64 arg)
{
	remember(fn, arg, false);
}

static void
signal_runner(int64 execution_id)
{
	(void) sc_signal_runner(execution_id, false);
}

/*
 * Interrupt the runner of an execution cancelled in this transaction once
 * the cancel is committed, so that the runner sees cancel_requested when it
 * records the outcome.
 */
void
sc_signal_runner_at_commit(int64 execution_id)
{
	remember(signal_runner, execution_id, true);
}

/*
 * Run the actions of a (sub)transaction at or below nest level "level" that
 * ended with commit or abort; keep the others.
 */
static void
run_pending(bool commit, int level)
{
	List	   *keep = NIL;
	ListCell   *lc;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	foreach(lc, pending_actions)
	{
		PendingAction *action = (PendingAction *) lfirst(lc);

		if (action->nest_level < level)
		{
			keep = lappend(keep, action);
			continue;
		}
		if (action->at_commit == commit)
			action->action(action->arg);
		pfree(action);
	}
	list_free(pending_actions);
	pending_actions = keep;
	MemoryContextSwitchTo(old);
}

/*
 * At top-level commit or abort: release, signal, forget and wake.
 */
static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (pending_actions != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that admitted, ended or cancelled a smartconnector execution")));
			/* a prepared settings change would hold the connector's admission lock indefinitely */
			if (wake_pending || wake_dispatcher_pending)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that queued or cancelled an execution or changed what may start"),
						 errdetail("Executors and the launcher would wait for it until COMMIT PREPARED.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			run_pending(true, 0);
			if (wake_dispatcher_pending)
				sc_wake_dispatcher();
			if (wake_pending)
				sc_wake_launcher();
			wake_pending = false;
			wake_dispatcher_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			run_pending(false, 0);
			wake_pending = false;
			wake_dispatcher_pending = false;
			break;
		default:
			break;
	}
}

/*
 * At subtransaction end: an aborted savepoint undoes its admissions; a
 * released one hands its actions to the parent.
 */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
		run_pending(false, level);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_actions)
		{
			PendingAction *action = (PendingAction *) lfirst(lc);

			if (action->nest_level >= level)
				action->nest_level = level - 1;
		}
	}
}

/*
 * lock_admissions(connector_id bigint) returns void: for the settings
 * trigger, when a connector's status, limit, handler or run_as changes.
 */
Datum
lock_admissions(PG_FUNCTION_ARGS)
{
	(void) sc_lock_admissions(PG_GETARG_INT64(0), true);
	PG_RETURN_VOID();
}

/*
 * runner_alive(execution_id bigint) returns boolean: whether a live
 * backend runs it (shmem.c).
 */
Datum
runner_alive(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(sc_runner_alive(PG_GETARG_INT64(0)));
}

/*
 * wake_at_commit() returns void: wake the launcher when this transaction
 * commits (new queued work, a freed slot, a raised limit).
 */
Datum
wake_at_commit(PG_FUNCTION_ARGS)
{
	sc_wake_at_commit();
	PG_RETURN_VOID();
}

/*
 * wake_dispatcher_at_commit() returns void: deliveries were queued.
 */
Datum
wake_dispatcher_at_commit(PG_FUNCTION_ARGS)
{
	sc_wake_dispatcher_at_commit();
	PG_RETURN_VOID();
}
