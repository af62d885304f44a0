-- Enqueue the events whose ids are not known yet, deciding and adding in
-- one step: ARGV = prefix, then (rank, key, event id, event JSON, archive
-- day) per event. An id is known while it is queued, in flight or
-- dead-lettered ({p}:known) and once archived ({p}:archive-ids:{day}).
-- Several hosts offering the same ids at once (each firing the same
-- schedule tick) add each once; a repeated call adds nothing again.
-- Returns 1 or 0 per event: added or not.
local p = ARGV[1]
local out = {}
local n = 0
for i = 2, #ARGV, 5 do
  local id = ARGV[i + 2]
  local known = redis.call('HEXISTS', p .. ':known', id) == 1
    or redis.call('SISMEMBER', p .. ':archive-ids:' .. ARGV[i + 4], id) == 1
  if known then
    table.insert(out, 0)
  else
    redis.call('XADD', p .. ':q:' .. ARGV[i], '*', 'key', ARGV[i + 1], 'attempt', '1', 'event', ARGV[i + 3])
    redis.call('HSET', p .. ':known', id, 'q')
    table.insert(out, 1)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', p .. ':wake', n) end
return out
