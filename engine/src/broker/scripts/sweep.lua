-- sweep.lua: drop expired succeeded records of shards (record.lua: record_sweep), for a shard
-- whose settles have stopped (each settle sweeps a little of its own shard too).
--
-- KEYS     the `succeeded` index ZSET of each shard (on a Redis Cluster, of one slot)
-- ARGV[1]  the most index members to sweep per shard
-- Returns  how many index members went, over every shard
--
-- Cost: one EXISTS when no shard keeps a succeeded record (an idle worker's usual case); else
-- TIME and a ZRANGE per index, plus the sweep of what expired.
if redis.call('EXISTS', unpack(KEYS)) == 0 then
  return 0
end
local now, limit, swept = record_now(), tonumber(ARGV[1]), 0
for i = 1, #KEYS do
  swept = swept + record_sweep(KEYS[i], now, limit)
end
return swept
