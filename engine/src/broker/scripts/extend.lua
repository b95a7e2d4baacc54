-- extend.lua: renew the lease of every entry this consumer holds in a shard.
--
-- KEYS[1]  stream of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3]  the most entries to renew
-- Returns  how many entries were renewed
--
-- XCLAIM to the same consumer with min-idle 0 and JUSTID resets the idle time without raising
-- the delivery count, so a long task is never reclaimed while its worker lives. Only entries
-- this consumer still owns are claimed: claiming by id would steal an entry another worker
-- has reclaimed in the meantime.
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])) do
  ids[#ids + 1] = p[1]
end
if #ids == 0 then
  return 0
end
-- unpack() must stand last in an argument list to expand fully, so JUSTID goes in the table.
local args = { 'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0 }
for _, id in ipairs(ids) do
  args[#args + 1] = id
end
args[#args + 1] = 'JUSTID'
redis.call(unpack(args))
return #ids
