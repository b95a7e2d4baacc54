-- schedules_pause.lua: pause or resume a schedule.
--
-- A resumed schedule fires from now on: what fell due while it was paused is not run (its
-- last fire time becomes now), whatever its missed-fire policy.
--
-- KEYS[1]  definitions HASH (rivulet:{sched}:defs)
-- KEYS[2]  paused SET (rivulet:{sched}:paused)
-- KEYS[3]  last-fired HASH (rivulet:{sched}:fired)
-- KEYS[4]  version counter (rivulet:{sched}:version)
-- ARGV[1]  schedule name
-- ARGV[2]  'pause' or 'resume'
-- ARGV[3]  now, ms since the epoch
-- Returns  0 when there is no such schedule, 1 when it was in that state already, 2 when it
--          changed
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local changed
if ARGV[2] == 'pause' then
  changed = redis.call('SADD', KEYS[2], ARGV[1])
else
  changed = redis.call('SREM', KEYS[2], ARGV[1])
  if changed == 1 then
    local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
    if last < tonumber(ARGV[3]) then
      redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
    end
  end
end
if changed == 1 then
  redis.call('INCR', KEYS[4])
end
return changed + 1
