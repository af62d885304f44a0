-- Put claimed entries back as fresh entries at the tail of their stream:
-- ARGV = prefix, group, then per entry (rank, stream id, key, event id,
-- attempt, event JSON, delivery JSON or "" to leave it). Used by recovery
-- (attempt raised, the lease's expiry in the delivery record) and to give
-- back prefetched claims never handed out (attempt unchanged). An entry
-- whose XACK removes nothing was settled or taken back meanwhile and is
-- left alone. Returns 1 or 0 per entry.
local p, group = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 7 do
  local stream = p .. ':q:' .. ARGV[i]
  local applied = redis.call('XACK', stream, group, ARGV[i + 1]) == 1
  if applied then
    redis.call('XDEL', stream, ARGV[i + 1])
    if ARGV[i + 6] ~= '' then redis.call('HSET', p .. ':delivery', ARGV[i + 2], ARGV[i + 6]) end
    redis.call('XADD', stream, '*', 'key', ARGV[i + 2], 'attempt', ARGV[i + 4], 'event', ARGV[i + 5])
    redis.call('HSET', p .. ':known', ARGV[i + 3], 'q')
  end
  table.insert(out, applied and 1 or 0)
end
return out
