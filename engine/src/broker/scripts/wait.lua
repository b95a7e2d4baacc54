-- wait.lua: read a task's record and, unless it is final, register a waiter.
--
-- KEYS[1]  task record HASH
-- KEYS[2]  waiting SET of the shard (ids of tasks with waiters; settling checks it per task
--          only when it is not empty)
-- ARGV[1]  task id
-- Returns  { registered, fields... }: registered is 1 when the caller should block on the
--          task's done list (the settling script pushes to it because `waiters` > 0), 0 when
--          the record is final or missing (an empty field list: unknown or expired).
local rec = KEYS[1]
local state = redis.call('HGET', rec, 'state')
if not state or state == 'succeeded' or state == 'dead' or state == 'cancelled' then
  local out = redis.call('HGETALL', rec)
  table.insert(out, 1, 0)
  return out
end
redis.call('HINCRBY', rec, 'waiters', 1)
redis.call('SADD', KEYS[2], ARGV[1])
local out = redis.call('HGETALL', rec)
table.insert(out, 1, 1)
return out
