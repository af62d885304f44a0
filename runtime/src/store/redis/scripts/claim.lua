-- Claim: ARGV = prefix, group, consumer, now (ms), count.
-- First moves the retries that are due from the delayed set back to the
-- tail of their priority's stream; then reads up to `count` new entries
-- for this consumer from the most urgent stream that has any (critical
-- first, FIFO within it). The claimed events are marked "being handled" in
-- the known-ids hash, in one HSET. Returns {rank, stream id, key, attempt, event JSON,
-- delivery JSON or ""} per entry.
local p, group, consumer, now, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local due = redis.call('ZRANGEBYSCORE', p .. ':delayed', '-inf', now, 'LIMIT', 0, 256)
for _, key in ipairs(due) do
  local body = redis.call('HGET', p .. ':delayed:body', key)
  if body then
    local nl = string.find(body, '\n', 1, true)
    redis.call('XADD', p .. ':q:' .. string.sub(key, 1, 1), '*', 'key', key,
      'attempt', string.sub(body, 1, nl - 1), 'event', string.sub(body, nl + 1))
    redis.call('HDEL', p .. ':delayed:body', key)
  end
  redis.call('ZREM', p .. ':delayed', key)
end
for rank = 0, 3 do
  local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', p .. ':q:' .. rank, '>')
  if got and got[1] and #got[1][2] > 0 then
    local out, handled = {}, {}
    for _, entry in ipairs(got[1][2]) do
      local f = {}
      local fields = entry[2]
      for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
      local key, attempt = f['key'] or '', f['attempt'] or '1'
      local id = string.match(key, '^%d+%-%d+%-(.+)$')
      if id then
        handled[#handled + 1] = id
        handled[#handled + 1] = 'h'
      end
      local delivery = ''
      if tonumber(attempt) and tonumber(attempt) > 1 then
        delivery = redis.call('HGET', p .. ':delivery', key) or ''
      end
      table.insert(out, {tostring(rank), entry[1], key, attempt, f['event'] or '', delivery})
    end
    -- count is PREFETCH (queue.rs), far below what one unpack holds.
    if #handled > 0 then redis.call('HSET', p .. ':known', unpack(handled)) end
    return out
  end
end
return {}
