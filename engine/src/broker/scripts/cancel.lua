-- cancel.lua: cancel one task, atomically, whatever state it is in.
--
-- KEYS[1]  task record (record.lua: a HASH while live, a STRING once final)
-- KEYS[2]  stream of the shard
-- KEYS[3]  scheduled ZSET of the shard
-- KEYS[4]  retry ZSET of the shard
-- KEYS[5]  stats HASH of the shard
-- KEYS[6]  events STREAM of the shard
-- KEYS[7]  cancels SET of the shard (running tasks whose workers must stop them)
-- KEYS[8]  the task's done list (its waiters block on it)
-- KEYS[9]  the task's unique-key lock, or KEYS[8] again when it has none
-- KEYS[10] waiting SET of the shard
-- KEYS[11] cancelled ZSET of the shard (members: MessagePack arrays of ids of kept cancelled
--          records, score = when they expire, ms)
-- KEYS[12] fair ZSET of the shard (optional, with KEYS[13])
-- KEYS[13] groups HASH of the shard: a grouped task waiting in the fair set is taken out of it
-- ARGV[1]  task id
-- ARGV[2]  now, ms since the epoch
-- ARGV[3]  approximate MAXLEN of the events stream
-- ARGV[4]  consumer group
-- Returns  { outcome, state } where outcome is
--          'unknown'    no record (never seen, or expired);
--          'final'      already finished: state is its final state;
--          'cancelled'  it had not started and never will (state 'cancelled');
--          'cancelling' it is running: its worker stops it within about a second and settles
--                       it as cancelled (state 'active').
--
-- A queued task whose stream entry no worker has read yet is deleted from the stream; one
-- already read, or promoted from the scheduled or retry set, stays there marked cancelled and
-- the worker that reads it acknowledges it without running it (start.lua).
local rec, stream, scheduled, retry, stats, events, cancels, done, lock =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local id, now, maxlen, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local got, final = record_get(rec, { 'state', 'member', 'entry', 'retention_ms', 'waiters', 'group' })
local state, member, entry, retention, waiters, fair_group = unpack(got)
if not state then
  return { 'unknown', '' }
end
if final or record_final_states[state] then
  return { 'final', state }
end
if state == 'active' then
  redis.call('HSET', rec, 'cancel_requested', '1', 'updated_at', now)
  redis.call('SADD', cancels, id)
  return { 'cancelling', state }
end

-- Not started: scheduled, retrying or queued.
local removed = false
if member then
  removed = redis.call('ZREM', scheduled, member) == 1 or redis.call('ZREM', retry, member) == 1
  if not removed and fair_group and KEYS[13] and redis.call('ZREM', KEYS[12], member) == 1 then
    removed = true
    if redis.call('HINCRBY', KEYS[13], 'n:' .. fair_group, -1) <= 0 then
      redis.call('HDEL', KEYS[13], 'n:' .. fair_group, 'l:' .. fair_group)
    end
  end
end
if not removed and state == 'queued' and entry then
  -- No group yet (no worker ever read the stream): not delivered.
  local delivered = redis.pcall('XPENDING', stream, group, entry, entry, 1)
  if type(delivered) ~= 'table' or delivered.err or #delivered == 0 then
    removed = redis.call('XDEL', stream, entry) == 1
  end
end
if not removed then
  -- A worker may hold it already (read, or promoted just before): its id in `cancels` makes
  -- the worker stop it, and its settle record it cancelled whatever the handler returned.
  redis.call('SADD', cancels, id)
end
-- The record is final now: written whole (record.lua), with its expiry.
local fields = record_map(rec)
for name in pairs(record_live_only) do
  fields[name] = nil
end
fields.state, fields.started, fields.finished_at, fields.updated_at = 'cancelled', '0', now, now
record_finish(rec, fields, retention)
if retention and tonumber(retention) > 0 then
  redis.call('ZADD', KEYS[11], now + retention, cmsgpack.pack({ id }))
  redis.call('ZREMRANGEBYSCORE', KEYS[11], '-inf', now)
end
if lock ~= done and redis.call('GET', lock) == id then
  redis.call('DEL', lock)
end
redis.call('SREM', KEYS[10], id)
if waiters and tonumber(waiters) > 0 then
  redis.call('RPUSH', done, '1')
  redis.call('PEXPIRE', done, 60000)
end
redis.call('HINCRBY', stats, 'cancelled', 1)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'id', id, 'event', 'cancelled', 'at', now, 'started', '0')
return { 'cancelled', 'cancelled' }
