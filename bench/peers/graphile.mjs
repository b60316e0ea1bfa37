// bench/peers/graphile.mjs: graphile-worker as the peer of bench/peers.sh.
//
// Usage: node graphile.mjs <default|batched> <jobs> <concurrency> <webhook url>
// (PGHOST, a socket directory, PGPORT, PGUSER and PGDATABASE say where the
// server is.)  Queues <jobs>
// no-op jobs, each of which POSTs a small JSON body to the webhook URL, then
// runs a worker pool until every job is done, and prints "jobs/s".
import pg from "pg";
import { Logger, run, makeWorkerUtils } from "graphile-worker";

const [mode, jobsArg, concurrencyArg, url] = process.argv.slice(2);
const jobs = Number(jobsArg);
const concurrency = Number(concurrencyArg);
const { PGHOST, PGPORT, PGUSER, PGDATABASE } = process.env;
const connectionString = `postgres://${PGUSER}@/${PGDATABASE}?host=${PGHOST}&port=${PGPORT}`;
// a log line per job would cost graphile-worker time and bury the result; errors only
const logger = new Logger(() => (level, message) => {
	if (level === "error")
		console.error(message);
});
const worker = { connectionString, concurrentJobs: concurrency, maxPoolSize: concurrency + 2, logger };
if (mode === "batched")
	Object.assign(worker, { localQueue: { size: 500 }, completeJobBatchDelay: 0 });

const utils = await makeWorkerUtils({ connectionString, logger });
await utils.migrate();
await utils.release();

const pool = new pg.Pool({ connectionString });
await pool.query("DELETE FROM graphile_worker._private_jobs");
await pool.query(
	"SELECT count(graphile_worker.add_job('hook', json_build_object('i', g))) FROM generate_series(1, $1) g",
	[jobs]);

const started = process.hrtime.bigint();
const runner = await run({
	preset: { worker },
	noHandleSignals: true,
	crontab: "",
	taskList: {
		hook: async (payload) => {
			const response = await fetch(url, {
				method: "POST",
				headers: { "content-type": "application/json" },
				body: JSON.stringify(payload),
			});
			if (response.status >= 300)
				throw new Error(`webhook answered ${response.status}`);
		},
	},
});
for (;;) {
	const { rows } = await pool.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
	if (rows[0].n === 0)
		break;
	await new Promise((resolve) => setTimeout(resolve, 50));
}
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await runner.stop();
await pool.end();
console.log(Math.round(jobs / seconds));
