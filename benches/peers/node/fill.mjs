// Fills the `peers` queue with PEERS_TASKS no-op jobs of PEERS_PAYLOAD bytes (bulk adds of 1000).
import { Queue } from "bullmq";
import IORedis from "ioredis";
const url = new URL(process.env.PEERS_URL);
const connection = new IORedis({ host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null });
const tasks = Number(process.env.PEERS_TASKS);
const body = "x".repeat(Number(process.env.PEERS_PAYLOAD || 64));
const queue = new Queue("peers", { connection });
for (let i = 0; i < tasks; i += 1000) {
  const n = Math.min(1000, tasks - i);
  await queue.addBulk(Array.from({ length: n }, () => ({ name: "noop", data: body })));
}
await queue.close();
await connection.quit();
