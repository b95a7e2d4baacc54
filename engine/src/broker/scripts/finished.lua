-- finished.lua: one page of a shard's finished-task index (succeeded or cancelled), newest
-- first.
--
-- KEYS[1]  the index ZSET (task ids, score = when the task's record expires, ms)
-- ARGV[1]  now, ms since the epoch: ids whose record has expired are left out
-- ARGV[2]  cursor: the last id of the previous page ('' = from the newest)
-- ARGV[3]  the most ids to return
-- Returns  the ids, newest first (an empty list when the cursor's id has left the index: its
--          record expired, and so did every older one's)
--
-- The order is (expiry, id), both descending; ids only ever leave the index from its oldest
-- end, so the rank of the cursor's id says exactly where the next page starts.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
local start = 0
if ARGV[2] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[2])
  if not rank then
    return {}
  end
  start = rank + 1
end
local rows = redis.call('ZRANGE', KEYS[1], start, start + limit - 1, 'REV', 'WITHSCORES')
local ids = {}
for i = 1, #rows, 2 do
  if tonumber(rows[i + 1]) <= now then
    break
  end
  ids[#ids + 1] = rows[i]
end
return ids
