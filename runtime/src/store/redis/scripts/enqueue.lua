-- Enqueue a batch, once: ARGV = prefix, batch token, then (rank, key,
-- event id, event JSON) per event. A token seen in the last hour means
-- this batch was already added (its reply was lost and the call repeated):
-- nothing is added again. Returns the number of entries added.
local p = ARGV[1]
if not redis.call('SET', p .. ':enqueued:' .. ARGV[2], '1', 'NX', 'EX', 3600) then
  return 0
end
local n = 0
for i = 3, #ARGV, 4 do
  redis.call('XADD', p .. ':q:' .. ARGV[i], '*', 'key', ARGV[i + 1], 'attempt', '1', 'event', ARGV[i + 3])
  redis.call('HSET', p .. ':known', ARGV[i + 2], 'q')
  n = n + 1
end
-- Services waiting for work, on any host, are told.
if n > 0 then redis.call('PUBLISH', p .. ':wake', n) end
return n
