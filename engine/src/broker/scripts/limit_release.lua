-- limit_release.lua: give back running slots, or renew their leases.
--
-- KEYS[1]  state HASH of the limit
-- KEYS[2]  running ZSET: holder -> the end of its lease, ms
-- ARGV[1]  op: 'r' release (the handlers finished), 'e' extend (the heartbeat)
-- ARGV[2]  lease ms (op 'e'); the holders' summed run time, ms (op 'r')
-- ARGV[3..] holders
-- Returns  how many holders were released, or renewed (a holder whose lease already ran out
--          and was dropped is not renewed: its slot may be someone else's by now).
--
-- Releasing also folds the run time into `hold_ms`, the mean hold time (an exponentially
-- weighted average) that waiting tasks use to estimate when a slot frees. Time is the
-- server's, as in limit_acquire.lua.
local state, running = KEYS[1], KEYS[2]
local op, n = ARGV[1], 0
if op == 'r' then
  for i = 3, #ARGV do
    n = n + redis.call('ZREM', running, ARGV[i])
  end
  local count = #ARGV - 2
  if count > 0 then
    local mean = tonumber(ARGV[2]) / count
    local old = tonumber(redis.call('HGET', state, 'hold_ms') or tostring(mean))
    redis.call('HSET', state, 'hold_ms', tostring(old * 0.8 + mean * 0.2))
  end
else
  local t = redis.call('TIME')
  local until_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[2])
  for i = 3, #ARGV do
    n = n + redis.call('ZADD', running, 'XX', 'CH', until_ms, ARGV[i])
  end
end
return n
