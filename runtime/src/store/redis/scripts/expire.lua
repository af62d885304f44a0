-- Archive retention: ARGV = prefix, cutoff (ms). Removes every archive day
-- whose last append is at or before the cutoff: its lines, its event ids
-- and its byte count. Atomic, so an append to a day never lands between
-- the check and the removal. Returns the days removed.
local p = ARGV[1]
local days = redis.call('ZRANGEBYSCORE', p .. ':archive-days', '-inf', ARGV[2])
for _, day in ipairs(days) do
  redis.call('DEL', p .. ':archive:' .. day, p .. ':archive-ids:' .. day)
  redis.call('HDEL', p .. ':archive-bytes', day)
  redis.call('ZREM', p .. ':archive-days', day)
end
return days
