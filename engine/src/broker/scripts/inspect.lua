-- inspect.lua: one shard's numbers for the Inspector, in one round trip.
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  scheduled ZSET
-- KEYS[3]  retry ZSET
-- KEYS[4]  dlq STREAM
-- KEYS[5]  stats HASH
-- KEYS[6]  fair ZSET (optional)
-- ARGV[1]  consumer group
-- Returns  { length, lag, pending, oldest_waiting_id, scheduled, retry, dlq, stats, fair }
--          lag is -1 when Redis cannot tell (XINFO reports it as nil) or there is no group;
--          oldest_waiting_id is '' when nothing waits; stats is the flat HGETALL reply; fair is
--          how many grouped tasks wait for their turn (0 without KEYS[6]).
local length = redis.call('XLEN', KEYS[1])
local lag, pending, last = -1, 0, nil
if length > 0 or redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do
      info[g[i]] = g[i + 1]
    end
    if info['name'] == ARGV[1] then
      pending = info['pending']
      last = info['last-delivered-id']
      if type(info['lag']) == 'number' then
        lag = info['lag']
      end
    end
  end
end
local oldest = ''
local first
if last then
  first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
else
  first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
end
if first[1] then
  oldest = first[1][1]
end
return {
  length, lag, pending, oldest,
  redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), redis.call('XLEN', KEYS[4]),
  redis.call('HGETALL', KEYS[5]),
  KEYS[6] and redis.call('ZCARD', KEYS[6]) or 0,
}
