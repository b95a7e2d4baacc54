-- finished.lua: one page of a shard's finished-task index (succeeded or cancelled), newest
-- first.
--
-- KEYS[1]  the index ZSET: members are MessagePack arrays of task ids (a settle call's, in the
--          order they finished), score = when the last of their records expires, ms
-- ARGV[1]  now, ms since the epoch: members whose score has passed are left out
-- ARGV[2]  cursor: the score of the member the previous page stopped in ('' = from the newest)
-- ARGV[3]  cursor: the first id of that member
-- ARGV[4]  cursor: how many of that member's ids the previous pages returned
-- ARGV[5]  the most ids to return
-- Returns  { ids, next score, next first id, next skip }: the ids, newest first, and the
--          cursor of the next page ('' score when this page reached the end). An empty page
--          when the cursor's member has left the index (its records expired, and so had every
--          older one's).
--
-- Members only ever leave from the index's oldest end, and the order is (score, member)
-- descending, so the rank of the cursor's member says exactly where the next page starts.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[5])
local rank, skip = 0, 0
local done = { {}, '', '', 0 }
if ARGV[2] ~= '' then
  rank = nil
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[2], 'BYSCORE')) do
    if cmsgpack.unpack(m)[1] == ARGV[3] then
      rank = redis.call('ZREVRANK', KEYS[1], m)
    end
  end
  if not rank then
    return done
  end
  skip = tonumber(ARGV[4])
end
local ids = {}
while true do
  local rows = redis.call('ZRANGE', KEYS[1], rank, rank + 15, 'REV', 'WITHSCORES')
  if #rows == 0 then
    done[1] = ids
    return done
  end
  for i = 1, #rows, 2 do
    if tonumber(rows[i + 1]) <= now then
      done[1] = ids
      return done
    end
    local batch = cmsgpack.unpack(rows[i])
    for j = #batch - skip, 1, -1 do
      if #ids == limit then
        return { ids, rows[i + 1], batch[1], #batch - j }
      end
      ids[#ids + 1] = batch[j]
    end
    skip = 0
  end
  rank = rank + 16
end
