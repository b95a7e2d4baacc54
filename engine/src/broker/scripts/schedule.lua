-- schedule.lua: park a task in a shard's `scheduled` sorted set until it is due.
--
-- KEYS[1]  scheduled ZSET of the shard
-- KEYS[2]  stats HASH of the shard
-- ARGV[1]  due time, ms since the epoch (the score)
-- ARGV[2..] the task's wire fields as name, value, name, value, ...
-- Returns  1
--
-- The member is the msgpack array of the fields, so promote.lua can XADD them back unchanged
-- (binary payloads included) without a second key per task.
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[1], ARGV[1], cmsgpack.pack(fields))
redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
return 1
