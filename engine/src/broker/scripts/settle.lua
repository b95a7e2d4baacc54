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
--          op 'w' wait for limit b until due ms a: into the retry set unchanged (no attempt
--             used, error kept), counted as `limited` (worker/limiter.rs)
--
-- Tracked outcomes (tasks with a lifecycle record) follow, only when KEYS has more than 4:
-- KEYS[5]  events STREAM of the shard
-- KEYS[6]  cancels SET of the shard
-- KEYS[7]  waiting SET of the shard (tasks with waiters)
-- KEYS[8]  succeeded ZSET of the shard: one member per settle call, the MessagePack array of
--          the ids of the kept records it finished succeeded, score = when the last of them
--          expires (ms)
-- KEYS[9]  cancelled ZSET of the shard (the same for cancelled records)
-- KEYS[10..] three keys per tracked outcome, in order: record, done list, unique lock (the
--          done list again when the task holds no lock to release)
-- KEYS[10+3T..] then the record of each short success (below), one key each (F keys)
-- ARGV (the last 2 + 12 * T + 5 * F values, T = (#KEYS - 9 - F) / 3): per tracked outcome
--          twelve values:
--          entry id, op, a, b, c, d, task id, record retention ms, release ('1' = release
--          the unique lock if this task holds it), kind, attempt, enqueued_at (the task's, for
--          the final record of a success; kind '' = unknown: the record's own fields are read);
--          then per short success five values: entry id, task id, record retention ms (> 0),
--          run ms, and its final record packed by the caller (the MessagePack map a success
--          writes, with `runs` for a first delivery: re-packed here otherwise); then F, then
--          the events stream's approximate MAXLEN. A short success is a plain success with the
--          task's envelope known and no unique lock to release (most tracked outcomes: their
--          record costs one key and five values, not three and twelve).
--          op 's' succeeded: result a ('' none), result codec b, run ms c, started at ms d
--          op 'r', 'b', 'q' as above (d unused; 'b' d = run ms)
--          op 'x' cancelled while running: run ms a
--          op 'w' as above; the record becomes `scheduled` (due_at a), event `limited`; a
--             record a cancel already finished stays as it is and the entry is dropped
-- A success's final record (record.lua) is built from the arguments alone (no read of the
-- live record) and becomes a field of the shard's `finished` HASH: the call's successes go in
-- one HSET, their live hashes in one DEL, and the index sweep drops a few expired members'
-- fields. The rarer final states are written over the live record's fields, one SET ... PX
-- each. The successes of one call share one `succeeded` event entry (their ids in `ids`,
-- docs/wire-format.md "Events").
-- The record write sits behind the same ownership check as the outcome itself, so a worker
-- fenced off by a reclaim can never overwrite what the new owner records.
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
-- Up to this many settled ids are deleted with XDEL alone (see the end of the script).
local SMALL_BATCH = 4
local group, consumer, now, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tracked, short = 0, 0
local untracked_end = #ARGV
if #KEYS > 4 then
  short = tonumber(ARGV[#ARGV - 1])
  tracked = (#KEYS - 9 - short) / 3
  untracked_end = #ARGV - 12 * tracked - 5 * short - 2
end

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

-- An entry's fields, flat: a compact entry's `task` field (docs/wire-format.md, "Compact
-- entries": a MessagePack array of id, kind, codec, enqueued_at, payload) is unpacked, so a
-- retry, a dead letter or a requeue is written in the form every reader knows. A `task` that
-- does not unpack is kept as it is (the dead letter shows it).
local function entry_fields(id)
  local rows = redis.call('XRANGE', stream, id, id)
  if not rows[1] then
    return nil
  end
  local fields = rows[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'task' then
      local t = task_unpack(fields[i + 1])
      if t then
        local flat = { 'id', t[1], 'kind', t[2], 'payload', t[5], 'codec', t[3], 'enqueued_at', t[4] }
        for j = 1, #fields, 2 do
          if j ~= i then
            flat[#flat + 1] = fields[j]
            flat[#flat + 1] = fields[j + 1]
          end
        end
        return flat
      end
    end
  end
  return fields
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
local limited = 0
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
-- Applies op 'r', 'b' or 'q' to an owned entry; returns the retry member, the dlq id or the
-- requeued entry's new id.
local function apply(id, op, a, b, c, deliveries)
  local fields = entry_fields(id)
  if not fields then
    return nil
  end
  if op == 'r' then
    set_field(fields, 'attempt', b)
    set_field(fields, 'error', c)
    local member = cmsgpack.pack(fields)
    redis.call('ZADD', retry, a, member)
    retried = retried + 1
    failed = failed + 1
    return member
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
    local dlq_id = redis.call('XADD', dlq, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    dead = dead + 1
    if a ~= 'malformed' and a ~= 'unknown_kind' then
      failed = failed + 1
    end
    return dlq_id
  elseif op == 'q' then
    requeued = requeued + 1
    return redis.call('XADD', stream, '*', unpack(fields))
  elseif op == 'w' then
    local member = cmsgpack.pack(fields)
    redis.call('ZADD', retry, a, member)
    limited = limited + 1
    return member
  end
  return nil
end

for i = 8 + n_acks, untracked_end, 5 do
  local id, op, a, b, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local deliveries = owned[id]
  if not deliveries then
    stale[#stale + 1] = id
  else
    owned[id] = nil
    apply(id, op, a, b, c, deliveries)
    acked[#acked + 1] = id
  end
end

if #KEYS > 4 then
  local events, cancels, waiting = KEYS[5], KEYS[6], KEYS[7]
  -- Finished ids by state for the listing: one member per state for the whole batch (a
  -- member per task would cost about as much as another command per task).
  local index = { succeeded = { key = KEYS[8], ids = {}, until_ms = 0 },
    cancelled = { key = KEYS[9], ids = {}, until_ms = 0 } }
  local events_maxlen = ARGV[#ARGV]
  local cancelled = 0
  -- Per task, waiters and cancel marks are looked up only when the shard has any: almost
  -- always it has none, and a succeeded task then costs one SET (and a share of the batch's
  -- event). One EXISTS over both sets says so (an empty set does not exist); only when one
  -- exists do the SCARDs say which.
  local any_waiting, any_cancels = false, false
  if redis.call('EXISTS', waiting, cancels) > 0 then
    any_waiting = redis.call('SCARD', waiting) > 0
    any_cancels = redis.call('SCARD', cancels) > 0
  end
  local function event(task, name, ...)
    redis.call('XADD', events, 'MAXLEN', '~', events_maxlen, '*', 'id', task, 'event', name, 'at', now, ...)
  end
  local succeeded_ids, succeeded_ms = {}, {}
  local now_n = tonumber(now)
  -- The successes' finished fields (id, value, ...) and live hashes, written at the end; their
  -- expiry is on the server's clock, as the readers' (record.lua).
  local fin_fields, fin_live, srv_now = {}, {}, nil
  -- Retention strings as numbers, each distinct value converted once (a batch has one or two:
  -- Lua's tonumber and tostring are a large share of the per-task cost).
  local retention_n = {}
  local function ms(s)
    local n = retention_n[s]
    if not n then
      n = tonumber(s) or 0
      retention_n[s] = n
    end
    return n
  end
  -- The done list of a task (`rivulet:{q:p:n}:done:<id>`, keys.rs), in its record's slot: a
  -- short success's is derived, only when someone waits or a cancel finished it.
  local function done_of(rec, task)
    return string.sub(rec, 1, string.find(rec, '}:task:', 1, true)) .. ':done:' .. task
  end
  -- A task now final: its waiters woken (through `done_list`, or the one derived from `rec`
  -- when that is nil) and its cancel mark dropped; nothing to look up while the shard has
  -- neither.
  local function final_marks(task, rec, done_list)
    if any_waiting and redis.call('SREM', waiting, task) == 1 then
      done_list = done_list or done_of(rec, task)
      redis.call('RPUSH', done_list, '1')
      redis.call('PEXPIRE', done_list, 60000)
    end
    if any_cancels then
      redis.call('SREM', cancels, task)
    end
  end
  -- A final state: the record written whole with its expiry, its waiters woken, its lock freed.
  -- `fields` is the final record ({ name = value }).
  local function finish(rec, done_list, lock, task, retention, release, fields)
    fields.finished_at, fields.updated_at = now, now
    -- The worker too: a short task may reach here without a start record (worker/tracker.rs).
    fields.worker = consumer
    fields.retention_ms = retention
    local ret = ms(retention)
    local until_ms = now_n + ret
    if fields.state == 'succeeded' and ret > 0 then
      srv_now = srv_now or record_now()
      until_ms = srv_now + ret
      fin_fields[#fin_fields + 1] = task
      fin_fields[#fin_fields + 1] = until_ms .. ' ' .. cmsgpack.pack(fields)
      fin_live[#fin_live + 1] = rec
    else
      record_finish(rec, fields, retention, ret)
    end
    final_marks(task, rec, done_list)
    if ret > 0 then
      local ix = index[fields.state]
      if ix then
        ix.ids[#ix.ids + 1] = task
        if until_ms > ix.until_ms then ix.until_ms = until_ms end
      end
    end
    if release == '1' and redis.call('GET', lock) == task then
      redis.call('DEL', lock)
    end
  end
  -- The live record's fields without those that end with it, for a final state other than a
  -- plain success (rare: one read more).
  local function final_over_live(rec)
    local fields = record_map(rec)
    for name in pairs(record_live_only) do
      fields[name] = nil
    end
    return fields
  end
  for t = 1, tracked do
    local i = untracked_end + 1 + (t - 1) * 12
    local id, op, a, b, c, d = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local task, retention, release = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
    local kind, attempt, enqueued_at = ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
    local k = 10 + (t - 1) * 3
    local rec, done_list, lock = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local deliveries = owned[id]
    -- A task cancelled before it started (cancel.lua finished the record and put its id in
    -- `cancels`) that ran anyway, in the window before its worker read the mark, ends
    -- cancelled (started), whatever its handler did: never succeeded over the cancel the caller
    -- was told of, never retried. Looked up only while the shard has cancels pending.
    local precancelled = false
    if deliveries and any_cancels and op ~= 'q' and op ~= 'x' and op ~= 'w'
      and record_get(rec, { 'state' })[1] == 'cancelled' then
      if op == 's' then a = c elseif op == 'b' then a = d else a = '' end
      op, precancelled = 'x', true
    end
    if not deliveries then
      stale[#stale + 1] = id
    else
      owned[id] = nil
      acked[#acked + 1] = id
      if op == 's' then
        done = done + 1
        local fields
        if kind ~= '' then
          -- Everything the record says is known here: no read of the live record. The runs
          -- are the attempts before this one plus this entry's deliveries (no conversion in
          -- the common case of a first run).
          local runs = '1'
          if attempt ~= '0' or deliveries ~= 1 then
            runs = tostring((tonumber(attempt) or 0) + deliveries)
          end
          -- (One constructor with every field finish() sets too: the table is sized once.)
          fields = { state = 'succeeded', kind = kind, attempt = attempt, enqueued_at = enqueued_at,
            runs = runs, run_ms = c, started_at = d, finished_at = now, updated_at = now,
            worker = consumer, retention_ms = retention }
          if release == '1' then fields.unique_key = lock end
        else
          fields = final_over_live(rec)
        end
        fields.state, fields.run_ms = 'succeeded', c
        if a ~= '' then
          fields.result, fields.result_codec = a, b
        end
        finish(rec, done_list, lock, task, retention, release, fields)
        succeeded_ids[#succeeded_ids + 1] = task
        succeeded_ms[#succeeded_ms + 1] = c
      elseif op == 'r' then
        local member = apply(id, op, a, b, c, deliveries)
        -- A record already final (only a cancel finishes one under a running task, and that
        -- case went to 'x' above) answers WRONGTYPE and is left as it is.
        redis.pcall('HSET', rec, 'state', 'retrying', 'due_at', a, 'attempt', b, 'error', c, 'updated_at', now,
          'member', member or '')
        if any_cancels and redis.call('SREM', cancels, task) == 1 then
          redis.pcall('HDEL', rec, 'cancel_requested')
        end
        event(task, 'retried', 'attempt', b, 'due_at', a, 'error', c)
      elseif op == 'b' then
        local dlq_id = apply(id, op, a, b, c, deliveries)
        local fields = final_over_live(rec)
        fields.state, fields.reason, fields.error, fields.dlq_id = 'dead', a, b, dlq_id or ''
        if c ~= '' then fields.attempt = c end
        if d ~= '' then fields.run_ms = d end
        finish(rec, done_list, lock, task, retention, release, fields)
        event(task, 'dead', 'reason', a, 'error', b)
      elseif op == 'q' then
        local entry = apply(id, op, a, b, c, deliveries)
        -- Back in the stream under a new entry id (what cancel deletes while it is queued). A
        -- record finished meanwhile (cancelled) stays as it is: the next worker skips the task.
        local got, final = record_get(rec, { 'state' })
        final = final or record_final_states[got[1]]
        if not final then
          redis.call('HSET', rec, 'state', 'queued', 'updated_at', now, 'entry', entry or '')
          redis.call('HDEL', rec, 'worker', 'started_at', 'progress', 'progress_message')
          event(task, 'requeued')
        end
      elseif op == 'w' then
        -- Parked by a limit before its handler was built. A cancel that raced the delivery has
        -- already finished the record (cancel.lua: cancelled, not started): the entry is only
        -- dropped, never parked, and its cancel mark goes.
        local got, final = record_get(rec, { 'state' })
        final = final or record_final_states[got[1]]
        if final then
          if any_cancels then redis.call('SREM', cancels, task) end
        else
          local member = apply(id, op, a, b, c, deliveries)
          redis.call('HSET', rec, 'state', 'scheduled', 'due_at', a, 'updated_at', now,
            'member', member or '')
          event(task, 'limited', 'limit', b, 'due_at', a)
        end
      elseif op == 'x' then
        -- (cancel.lua counted one cancelled before it started.)
        if not precancelled then cancelled = cancelled + 1 end
        local fields = final_over_live(rec)
        fields.state, fields.started, fields.run_ms = 'cancelled', '1', a
        finish(rec, done_list, lock, task, retention, release, fields)
        event(task, 'cancelled', 'started', '1')
      end
    end
  end
  -- The short successes: the record as packed by the caller, unless the entry was delivered
  -- more than once (its runs re-counted) or a cancel finished the record meanwhile.
  local short_from, short_key = untracked_end + 1 + 12 * tracked, 9 + 3 * tracked
  local sx = index.succeeded
  -- Per distinct retention: { expiry, the value's prefix } (one number-to-string a call).
  local prefix = {}
  for f = 1, short do
    local i = short_from + (f - 1) * 5
    local id, task, retention, run_ms, packed = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local rec = KEYS[short_key + f]
    local deliveries = owned[id]
    if not deliveries then
      stale[#stale + 1] = id
    else
      owned[id] = nil
      acked[#acked + 1] = id
      if any_cancels and record_get(rec, { 'state' })[1] == 'cancelled' then
        -- As the long form's precancelled: ends cancelled (started), counted by cancel.lua.
        local fields = final_over_live(rec)
        fields.state, fields.started, fields.run_ms = 'cancelled', '1', run_ms
        local done_list = done_of(rec, task)
        finish(rec, done_list, done_list, task, retention, '0', fields)
        event(task, 'cancelled', 'started', '1')
      else
        done = done + 1
        if deliveries ~= 1 then
          local m = cmsgpack.unpack(packed)
          m.runs = tostring((tonumber(m.attempt) or 0) + deliveries)
          packed = cmsgpack.pack(m)
        end
        local p = prefix[retention]
        if not p then
          srv_now = srv_now or record_now()
          p = { srv_now + ms(retention) }
          p[2] = p[1] .. ' '
          prefix[retention] = p
        end
        local until_ms = p[1]
        fin_fields[#fin_fields + 1] = task
        fin_fields[#fin_fields + 1] = p[2] .. packed
        fin_live[#fin_live + 1] = rec
        final_marks(task, rec, nil)
        sx.ids[#sx.ids + 1] = task
        if until_ms > sx.until_ms then sx.until_ms = until_ms end
        succeeded_ids[#succeeded_ids + 1] = task
        succeeded_ms[#succeeded_ms + 1] = run_ms
      end
    end
  end
  if #succeeded_ids > 0 then
    -- One entry for the call's successes: shared fields plain, per-task ones (named in
    -- `per_id`) MessagePack arrays in the order of `ids`.
    redis.call('XADD', events, 'MAXLEN', '~', events_maxlen, '*', 'event', 'succeeded', 'at', now,
      'ids', cmsgpack.pack(succeeded_ids), 'per_id', 'run_ms', 'run_ms', cmsgpack.pack(succeeded_ms),
      'worker', consumer)
  end
  if cancelled > 0 then redis.call('HINCRBY', stats, 'cancelled', cancelled) end
  if #fin_fields > 0 then
    local fin = record_finished_key(index.succeeded.key)
    for from = 1, #fin_fields, 2000 do
      redis.call('HSET', fin, unpack(fin_fields, from, math.min(from + 1999, #fin_fields)))
    end
    for from = 1, #fin_live, 1000 do
      redis.call('DEL', unpack(fin_live, from, math.min(from + 999, #fin_live)))
    end
  end
  -- Ids whose records have expired leave the index (O(log n) when none has); the succeeded
  -- records' finished fields with them, two members a call (each call adds at most one).
  if #sx.ids > 0 then
    redis.call('ZADD', sx.key, sx.until_ms, cmsgpack.pack(sx.ids))
    record_sweep(sx.key, srv_now, 2)
  end
  local cx = index.cancelled
  if #cx.ids > 0 then
    redis.call('ZADD', cx.key, cx.until_ms, cmsgpack.pack(cx.ids))
    redis.call('ZREMRANGEBYSCORE', cx.key, '-inf', now)
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
  -- An ACL without XTRIM (older setups) falls back to XDEL of every id. A small batch (at a
  -- trickle, usually one id) is deleted with XDEL alone: seeking a few ids costs less than the
  -- XPENDING and XTRIM, and saves those two commands per call.
  local oldest = #acked > SMALL_BATCH and redis.call('XPENDING', stream, group, '-', '+', 1)[1]
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
if limited > 0 then redis.call('HINCRBY', stats, 'limited', limited) end
if #stale > 0 then redis.call('HINCRBY', stats, 'fenced', #stale) end
return stale
