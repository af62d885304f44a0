-- Remove dead letters: ARGV = prefix, then (key, event id) per letter. The
-- event id is forgotten by the known-ids hash only when it still names the
-- dead letter (a `dlq retry` queues the event again before it purges).
local p = ARGV[1]
for i = 2, #ARGV, 2 do
  redis.call('HDEL', p .. ':dead', ARGV[i])
  if redis.call('HGET', p .. ':known', ARGV[i + 1]) == 'd' then
    redis.call('HDEL', p .. ':known', ARGV[i + 1])
  end
end
return 1
