-- enqueue.lua: enqueue one task with its lifecycle record, event and (optional) unique key.
--
-- The one implementation of a tracked or unique enqueue: producers in any language call this
-- script (its contract is in docs/wire-format.md) rather than copying its steps.
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  scheduled ZSET of the shard
-- KEYS[3]  stats HASH of the shard
-- KEYS[4]  task record (rivulet:{q:p:n}:task:<id>; record.lua): written as a live HASH; a
--          final record an earlier task of the same id left is replaced
-- KEYS[5]  events STREAM of the shard
-- KEYS[6]  unique-key lock (rivulet:{q:p:n}:unique:<key>), only when ARGV[6] is not ''
--          (any key of the shard otherwise: it is not touched)
-- KEYS[7]  fair ZSET of the shard, only for a task with a `group` field
-- KEYS[8]  groups HASH of the shard, only for a task with a `group` field
-- ARGV[1]  task id
-- ARGV[2]  now, ms since the epoch
-- ARGV[3]  due time, ms since the epoch; '0' = ready now
-- ARGV[4]  retention of the record in ms; '0' = write no record and no event
-- ARGV[5]  approximate MAXLEN of the events stream
-- ARGV[6]  '' = no unique key; else the lock's lifetime in ms, '0' = until the task is final
-- ARGV[7..] the task's wire fields as name, value, name, value, ..., flat or compact (a `task`
--          field, docs/wire-format.md; the Rust client sends a ready, ungrouped task so)
-- Returns  { 1, id } when enqueued; { 0, holder id } when the unique key is held by another
--          task (nothing was written).
--
-- A ready task with a `group` field waits its group's turn in the fair set (fair.lua); when
-- no other task waits there the stream is fed from it at once (else the settles that make
-- room in the stream feed it). Its record reads `queued` meanwhile. A delayed one goes
-- to the scheduled set like any other and through the fair set when it is promoted.
local id, now, due, retention, maxlen, unique = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
if unique ~= '' then
  local ok
  if unique == '0' then
    ok = redis.call('SET', KEYS[6], id, 'NX')
  else
    ok = redis.call('SET', KEYS[6], id, 'NX', 'PX', unique)
  end
  if not ok then
    return { 0, redis.call('GET', KEYS[6]) }
  end
end

local fields, kind, group = {}, '', nil
for i = 7, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'kind' then
    kind = ARGV[i + 1]
  elseif ARGV[i] == 'task' then
    -- A compact entry (docs/wire-format.md "Compact entries"): the kind is its second string.
    local t = task_unpack(ARGV[i + 1])
    if not t then
      return redis.error_reply('ERR field task is not a MessagePack array of 5 strings (id, kind, codec, enqueued_at, payload)')
    end
    kind = t[2]
  elseif ARGV[i] == 'group' then
    group = ARGV[i + 1]
  end
end
if group and not KEYS[8] then
  return redis.error_reply('ERR a task with a group needs KEYS[7] (the fair set) and KEYS[8] (the groups hash)')
end

local tracked = retention ~= '0'
-- The record's first write: a final record (a STRING) of an earlier task with this id answers
-- WRONGTYPE and is replaced, so this task starts a record of its own.
local function write_record(...)
  local r = redis.pcall('HSET', KEYS[4], ...)
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[4])
    redis.call('HSET', KEYS[4], ...)
  end
end
if due > 0 then
  local member = cmsgpack.pack(fields)
  redis.call('ZADD', KEYS[2], due, member)
  -- Wakes the promoters of idle workers, which sleep until the earliest due time they know of
  -- (channel 'rivulet:wake', message '<due ms> <stream>'; see docs/wire-format.md).
  redis.call('PUBLISH', 'rivulet:wake', ARGV[3] .. ' ' .. KEYS[1])
  if tracked then
    write_record('state', 'scheduled', 'kind', kind, 'enqueued_at', now, 'attempt', '0',
      'due_at', due, 'member', member, 'retention_ms', retention, 'updated_at', now)
  end
elseif group then
  local member = cmsgpack.pack(fields)
  local alone = fair_add(KEYS[7], KEYS[8], member, group)
  if tracked then
    redis.call('HSET', KEYS[4], 'state', 'queued', 'kind', kind, 'enqueued_at', now, 'attempt', '0',
      'member', member, 'retention_ms', retention, 'updated_at', now)
  end
  if alone then
    fair_feed(KEYS[1], KEYS[7], KEYS[8])
  end
else
  local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
  if tracked then
    write_record('state', 'queued', 'kind', kind, 'enqueued_at', now, 'attempt', '0',
      'entry', entry, 'retention_ms', retention, 'updated_at', now)
  end
end
if tracked then
  if unique ~= '' then
    redis.call('HSET', KEYS[4], 'unique_key', KEYS[6])
  end
  if group then
    redis.call('HSET', KEYS[4], 'group', group)
  end
  local event = (due > 0) and 'scheduled' or 'enqueued'
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'id', id, 'event', event, 'at', now, 'kind', kind)
end
redis.call('HINCRBY', KEYS[3], 'enqueued', 1)
return { 1, id }
