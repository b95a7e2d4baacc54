-- forget_consumer.lua: remove a consumer from a shard's group, only if it owns nothing.
--
-- KEYS[1]  stream of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer to remove
-- Returns  1 when the consumer was removed (or did not exist), 0 when it still owns entries:
--          XGROUP DELCONSUMER drops a consumer's pending entries from the PEL, where nothing
--          could reclaim them, so the check and the delete run in one script, with no read of
--          that consumer able to land in between.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local owned = redis.call('XPENDING', stream, group, '-', '+', 1, consumer)
if #owned > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return 1
