-- heads.lua: a page of a stream's entries with each `payload` field cut to a prefix, so a
-- listing of big entries (dead letters of 50 MB) moves a few bytes per entry, not the payloads.
--
-- KEYS[1]  the stream (a shard's dlq)
-- ARGV[1]  start: '-' for the oldest, an id (inclusive) or '(' .. id (exclusive)
-- ARGV[2]  the most entries to return
-- ARGV[3]  bytes of each payload to keep
-- Returns  { entries, sizes }: entries as XRANGE gives them ({ id, { field, value, ... } }),
--          the payload value cut to ARGV[3] bytes; sizes[i] the whole payload's length in
--          bytes of entries[i], -1 when it has no payload field.
--
-- One XRANGE COUNT 1 per entry, so the script holds one payload at a time rather than a page
-- of them.
local start, n, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local entries, sizes = {}, {}
for _ = 1, n do
  local e = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1)[1]
  if not e then
    break
  end
  local fields, size = e[2], -1
  for j = 1, #fields, 2 do
    if fields[j] == 'payload' then
      size = string.len(fields[j + 1])
      fields[j + 1] = string.sub(fields[j + 1], 1, keep)
    end
  end
  entries[#entries + 1] = e
  sizes[#sizes + 1] = size
  start = '(' .. e[1]
end
return { entries, sizes }
