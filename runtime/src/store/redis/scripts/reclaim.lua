-- Take over entries whose claim outlived its lease: ARGV = prefix, group,
-- consumer, lease (ms), count. XAUTOCLAIM moves up to `count` entries idle
-- longer than the lease, most urgent stream first, to this consumer; the
-- caller then requeues them (requeue.lua) with the attempt raised. A crash
-- in between leaves them in this consumer's pending list, where the next
-- recovery (here or elsewhere) finds them again after a lease. Returns the
-- entries as claim.lua does.
local p, group, consumer, lease, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
for rank = 0, 3 do
  local stream = p .. ':q:' .. rank
  local cursor = '0-0'
  repeat
    local got = redis.call('XAUTOCLAIM', stream, group, consumer, lease, cursor, 'COUNT', count - #out)
    cursor = got[1]
    for _, entry in ipairs(got[2]) do
      if entry and entry[2] then
        local f = {}
        local fields = entry[2]
        for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
        local key, attempt = f['key'] or '', f['attempt'] or '1'
        local delivery = ''
        if tonumber(attempt) and tonumber(attempt) > 1 then
          delivery = redis.call('HGET', p .. ':delivery', key) or ''
        end
        table.insert(out, {tostring(rank), entry[1], key, attempt, f['event'] or '', delivery})
      end
    end
  until cursor == '0-0' or #out >= count
  if #out >= count then return out end
end
return out
