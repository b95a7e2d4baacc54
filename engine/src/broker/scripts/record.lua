-- record.lua: the one rule for reading and finishing a task record, put before every script
-- that touches records (the Functions library carries it once, at its top; the scripts the
-- engine runs with EVALSHA start with it).
--
-- A live record (scheduled, queued, active, retrying) is a HASH of fields at the task's record
-- key (`rivulet:{q:p:n}:task:<id>`). A final record is a MessagePack map of the same field
-- names to string values, written once and never changed after:
-- - a success's is the field `<id>` of the shard's `finished` HASH (`rivulet:{q:p:n}:finished`,
--   the shard's tag, so in its slot; derived here from the record key, never declared), its
--   value `<expires at, ms since the epoch>` `' '` `<the map>` ('0' = never expires). A settle
--   writes all of its successes with one HSET and drops their live hashes with one DEL; the
--   shard's `succeeded` index says when they expire, and record_sweep drops expired fields;
-- - a dead or cancelled one (rare) is a STRING at the record key, `SET ... PX retention`.
-- The record key comes first: a finished field is read only when that key does not exist (a
-- task of the same id enqueued again shadows an earlier success until it is final itself). A
-- finished field whose expiry has passed reads as missing (the time is the server's, TIME).
-- Readers go through these helpers, never through HGET/HGETALL, so every layout reads alike.

-- A compact entry's `task` field (docs/wire-format.md "Compact entries") as its five strings,
-- id, kind, codec, enqueued_at, payload; nil when it is not exactly that. Here, in the prelude
-- both settle.lua and the library carry, so the one check serves both.
local function task_unpack(v)
  local ok, t = pcall(cmsgpack.unpack, v)
  if not ok or type(t) ~= 'table' or #t ~= 5 then
    return nil
  end
  for k = 1, 5 do
    if type(t[k]) ~= 'string' then
      return nil
    end
  end
  return t
end

-- The shard's `finished` HASH for any key of the shard (`rivulet:{q:p:n}:...`).
local function record_finished_key(k)
  return string.sub(k, 1, string.find(k, '}', 1, true)) .. ':finished'
end

-- Record `rec`'s `finished` HASH and its field (the task id).
local function record_finished_of(rec)
  local close = string.find(rec, '}:task:', 1, true)
  return string.sub(rec, 1, close) .. ':finished', string.sub(rec, close + 7)
end

-- The server's clock, ms since the epoch.
local function record_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When a finished field's value expires (ms; 0 = never) and where its map starts.
local function record_expiry(v)
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), sp + 1
end

-- Record `rec`'s finished map ({ name = value }), or nil when there is none (or it expired).
local function record_finished_map(rec)
  local fin, id = record_finished_of(rec)
  local v = redis.call('HGET', fin, id)
  if not v then
    return nil
  end
  local expires, from = record_expiry(v)
  if expires > 0 and expires <= record_now() then
    return nil
  end
  return cmsgpack.unpack(string.sub(v, from))
end

-- Record `rec`'s final map given `r`, what a read of its key answered through pcall, and whether
-- that read found a live HASH: the STRING at the key (a WRONGTYPE answer), else the finished
-- field; nil when the record is live or there is none.
local function record_final_map(rec, r, live)
  if r.err ~= nil then
    return cmsgpack.unpack(redis.call('GET', rec))
  end
  if live then
    return nil
  end
  return record_finished_map(rec)
end

-- The values of fields `names` of record `rec` (false for a missing field or record), and
-- whether the record is final. `names` includes 'state' (a live record always has it). One
-- HMGET for a live record; a final STRING answers it WRONGTYPE and is read with one GET; no
-- record at the key, the finished field is read (one HGET, and TIME when there is one).
local function record_get(rec, names)
  local r = redis.pcall('HMGET', rec, unpack(names))
  local live = false
  if r.err == nil then
    for i = 1, #names do
      if r[i] then
        live = true
        break
      end
    end
  end
  local m = record_final_map(rec, r, live)
  if not m then
    return r, false
  end
  local out = {}
  for i = 1, #names do
    local v = m[names[i]]
    if v == nil then v = false end
    out[i] = v
  end
  return out, true
end

-- Every field of record `rec` as a flat { name, value, ... } list (HGETALL's shape; empty when
-- there is no record), and whether it is final.
local function record_all(rec)
  local r = redis.pcall('HGETALL', rec)
  local m = record_final_map(rec, r, r.err == nil and #r > 0)
  if not m then
    return r, false
  end
  local out = {}
  for k, v in pairs(m) do
    out[#out + 1] = k
    out[#out + 1] = v
  end
  return out, true
end

-- Record `rec`'s fields as a { name = value } table (empty when there is none).
local function record_map(rec)
  local flat = record_all(rec)
  local m = {}
  for i = 1, #flat, 2 do
    m[flat[i]] = flat[i + 1]
  end
  return m
end

-- Writes record `rec` final: `fields` ({ name = value }, strings) replace whatever it held, with
-- an expiry of `retention` ms ('0' or '': none). `retention_n`, when given, is it as a number
-- (a caller finishing many records converts each distinct value once: tonumber is slow).
local function record_finish(rec, fields, retention, retention_n)
  local packed = cmsgpack.pack(fields)
  retention_n = retention_n or tonumber(retention) or 0
  if retention_n > 0 then
    redis.call('SET', rec, packed, 'PX', retention)
  else
    redis.call('SET', rec, packed)
  end
end

-- Drops the expired fields of a shard's `finished` HASH that its `succeeded` index names: at
-- most `limit` of the index's members whose score (when the last of their records expires)
-- has passed `now` (the server's clock, ms). A field whose expiry has not passed stays (a task
-- of the same id finished again since: a newer member names it). Returns how many members went.
local function record_sweep(index, now, limit)
  local members = redis.call('ZRANGE', index, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  if #members == 0 then
    return 0
  end
  local fin = record_finished_key(index)
  for _, m in ipairs(members) do
    local ids = cmsgpack.unpack(m)
    if #ids > 0 then
      local vals = redis.call('HMGET', fin, unpack(ids))
      local gone = {}
      for j = 1, #ids do
        local v = vals[j]
        if v then
          local expires = record_expiry(v)
          if expires > 0 and expires <= now then
            gone[#gone + 1] = ids[j]
          end
        end
      end
      if #gone > 0 then
        redis.call('HDEL', fin, unpack(gone))
      end
    end
  end
  redis.call('ZREM', index, unpack(members))
  return #members
end

-- The fields of a live record that mean nothing once it is final (waiter count, cancel mark,
-- its sorted-set member and stream entry, its due time).
local record_live_only = { waiters = true, cancel_requested = true, member = true, due_at = true, entry = true }

-- The final states. A HASH record in one of them was written by an engine before final records
-- became strings (it expires with its retention) and reads final too.
local record_final_states = { succeeded = true, dead = true, cancelled = true }
