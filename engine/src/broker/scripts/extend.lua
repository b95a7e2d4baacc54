-- extend.lua: renew the lease of the entries a worker has in process, in one shard.
--
-- KEYS[1]  stream of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer
-- ARGV[3]  lowest of the ids
-- ARGV[4]  highest of the ids
-- ARGV[5..] the entry ids the worker holds in process (read, running or being settled)
-- Returns  how many entries were renewed
--
-- XCLAIM to the same consumer with min-idle 0 and JUSTID resets the idle time without raising
-- the delivery count, so a long task is never reclaimed while its worker lives. Only ids this
-- consumer still owns are claimed: claiming by id would steal an entry another worker has
-- reclaimed in the meantime. Entries the consumer owns but does not hold in process (a read
-- whose reply was lost when Redis died) are left to age, so the reclaimer recovers them.
local owned = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], 1000000, ARGV[2])
for _, p in ipairs(pending) do
  owned[p[1]] = true
end
-- unpack() must stand last in an argument list to expand fully, so JUSTID goes in the table.
local args = { 'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0 }
for i = 5, #ARGV do
  if owned[ARGV[i]] then
    args[#args + 1] = ARGV[i]
  end
end
local n = #args - 5
if n == 0 then
  return 0
end
args[#args + 1] = 'JUSTID'
redis.call(unpack(args))
return n
