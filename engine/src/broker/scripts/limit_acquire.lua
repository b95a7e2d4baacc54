-- limit_acquire.lua: may this task start now under its limit? One call per limited start.
--
-- KEYS[1]  state HASH of the limit (rate bucket `tat`, settings, counters)
-- KEYS[2]  reserved ZSET: task id -> the start time it reserved, ms (waiting for the rate)
-- KEYS[3]  running ZSET: holder -> the end of its lease, ms
-- KEYS[4]  waiting ZSET: task id -> when it is due back, ms (waiting for a running slot)
-- ARGV[1]  task id
-- ARGV[2]  holder (worker id and entry id: one per delivery)
-- ARGV[3]  rate: ms between two starts at the steady rate, a decimal ('0' = no rate limit)
-- ARGV[4]  rate: burst, the tasks the bucket holds (at least 1)
-- ARGV[5]  cap: most holders at once ('0' = no concurrency limit)
-- ARGV[6]  lease ms: a holder not renewed for this long is dropped (its worker died)
-- ARGV[7]  the rate as configured (`10/s,burst=20`), kept for `worker-cli limits`
-- Returns  {0, now} granted (the holder is in `running` when there is a cap); or
--          {wait ms, now} not now: come back in `wait` ms. Nothing is held then.
--
-- Time is the server's (`TIME`), not the caller's: a bucket shared by every box needs one
-- clock, and the caller only needs the wait as a duration. The effects replicate as written.
--
-- Rate (GCRA): the bucket is one timestamp, `tat`. A start at `now` conforms when
-- max(tat, now) + interval - now <= burst * interval. A task that does not conform reserves
-- the time it would (`tat` moves on as if it started then), is told to come back then, and
-- when it does it starts on its reservation without touching the bucket: a waiting task
-- costs one extra call, however long the queue of waiting tasks, and the starts follow the
-- reserved schedule. A second bucket, `act`, counts the actual starts with the same rate and
-- burst: a reservation that comes back late starts only when `act` lets it, or reserves the
-- next start `act` allows (a negative score: already counted), so a stall never turns into
-- more than a burst and late tasks come back once more, in order. Reservations older than an hour (tasks that never came back:
-- cancelled, or their worker died) are dropped.
--
-- Concurrency: holders whose lease ran out are dropped first. A task that finds the cap full
-- waits an estimate of when a slot frees (the mean hold time, `hold_ms`, written by
-- `limit_release.lua`, times the line ahead of it over the cap), at least 2 ms, at most a
-- lease; waiters that are not back a lease after they were due are dropped from `waiting`.
-- A task under both limits takes the running slot only when the rate lets it start too.
--
-- Cost: one HMGET of the state, a few writes, and once per second per limit (on the first
-- start of a second) the bookkeeping: the settings shown by `worker-cli limits`, the
-- per-second counts and the cleanup of reservations and waiters that never came back.
local state, reserved, running, waiting = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local task, holder = ARGV[1], ARGV[2]
local interval, burst, cap, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local st = redis.call('HMGET', state, 'tat', 'act', 'sec', 'cur', 'hold_ms')
local writes = {}

local function wait_for(ms)
  if #writes > 0 then
    redis.call('HSET', state, unpack(writes))
  end
  redis.call('HINCRBY', state, 'waited', 1)
  return { math.max(1, math.ceil(ms)), now }
end

if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
  if not redis.call('ZSCORE', running, holder) and redis.call('ZCARD', running) >= cap then
    local ahead = redis.call('ZCARD', waiting)
    if redis.call('ZSCORE', waiting, task) then
      ahead = ahead - 1
    end
    local hold = tonumber(st[5] or '1000')
    local ms = math.max(hold, 0.1) * (1 + math.floor(ahead / cap))
    ms = math.min(math.max(ms, 2), lease)
    redis.call('ZADD', waiting, now + ms, task)
    return wait_for(ms)
  end
end

if interval > 0 then
  -- The actual starts' own bucket, `act`: a reservation that comes back late (its stream had
  -- a backlog, a worker stalled) starts only when this bucket lets it; otherwise it reserves
  -- the next start `act` allows, as a negative score (a start already counted), so late
  -- tasks never catch up faster than the burst allows and never poll.
  local act = tonumber(st[2] or '0')
  if act < now then
    act = now
  end
  local act_at = act + interval - burst * interval
  local at = redis.call('ZSCORE', reserved, task)
  local counted = false
  if at then
    at = tonumber(at)
    if at < 0 then
      at, counted = -at, true
    end
    if at > now then
      -- Back early (a clock or a promoter ahead of its time): wait out the rest.
      return wait_for(at - now)
    end
    if not counted and act_at > now then
      redis.call('ZADD', reserved, -act_at, task)
      writes = { 'act', tostring(act + interval) }
      return wait_for(act_at - now)
    end
    redis.call('ZREM', reserved, task)
  else
    local tat = tonumber(st[1] or '0')
    if tat < now then
      tat = now
    end
    local next_tat = tat + interval
    local conforms_at = math.max(next_tat - burst * interval, act_at)
    writes = { 'tat', tostring(next_tat) }
    if conforms_at > now then
      redis.call('ZADD', reserved, conforms_at, task)
      if cap > 0 then
        redis.call('ZREM', waiting, task)
      end
      return wait_for(conforms_at - now)
    end
  end
  if not counted then
    writes[#writes + 1] = 'act'
    writes[#writes + 1] = tostring(act + interval)
  end
end

if cap > 0 then
  redis.call('ZADD', running, now + lease, holder)
  redis.call('ZREM', waiting, task)
end
-- Once per second (the first start of a second): starts of the last second, the settings,
-- and the cleanup of reservations (both signs) and waiters that never came back.
local sec = math.floor(now / 1000)
if tonumber(st[3] or '-1') == sec then
  redis.call('HINCRBY', state, 'cur', 1)
else
  local last = 0
  if tonumber(st[3] or '-1') == sec - 1 then
    last = tonumber(st[4] or '0')
  end
  for _, v in ipairs({ 'sec', sec, 'cur', 1, 'last', last }) do
    writes[#writes + 1] = v
  end
  if interval > 0 then
    writes[#writes + 1] = 'rate'
    writes[#writes + 1] = ARGV[7]
    redis.call('ZREMRANGEBYSCORE', reserved, 0, now - 3600000)
    redis.call('ZREMRANGEBYSCORE', reserved, '(' .. tostring(3600000 - now), '(0')
  end
  if cap > 0 then
    writes[#writes + 1] = 'cap'
    writes[#writes + 1] = cap
    redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now - lease)
  end
end
if #writes > 0 then
  redis.call('HSET', state, unpack(writes))
end
redis.call('HINCRBY', state, 'granted', 1)
return { 0, now }
