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
--          (reclaimed by another worker, or already settled): fencing.
--
-- Every op acknowledges and deletes the entry in the same call (XACK + XDEL), so a settled
-- task leaves neither a pending entry nor a stream entry behind.
local stream, retry, dlq, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

-- Ownership and delivery counts for the batch, in one range read of this consumer's PEL.
local owned = {}
local pending = redis.call('XPENDING', stream, group, ARGV[5], ARGV[6], 1000000, consumer)
for _, p in ipairs(pending) do
  owned[p[1]] = p[4]
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
  redis.call('XDEL', stream, unpack(acked))
end
if done > 0 then redis.call('HINCRBY', stats, 'done', done) end
if retried > 0 then redis.call('HINCRBY', stats, 'retried', retried) end
if failed > 0 then redis.call('HINCRBY', stats, 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', stats, 'dead', dead) end
if requeued > 0 then redis.call('HINCRBY', stats, 'requeued', requeued) end
return stale
