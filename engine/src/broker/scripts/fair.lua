-- fair.lua: fair groups (docs/groups.md), the part enqueue.lua, promote.lua and feed.lua share.
-- The engine prepends it to each of them (and the function library carries it that way), so
-- the rule is written once.
--
-- A task with a `group` field waits in its shard's `fair` ZSET (member: its wire fields packed
-- with MessagePack, as in the scheduled set; score: its virtual start tag) and is moved into
-- the stream, lowest tag first, while the stream holds fewer than a window of entries no worker
-- has read. Start-time fair queueing: a task of group g gets the tag
-- max(newest tag of g, floor) + 1 / weight of g, and `floor` follows the tag of the last task
-- fed. So the groups with tasks waiting are served in turn, and a group that arrives behind
-- another's backlog is one turn away, not the backlog away.
--
-- The shard's `groups` HASH:
--   floor    the tag of the last task fed into the stream
--   window   the most unread entries the stream holds before feeding stops (default below)
--   w:<g>    group g's weight (default 1)
--   l:<g>    the tag of g's newest waiting task (dropped when none waits)
--   n:<g>    how many of g's tasks wait (dropped at 0)
local FAIR_CONSUMER_GROUP = 'rivulet'
local FAIR_WINDOW = 100

-- The group of a task's wire fields, or nil.
local function fair_group_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'group' then
      return fields[i + 1]
    end
  end
  return nil
end

-- Adds a packed task of group g to the fair set. Returns whether it is the only task waiting
-- there (then the caller feeds the stream at once; with others waiting, the stream was full
-- when they came and the settles that make room feed it).
local function fair_add(fair, groups, member, g)
  local floor, last, weight, n = unpack(redis.call('HMGET', groups, 'floor', 'l:' .. g, 'w:' .. g, 'n:' .. g))
  floor = tonumber(floor) or 0
  local start = tonumber(last) or floor
  if start < floor then
    start = floor
  end
  weight = tonumber(weight)
  if not weight or weight <= 0 then
    weight = 1
  end
  local tag = start + 1 / weight
  redis.call('ZADD', fair, tag, member)
  redis.call('HSET', groups, 'l:' .. g, tag, 'n:' .. g, (tonumber(n) or 0) + 1)
  return redis.call('ZCARD', fair) == 1
end

-- Entries of the stream no worker has read yet (its length less the consumer group's pending).
local function fair_unread(stream)
  local length = redis.call('XLEN', stream)
  if length == 0 then
    return 0
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, pending
    for i = 1, #g, 2 do
      if g[i] == 'name' then
        name = g[i + 1]
      elseif g[i] == 'pending' then
        pending = g[i + 1]
      end
    end
    if name == FAIR_CONSUMER_GROUP then
      return math.max(length - pending, 0)
    end
  end
  return length
end

-- Moves the lowest-tagged waiting tasks into the stream until it holds a window of unread
-- entries. Returns how many moved.
local function fair_feed(stream, fair, groups)
  local window, floor = unpack(redis.call('HMGET', groups, 'window', 'floor'))
  local room = (tonumber(window) or FAIR_WINDOW) - fair_unread(stream)
  if room <= 0 then
    return 0
  end
  local popped = redis.call('ZPOPMIN', fair, room)
  if #popped == 0 then
    return 0
  end
  local order, counts = {}, {}
  for i = 1, #popped, 2 do
    local fields = cmsgpack.unpack(popped[i])
    redis.call('XADD', stream, '*', unpack(fields))
    local g = fair_group_of(fields) or ''
    if not counts[g] then
      order[#order + 1] = g
      counts[g] = 0
    end
    counts[g] = counts[g] + 1
  end
  for _, g in ipairs(order) do
    if redis.call('HINCRBY', groups, 'n:' .. g, -counts[g]) <= 0 then
      redis.call('HDEL', groups, 'n:' .. g, 'l:' .. g)
    end
  end
  local top = popped[#popped]
  if tonumber(top) > (tonumber(floor) or 0) then
    redis.call('HSET', groups, 'floor', top)
  end
  return #popped / 2
end

