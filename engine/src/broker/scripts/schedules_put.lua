-- schedules_put.lua: create a schedule, or update its definition.
--
-- KEYS[1]  definitions HASH (rivulet:{sched}:defs)
-- KEYS[2]  last-fired HASH (rivulet:{sched}:fired)
-- KEYS[3]  version counter (rivulet:{sched}:version)
-- ARGV[1]  schedule name
-- ARGV[2]  definition JSON
-- ARGV[3]  'add' (refuse a name that exists) or 'put' (create or update)
-- ARGV[4]  now, ms since the epoch: a new schedule's "last fired", so it fires from now on
-- Returns  'created', 'updated', 'unchanged' (same JSON) or 'exists' (ARGV[3] = 'add' and the
--          name is taken; nothing written). An update keeps the last fire time.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  if ARGV[3] == 'add' then
    return 'exists'
  end
  if old == ARGV[2] then
    return 'unchanged'
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('INCR', KEYS[3])
  return 'updated'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('INCR', KEYS[3])
return 'created'
