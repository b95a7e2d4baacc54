-- settle.lua: apply a batch of task outcomes for one shard, fenced by ownership.
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  retry ZSET of the shard
-- KEYS[3]  dlq STREAM of the shard
-- KEYS[4]  stats HASH of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the worker that ran the tasks)
-- ARGV[3]  now, ms since the epoch
-- ARGV[4]  dlq approximate MAXLEN
-- ARGV[5]  lowest entry id in the batch
-- ARGV[6]  highest entry id in the batch
-- ARGV[7]  n, the number of plain acks (done) that follow
-- ARGV[8..7+n] entry ids of the plain acks: one value each, the common case under load
-- ARGV[8+n..] the other outcomes, five values each: entry id, op, a, b, c
--          op 'r' retry at due ms a with attempt b, error c
--          op 'b' bury in the dlq with reason a, error b, attempt c ('' keeps the entry's)
--          op 'q' requeue now, unchanged (graceful drain)     a, b, c unused
-- Returns  the entry ids that were not settled because this consumer no longer owns them
--          (reclaimed by another worker, or already settled): fencing. Their number is added
--          to the stats HASH's `fenced`, so operators see it beside `lost` and `reclaimed`.
--
-- The dlq's MAXLEN ~ trim drops old dead letters silently, so the script counts them: the
-- dlq's length before the batch's first bury, plus the buried, minus its length after, goes to
-- the stats counter dlq_trimmed (two XLEN calls, O(1), only in batches that bury).
--
-- Every op acknowledges and deletes the entry in the same call (XACK, then XTRIM MINID below the
-- group's oldest pending entry and XDEL of the rest), so a settled task leaves neither a pending
-- entry nor a stream entry behind.
local stream, retry, dlq, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- Ownership and delivery counts for the batch, in one range read of this consumer's PEL.
local owned = {}
local pending = redis.call('XPENDING', stream, group, ARGV[5], ARGV[6], 1000000, consumer)
for _, p in ipairs(pending) do
  owned[p[1]] = p[4]
end

-- Whether stream id a is older than b (both canonical 'ms-seq', compared as numbers).
local function id_lt(a, b)
  local ia, ib = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  if ia ~= ib then
    return ia < ib
  end
  if #a == #b then
    return a < b
  end
  if string.sub(a, 1, ia) == string.sub(b, 1, ib) then
    return #a < #b
  end
  return a < b
end

local function entry_fields(id)
  local rows = redis.call('XRANGE', stream, id, id)
  if rows[1] then
    return rows[1][2]
  end
  return nil
end

local function set_field(fields, name, value)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      fields[i + 1] = value
      return
    end
  end
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end

local stale = {}
local acked = {}
local done, retried, dead, requeued, failed = 0, 0, 0, 0, 0
local dlq_before
local n_acks = tonumber(ARGV[7])
for i = 8, 7 + n_acks do
  local id = ARGV[i]
  if owned[id] then
    owned[id] = nil
    done = done + 1
    acked[#acked + 1] = id
  else
    stale[#stale + 1] = id
  end
end
for i = 8 + n_acks, #ARGV, 5 do
  local id, op, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local deliveries = owned[id]
  if not deliveries then
    stale[#stale + 1] = id
  else
    owned[id] = nil
    local fields = entry_fields(id)
    if fields then
      if op == 'r' then
        set_field(fields, 'attempt', b)
        set_field(fields, 'error', c)
        redis.call('ZADD', retry, a, cmsgpack.pack(fields))
        retried = retried + 1
        failed = failed + 1
      elseif op == 'b' then
        if c ~= '' then
          set_field(fields, 'attempt', c)
        end
        set_field(fields, 'reason', a)
        set_field(fields, 'error', b)
        set_field(fields, 'dead_at', now)
        set_field(fields, 'origin', stream .. '/' .. id)
        set_field(fields, 'deliveries', tostring(deliveries))
        dlq_before = dlq_before or redis.call('XLEN', dlq)
        redis.call('XADD', dlq, 'MAXLEN', '~', maxlen, '*', unpack(fields))
        dead = dead + 1
        if a ~= 'malformed' and a ~= 'unknown_kind' then
          failed = failed + 1
        end
      elseif op == 'q' then
        redis.call('XADD', stream, '*', unpack(fields))
        requeued = requeued + 1
      end
    end
    acked[#acked + 1] = id
  end
end

if #acked > 0 then
  redis.call('XACK', stream, group, unpack(acked))
  -- Delete the settled entries. Every entry older than the group's oldest pending one was
  -- delivered (it precedes a delivered id) and is no longer pending, so it is settled: here, or
  -- by an earlier call that already deleted it. XTRIM MINID drops those in bulk, whole stream
  -- nodes at once, where XDEL seeks each id through its node; it can never touch a pending entry
  -- (this consumer's, or one another worker reclaimed) nor one not yet delivered. Only settled
  -- ids not older than the oldest pending one need XDEL. The acked ids lie within
  -- [ARGV[5], ARGV[6]] (the XPENDING range above), so when ARGV[6] is older, none does.
  -- An ACL without XTRIM (older setups) falls back to XDEL of every id.
  local oldest = redis.call('XPENDING', stream, group, '-', '+', 1)[1]
  local trimmed = oldest and redis.pcall('XTRIM', stream, 'MINID', oldest[1])
  if type(trimmed) == 'number' then
    local floor = oldest[1]
    local rest = {}
    if not id_lt(ARGV[6], floor) then
      for i = 1, #acked do
        if not id_lt(acked[i], floor) then
          rest[#rest + 1] = acked[i]
        end
      end
    end
    acked = rest
  end
  if #acked > 0 then
    redis.call('XDEL', stream, unpack(acked))
  end
end
if done > 0 then redis.call('HINCRBY', stats, 'done', done) end
if retried > 0 then redis.call('HINCRBY', stats, 'retried', retried) end
if failed > 0 then redis.call('HINCRBY', stats, 'failed', failed) end
if dead > 0 then
  redis.call('HINCRBY', stats, 'dead', dead)
  local dropped = dlq_before + dead - redis.call('XLEN', dlq)
  if dropped > 0 then redis.call('HINCRBY', stats, 'dlq_trimmed', dropped) end
end
if requeued > 0 then redis.call('HINCRBY', stats, 'requeued', requeued) end
if #stale > 0 then redis.call('HINCRBY', stats, 'fenced', #stale) end
return stale
