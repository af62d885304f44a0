-- Forget consumers that hold nothing and were idle longer than ARGV[3] ms
-- (processes that stopped): ARGV = prefix, group, idle (ms). Every process
-- adds a consumer of its own; without this the group's list only grows.
-- Returns how many were removed.
local p, group, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
for rank = 0, 3 do
  local stream = p .. ':q:' .. rank
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local f = {}
    for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
    if f['pending'] == 0 and f['idle'] > idle then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, f['name'])
      n = n + 1
    end
  end
end
return n
