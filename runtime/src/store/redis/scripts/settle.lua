-- Settle a batch: ARGV = prefix, group, now (ms), then per settlement
--   verdict ("ack" | "dead" | "retry" | "defer"), rank, stream id, key,
--   event id, record (archive line | dead letter | delivery | ""),
--   day (ack), due ms (retry, defer), delayed body ("{attempt}\n{event}"),
--   n follow-ups, then (rank, key, event id, event JSON) per follow-up.
-- A settlement whose XACK removes nothing (it was settled already: a reply
-- lost and the call repeated; or another consumer took it back after its
-- lease) changes nothing, follow-ups included. Returns 1 or 0 per
-- settlement: applied or not.
local p, group, now = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local woke = false
local i = 4
while i <= #ARGV do
  local verdict, rank, sid, key, id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local record, day, due, body = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local n = tonumber(ARGV[i + 9])
  local stream = p .. ':q:' .. rank
  local applied = redis.call('XACK', stream, group, sid) == 1
  if applied then
    redis.call('XDEL', stream, sid)
    if verdict == 'ack' then
      redis.call('RPUSH', p .. ':archive:' .. day, record)
      redis.call('ZADD', p .. ':archive-days', now, day)
      redis.call('HINCRBY', p .. ':archive-bytes', day, string.len(record) + 1)
      redis.call('SADD', p .. ':archive-ids:' .. day, id)
      redis.call('HDEL', p .. ':known', id)
      redis.call('HDEL', p .. ':delivery', key)
    elseif verdict == 'dead' then
      redis.call('HSET', p .. ':dead', key, record)
      redis.call('HSET', p .. ':known', id, 'd')
      redis.call('HDEL', p .. ':delivery', key)
    else
      if verdict == 'retry' then redis.call('HSET', p .. ':delivery', key, record) end
      redis.call('ZADD', p .. ':delayed', due, key)
      redis.call('HSET', p .. ':delayed:body', key, body)
      redis.call('HSET', p .. ':known', id, 'q')
    end
    for j = i + 10, i + 9 + 4 * n, 4 do
      redis.call('XADD', p .. ':q:' .. ARGV[j], '*', 'key', ARGV[j + 1], 'attempt', '1', 'event', ARGV[j + 3])
      redis.call('HSET', p .. ':known', ARGV[j + 2], 'q')
      woke = true
    end
  end
  table.insert(out, applied and 1 or 0)
  i = i + 10 + 4 * n
end
if woke then redis.call('PUBLISH', p .. ':wake', '1') end
return out
