-- feed.lua: move a shard's waiting grouped tasks into its stream while it holds fewer than a
-- window of unread entries (fair.lua, prepended). Called by a worker after it settled tasks of
-- a shard that holds grouped tasks, so the stream is refilled as it drains.
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  fair ZSET of the shard
-- KEYS[3]  groups HASH of the shard
-- Returns  { fed, still waiting }
local fed = fair_feed(KEYS[1], KEYS[2], KEYS[3])
return { fed, redis.call('ZCARD', KEYS[2]) }
