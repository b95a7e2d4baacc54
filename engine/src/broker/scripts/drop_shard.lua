-- drop_shard.lua: deletes one shard's keys, atomically with the check that nothing is left in
-- them (unless forced), so a task enqueued after a caller's own checks is never dropped.
--
-- KEYS[1] stream  KEYS[2] scheduled  KEYS[3] retry  KEYS[4] dlq  KEYS[5] stats
-- KEYS[6] fair (grouped tasks waiting their turn)  KEYS[7] groups (the fair groups' state)
-- ARGV[1] '1' to delete whatever is there
--
-- Returns 1 when the keys were deleted, 0 when a task or dead letter is still there.
if ARGV[1] ~= '1' then
  if redis.call('XLEN', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[2]) > 0
      or redis.call('ZCARD', KEYS[3]) > 0 or redis.call('XLEN', KEYS[4]) > 0
      or redis.call('ZCARD', KEYS[6]) > 0 then
    return 0
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
return 1
