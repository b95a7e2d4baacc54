// One worker process: drains PEERS_TASKS jobs of `peers` (concurrency 1024, completed jobs
// removed), then prints one JSON line like the Rust workers of benches/peers.
import { Worker } from "bullmq";
import IORedis from "ioredis";
const url = new URL(process.env.PEERS_URL);
const connection = new IORedis({ host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null });
const tasks = Number(process.env.PEERS_TASKS);
let handled = 0, first = 0, last = 0, done;
const finished = new Promise((resolve) => { done = resolve; });
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const worker = new Worker("peers", async () => {
  const now = nowUs();
  if (handled === 0) first = now;
  last = Math.max(last, now);
  handled += 1;
  if (handled === tasks) done();
  return null;
}, { connection, concurrency: 1024, removeOnComplete: { count: 0 } });
await finished;
await worker.close();
const cpu = process.cpuUsage();
console.log(JSON.stringify({ handled, first_us: first, last_us: last, cpu_us: cpu.user + cpu.system }));
process.exit(0);
