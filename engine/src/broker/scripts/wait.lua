-- wait.lua: read a task's record and, unless it is final, register a waiter; or drop a
-- registration that timed out.
--
-- KEYS[1]  task record (record.lua: a HASH while live, a STRING once final)
-- KEYS[2]  waiting SET of the shard (ids of tasks with waiters; settling checks it per task
--          only when it is not empty)
-- ARGV[1]  task id
-- ARGV[2]  optional: 'unregister' = drop one registration of a wait that timed out (the
--          count only decides whether settling pushes to the done list; a record missing or
--          final has none to drop), returns { 0 }
-- Returns  { registered, fields... }: registered is 1 when the caller should block on the
--          task's done list (the settling script pushes to it because the task is in the
--          waiting set), 0 when the record is final or missing (an empty field list: unknown
--          or expired).
local rec = KEYS[1]
local got, final = record_get(rec, { 'state', 'waiters' })
local state = got[1]
final = final or record_final_states[state]
if ARGV[2] == 'unregister' then
  if not final and got[2] then
    redis.call('HINCRBY', rec, 'waiters', -1)
  end
  return { 0 }
end
if final or not state then
  local out = record_all(rec)
  table.insert(out, 1, 0)
  return out
end
redis.call('HINCRBY', rec, 'waiters', 1)
redis.call('SADD', KEYS[2], ARGV[1])
local out = record_all(rec)
table.insert(out, 1, 1)
return out
