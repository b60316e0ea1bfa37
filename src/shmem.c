/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of smartconnector: where the launcher's latch is, the
 *		executor pool, and one progress slot per backend.
 *
 * A progress slot names the execution its backend runs, and that is the
 * execution's liveness: an execution is alive while the backend that
 * admitted it lives and its slot still names it (sc_runner_alive).  The
 * slot is set in the transaction that admits the execution (and cleared if
 * that aborts), cleared when the transaction that ends it commits, and
 * cleared by the backend's exit; a crash restart clears all of shared
 * memory.  No SQL function writes slots, so nothing a handler or an
 * external runner calls (pg_advisory_unlock_all(), DISCARD) can release an
 * execution's claim on its slot of the connector's limit.
 *
 * Locking rules:
 *	- ScShared.mutex (a spinlock) protects the launcher fields, the executor
 *	  slots and the "phase" and "pid" fields of progress slots.  Hold it only
 *	  for a few instructions; never across anything that can error.
 *	- A progress slot's counters and execution_id are atomics written only
 *	  by the backend that owns the slot (index MyBackendId - 1) and read by
 *	  anyone, so readers may see a slightly stale count but never a torn one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/sinvaladt.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "smartconnector.h"

ScShared   *sc_shared = NULL;

PG_FUNCTION_INFO_V1(executor_slots);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size sc_shmem_size(void);
static void sc_shmem_request(void);
static void sc_shmem_startup(void);

/*
 * Bytes of shared memory we need: the header, the executor slots and a
 * progress slot per backend (MaxBackends is final when hooks run).
 */
static Size
sc_shmem_size(void)
{
	Size		size = MAXALIGN(offsetof(ScShared, executors));

	size = add_size(size, mul_size(sc_max_workers, sizeof(ScExecutorSlot)));
	size = MAXALIGN(size);
	size = add_size(size, mul_size(MaxBackends, sizeof(ScProgressSlot)));
	return size;
}

/*
 * shmem_request_hook: reserve our shared memory.
 */
static void
sc_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sc_shmem_size());
}

/*
 * shmem_startup_hook: create or attach to the shared state.
 */
static void
sc_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	sc_shared = ShmemInitStruct("smartconnector", sc_shmem_size(), &found);
	if (!found)
	{
		Size		progress_offset;

		memset(sc_shared, 0, sc_shmem_size());
		SpinLockInit(&sc_shared->mutex);
		sc_shared->num_executor_slots = sc_max_workers;
		progress_offset = MAXALIGN(offsetof(ScShared, executors) +
								   sc_max_workers * sizeof(ScExecutorSlot));
		sc_shared->progress = (ScProgressSlot *) ((char *) sc_shared + progress_offset);
		sc_shared->num_progress_slots = MaxBackends;
		for (int i = 0; i < MaxBackends; i++)
		{
			ScProgressSlot *slot = &sc_shared->progress[i];

			pg_atomic_init_u64(&slot->execution_id, 0);
			for (int k = 0; k < SC_NUM_ACTIONS; k++)
				pg_atomic_init_u64(&slot->counts[k], 0);
			for (int k = 0; k < SC_MAX_GROUP; k++)
				pg_atomic_init_u64(&slot->group[k], 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Install the shared memory hooks (from _PG_init, while preloading).
 */
void
sc_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = sc_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = sc_shmem_startup;
}

/*
 * before_shmem_exit: nobody is to set this process's latch any more.
 */
static void
unpublish_latch(int code, Datum arg)
{
	ScWakeable *w = (ScWakeable *) DatumGetPointer(arg);

	SpinLockAcquire(&sc_shared->mutex);
	if (w->pid == MyProcPid)
	{
		w->latch = NULL;
		w->pid = 0;
	}
	SpinLockRelease(&sc_shared->mutex);
}

/*
 * Let others wake this process (the launcher or the dispatcher) until it
 * exits.
 */
void
sc_publish_latch(ScWakeable *w)
{
	SpinLockAcquire(&sc_shared->mutex);
	w->latch = MyLatch;
	w->pid = MyProcPid;
	SpinLockRelease(&sc_shared->mutex);
	before_shmem_exit(unpublish_latch, PointerGetDatum(w));
}

/*
 * Set the latch of a singleton worker, if it runs.  Safe to call anywhere
 * outside a signal handler, including at commit.
 */
static void
wake(ScWakeable *w)
{
	Latch	   *latch;

	if (sc_shared == NULL)
		return;
	SpinLockAcquire(&sc_shared->mutex);
	latch = w->latch;
	SpinLockRelease(&sc_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

void
sc_wake_launcher(void)
{
	if (sc_shared != NULL)
		wake(&sc_shared->launcher);
}

void
sc_wake_dispatcher(void)
{
	if (sc_shared != NULL)
		wake(&sc_shared->dispatcher);
}

/*
 * This backend's progress slot, or NULL when shared memory is absent (the
 * library was not preloaded).
 */
ScProgressSlot *
sc_my_progress_slot(void)
{
	if (sc_shared == NULL || MyBackendId <= 0 ||
		MyBackendId > sc_shared->num_progress_slots)
		return NULL;
	return &sc_shared->progress[MyBackendId - 1];
}

/*
 * Interrupt the executor that runs execution_id, with the same SIGINT a
 * query cancel sends, while it runs user code (its handler, or the commit
 * of the handler's work, which runs its deferred triggers and held
 * cursors), and give it smartconnector.cancel_grace to stop; the launcher
 * terminates it after that.  An executor on its way to the handler is told
 * to cancel as soon as it gets there.  With committing_only, only an
 * executor committing is interrupted (cancel() does so before it waits for
 * the execution's row, which that commit holds).  An external runner's
 * session gets the query cancel too, which interrupts the statement it
 * runs (if idle, PostgreSQL ignores it); nothing else can make it stop.
 * Returns whether a signal was sent.
 */
bool
sc_signal_runner(int64 execution_id, bool committing_only)
{
	ScProgressSlot *target = NULL;
	int			target_index = -1;
	pid_t		pid = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (sc_shared == NULL)
		return false;
	SpinLockAcquire(&sc_shared->mutex);
	for (int i = 0; i < sc_shared->num_progress_slots && target == NULL; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];

		if ((int64) pg_atomic_read_u64(&slot->execution_id) == execution_id &&
			slot->phase != SC_PHASE_IDLE)
		{
			target = slot;
			target_index = i;
		}
	}
	if (target != NULL && committing_only && target->phase != SC_PHASE_COMMITTING)
		target = NULL;
	if (target != NULL && target->phase == SC_PHASE_EXTERNAL)
	{
		/* a runner that cancels its own execution is not interrupted */
		pid = (target->pid == MyProcPid) ? 0 : target->pid;
		target = NULL;
	}
	if (target != NULL && !SC_PHASE_RUNS_USER_CODE(target->phase))
	{
		target->cancel_pending = true;
		target = NULL;
	}
	if (target != NULL)
	{
		if (!target->stop_for_cancel)
		{
			target->stop_by = now + (TimestampTz) sc_cancel_grace_ms * 1000;
			target->stop_for_cancel = true;
		}
		pid = target->pid;
	}
	SpinLockRelease(&sc_shared->mutex);

	/* no system call under the spinlock; and never a PID reused since */
	if (pid == 0 || !sc_progress_slot_owner(target_index, pid))
		return false;
	kill(pid, SIGINT);
	return true;
}

/*
 * Whether the backend in progress slot index's place is still the process
 * pid that filled it in.  A slot keeps its values when its backend dies,
 * and the pid may since belong to an unrelated process: check before
 * signalling it.  Not under the spinlock.
 */
bool
sc_progress_slot_owner(int index, pid_t pid)
{
	PGPROC	   *proc;

	if (pid == 0 || index < 0 || index >= sc_shared->num_progress_slots)
		return false;
	proc = BackendIdGetProc(index + 1);
	return proc != NULL && proc->pid == pid;
}

/*
 * Set (or with 0 clear) the moment by which this backend's handler must
 * have stopped, for a statement_timeout.  A deadline from cancel() or from
 * max_duration stays.
 */
void
sc_set_stop_by(TimestampTz stop_by, bool for_cancel)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot == NULL)
		return;
	SpinLockAcquire(&sc_shared->mutex);
	if (for_cancel || (!slot->stop_for_cancel && slot->overran[0] == '\0'))
	{
		slot->stop_by = stop_by;
		slot->stop_for_cancel = for_cancel && stop_by != 0;
	}
	SpinLockRelease(&sc_shared->mutex);
}

/*
 * The counts a runner published for an execution, alive or not (a dead
 * runner's slot keeps them until it is reused); false if no slot names it.
 */
bool
sc_runner_counts(int64 execution_id, int64 *counts)
{
	if (sc_shared == NULL)
		return false;
	for (int i = 0; i < sc_shared->num_progress_slots; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];

		if ((int64) pg_atomic_read_u64(&slot->execution_id) != execution_id)
			continue;
		for (int k = 0; k < SC_NUM_ACTIONS; k++)
			counts[k] = (int64) pg_atomic_read_u64(&slot->counts[k]);
		return true;
	}
	return false;
}

/*
 * Whether a progress slot names execution_id: as its current execution, or
 * as one of its executor's group.  Members keep their places in the group
 * (sc_add_to_group(), sc_remove_from_group()), so a reader never misses
 * one that is there all along.
 */
static bool
slot_names(ScProgressSlot *slot, int64 execution_id)
{
	if ((int64) pg_atomic_read_u64(&slot->execution_id) == execution_id)
		return true;
	for (int k = 0; k < SC_MAX_GROUP; k++)
		if ((int64) pg_atomic_read_u64(&slot->group[k]) == execution_id)
			return true;
	return false;
}

/*
 * Add execution_id to this backend's group, in the transaction that admits
 * it: from then on it is alive as long as this backend is, until
 * sc_remove_from_group().
 */
void
sc_add_to_group(int64 execution_id)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot == NULL)
		return;
	for (int k = 0; k < SC_MAX_GROUP; k++)
	{
		if (pg_atomic_read_u64(&slot->group[k]) != 0)
			continue;
		pg_atomic_write_u64(&slot->group[k], (uint64) execution_id);
		return;
	}
	elog(ERROR, "an executor's group holds at most %d executions", SC_MAX_GROUP);
}

/*
 * Take execution_id out of this backend's group (0: empty the group).
 */
void
sc_remove_from_group(int64 execution_id)
{
	ScProgressSlot *slot = sc_my_progress_slot();

	if (slot == NULL)
		return;
	for (int k = 0; k < SC_MAX_GROUP; k++)
		if (execution_id == 0 ||
			(int64) pg_atomic_read_u64(&slot->group[k]) == execution_id)
			pg_atomic_write_u64(&slot->group[k], 0);
}

/*
 * Whether a live backend runs execution_id: its progress slot names it and
 * the backend that set it is still the one in that slot's place.
 */
bool
sc_runner_alive(int64 execution_id)
{
	if (sc_shared == NULL)
		return false;
	for (int i = 0; i < sc_shared->num_progress_slots; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];
		pid_t		pid;

		if (!slot_names(slot, execution_id))
			continue;
		SpinLockAcquire(&sc_shared->mutex);
		pid = slot->pid;
		SpinLockRelease(&sc_shared->mutex);
		if (sc_progress_slot_owner(i, pid))
			return true;
	}
	return false;
}

/*
 * executor_slots() returns setof (slot, pid, role, state): the executor pool as
 * the launcher keeps it.  state is starting, idle, busy, or retiring (its
 * slot is wanted for another role's work).
 */
Datum
executor_slots(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (sc_shared == NULL)
		return (Datum) 0;
	for (int i = 0; i < sc_shared->num_executor_slots; i++)
	{
		ScExecutorSlot copy;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		char	   *role;

		SpinLockAcquire(&sc_shared->mutex);
		copy = sc_shared->executors[i];
		SpinLockRelease(&sc_shared->mutex);
		if (!copy.in_use)
			continue;
		values[0] = Int32GetDatum(i);
		if (copy.pid == 0)
			nulls[1] = true;
		else
			values[1] = Int32GetDatum(copy.pid);
		role = OidIsValid(copy.role) ? GetUserNameFromId(copy.role, true) : NULL;
		if (role == NULL)
			nulls[2] = true;
		else
			values[2] = DirectFunctionCall1(namein, CStringGetDatum(role));
		values[3] = CStringGetTextDatum(copy.retire ? "retiring" :
										copy.latch == NULL ? "starting" :
										copy.idle ? "idle" : "busy");
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Stop execution_id, which has run longer than its connector's
 * max_duration (text form, for messages), once: an executor in user code
 * gets a query cancel and smartconnector.cancel_grace to stop (then the
 * launcher terminates it); an external runner's session is terminated, as
 * nothing else makes an external program stop.  An executor not in user
 * code yet is stopped at a later pass.  The launcher calls this.
 */
ScOverrun
sc_stop_overrun(int64 execution_id, const char *max_duration)
{
	ScOverrun	result = SC_OVERRUN_GONE;
	int			index = -1;
	pid_t		pid = 0;
	int			sig = 0;
	TimestampTz stop_by = GetCurrentTimestamp() + (TimestampTz) sc_cancel_grace_ms * 1000;

	/* no system call under the spinlock */
	SpinLockAcquire(&sc_shared->mutex);
	for (int i = 0; i < sc_shared->num_progress_slots; i++)
	{
		ScProgressSlot *slot = &sc_shared->progress[i];

		if ((int64) pg_atomic_read_u64(&slot->execution_id) != execution_id ||
			slot->phase == SC_PHASE_IDLE)
			continue;
		index = i;
		result = SC_OVERRUN_LATER;
		if (slot->overran[0] != '\0')
			break;				/* told already: the launcher's deadline follows */
		if (slot->phase == SC_PHASE_EXTERNAL)
		{
			result = SC_OVERRUN_TERMINATED;
			sig = SIGTERM;
		}
		else if (SC_PHASE_RUNS_USER_CODE(slot->phase))
		{
			result = SC_OVERRUN_INTERRUPTED;
			sig = SIGINT;
			if (!slot->stop_for_cancel)
				slot->stop_by = stop_by;
		}
		else
			break;
		strlcpy(slot->overran, max_duration, sizeof(slot->overran));
		pid = slot->pid;
		break;
	}
	SpinLockRelease(&sc_shared->mutex);

	if (sig != 0 && sc_progress_slot_owner(index, pid))
		kill(pid, sig);
	return result;
}

/*
 * Whether the launcher stopped this backend's execution for running longer
 * than max_duration; if so, copies the max_duration's text into
 * max_duration (SC_MAX_DURATION_TEXT bytes).
 */
bool
sc_my_overrun(char *max_duration)
{
	ScProgressSlot *slot = sc_my_progress_slot();
	bool		overran;

	if (slot == NULL)
		return false;
	SpinLockAcquire(&sc_shared->mutex);
	overran = slot->overran[0] != '\0';
	if (overran)
		strlcpy(max_duration, slot->overran, SC_MAX_DURATION_TEXT);
	SpinLockRelease(&sc_shared->mutex);
	return overran;
}
