-- Depth figures in one consistent read: ARGV = prefix, group, now (ms).
-- A stream holds exactly its waiting entries (after the group's last
-- delivered id) and its claimed ones (the group's pending entries), since
-- every settled or requeued entry is deleted. Returns {ready, claimed,
-- delayed (all), delayed not yet due, next due ms or -1, dead letters,
-- key of the oldest ready entry or ""}.
local p, group, now = ARGV[1], ARGV[2], ARGV[3]
local ready, claimed, oldest = 0, 0, ''
for rank = 0, 3 do
  local stream = p .. ':q:' .. rank
  local len = redis.call('XLEN', stream)
  if len > 0 then
    local pending, last = 0, '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
      local f = {}
      for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
      if f['name'] == group then pending, last = f['pending'], f['last-delivered-id'] end
    end
    claimed = claimed + pending
    ready = ready + len - pending
    if len > pending then
      local head = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
      if head[1] then
        local fields = head[1][2]
        for j = 1, #fields, 2 do
          if fields[j] == 'key' then
            local key = fields[j + 1]
            if oldest == '' or string.sub(key, 3, 18) < string.sub(oldest, 3, 18) then oldest = key end
          end
        end
      end
    end
  end
end
local delayed = redis.call('ZCARD', p .. ':delayed')
local waiting = redis.call('ZCOUNT', p .. ':delayed', '(' .. now, '+inf')
local next_due = -1
local nd = redis.call('ZRANGEBYSCORE', p .. ':delayed', '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if nd[2] then next_due = tonumber(nd[2]) end
return {ready, claimed, delayed, waiting, next_due, redis.call('HLEN', p .. ':dead'), oldest}
