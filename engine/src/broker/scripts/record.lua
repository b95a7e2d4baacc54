-- record.lua: the one rule for reading and finishing a task record, put before every script
-- that touches records (the Functions library carries it once, at its top; the scripts the
-- engine runs with EVALSHA start with it).
--
-- A live record (scheduled, queued, active, retrying) is a HASH of fields. A final record
-- (succeeded, dead, cancelled) is a STRING: a MessagePack map of the same field names to
-- string values, written once with its expiry (`SET ... PX retention`, one command where a
-- hash needed HSET and PEXPIRE) and never changed after. Readers go through these helpers,
-- never through HGET/HGETALL, so both types read alike.

-- The values of fields `names` of record `rec` (false for a missing field or record), and
-- whether the record is final (a string). One HMGET for a live or missing record; a final one
-- answers it WRONGTYPE and is read with one GET.
local function record_get(rec, names)
  local r = redis.pcall('HMGET', rec, unpack(names))
  if r.err == nil then
    return r, false
  end
  local m = cmsgpack.unpack(redis.call('GET', rec))
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
  if r.err == nil then
    return r, false
  end
  local out = {}
  for k, v in pairs(cmsgpack.unpack(redis.call('GET', rec))) do
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

-- The fields of a live record that mean nothing once it is final (waiter count, cancel mark,
-- its sorted-set member and stream entry, its due time).
local record_live_only = { waiters = true, cancel_requested = true, member = true, due_at = true, entry = true }

-- The final states. A HASH record in one of them was written by an engine before final records
-- became strings (it expires with its retention) and reads final too.
local record_final_states = { succeeded = true, dead = true, cancelled = true }
