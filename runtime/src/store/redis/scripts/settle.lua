-- Settle a batch: ARGV = prefix, group, now (ms), then per settlement
--   verdict, rank, stream id, key, attempt, then by verdict
--     "ack":   archive line, day
--     "dead":  dead letter
--     "retry": delivery record, due ms, delayed body ("{attempt}\n{event}")
--     "defer": due ms, delayed body
--   then n follow-ups and (rank, key, event id, event JSON) per follow-up.
-- The event id is the key's tail ({rank}-{µs}-{event id}, EntryName::key);
-- a delivery record exists only for an attempt past the first (written by
-- a retry or by requeue.lua), so only those are deleted.
-- A settlement whose XACK removes nothing (it was settled already: a reply
-- lost and the call repeated; or another consumer took it back after its
-- lease) changes nothing, follow-ups included. Returns 1 or 0 per
-- settlement: applied or not.
--
-- Each entry is XACKed in order (that decides whether it applies); the
-- other writes are gathered and made once per key at the end (one XDEL per
-- stream, one RPUSH per archive day, ...), which leaves the same state as
-- making them settlement by settlement: the known ids and delivery records
-- keep the last write of each field, as they would in order.
local p, group, now = ARGV[1], ARGV[2], ARGV[3]

-- redis.call(cmd, key, items...) in slices: unpack puts every item on the
-- Lua C stack, which holds about 8000.
local SLICE = 1000
local function each(cmd, key, items)
  for s = 1, #items, SLICE do
    redis.call(cmd, key, unpack(items, s, math.min(s + SLICE - 1, #items)))
  end
end

-- Hash fields in first-touch order with their last value (false: delete).
local function fields() return { order = {}, value = {} } end
local function put(f, k, v)
  if f.value[k] == nil then f.order[#f.order + 1] = k end
  f.value[k] = v
end
local function store(f, key)
  local set, del = {}, {}
  for _, k in ipairs(f.order) do
    local v = f.value[k]
    if v then
      set[#set + 1] = k
      set[#set + 1] = v
    else
      del[#del + 1] = k
    end
  end
  each('HDEL', key, del)
  each('HSET', key, set)
end

local known, delivery = fields(), fields()
local xdel, ranks = {}, {}
local days, archive = {}, {}
local dead, delayed, bodies = {}, {}, {}
local out = {}
local woke = false
local i = 4
while i <= #ARGV do
  local verdict, rank, sid, key, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local id = string.match(key, '^%d+%-%d+%-(.+)$')
  local again = tonumber(attempt) ~= 1
  local stream = p .. ':q:' .. rank
  local applied = redis.call('XACK', stream, group, sid) == 1
  local f = i + 5
  if verdict == 'ack' then
    if applied then
      local day = ARGV[f + 1]
      local a = archive[day]
      if not a then
        a = { lines = {}, ids = {}, bytes = 0 }
        archive[day] = a
        days[#days + 1] = day
      end
      a.lines[#a.lines + 1] = ARGV[f]
      a.bytes = a.bytes + string.len(ARGV[f]) + 1
      if id then
        a.ids[#a.ids + 1] = id
        put(known, id, false)
      end
      if again then put(delivery, key, false) end
    end
    f = f + 2
  elseif verdict == 'dead' then
    if applied then
      dead[#dead + 1] = key
      dead[#dead + 1] = ARGV[f]
      if id then put(known, id, 'd') end
      if again then put(delivery, key, false) end
    end
    f = f + 1
  else
    if verdict == 'retry' then
      if applied then put(delivery, key, ARGV[f]) end
      f = f + 1
    end
    if applied then
      delayed[#delayed + 1] = ARGV[f]
      delayed[#delayed + 1] = key
      bodies[#bodies + 1] = key
      bodies[#bodies + 1] = ARGV[f + 1]
      if id then put(known, id, 'q') end
    end
    f = f + 2
  end
  local n = tonumber(ARGV[f])
  if applied then
    if not xdel[stream] then
      xdel[stream] = {}
      ranks[#ranks + 1] = stream
    end
    table.insert(xdel[stream], sid)
    for j = f + 1, f + 4 * n, 4 do
      redis.call('XADD', p .. ':q:' .. ARGV[j], '*', 'key', ARGV[j + 1], 'attempt', '1', 'event', ARGV[j + 3])
      put(known, ARGV[j + 2], 'q')
      woke = true
    end
  end
  table.insert(out, applied and 1 or 0)
  i = f + 1 + 4 * n
end
for _, stream in ipairs(ranks) do each('XDEL', stream, xdel[stream]) end
for _, day in ipairs(days) do
  local a = archive[day]
  each('RPUSH', p .. ':archive:' .. day, a.lines)
  redis.call('ZADD', p .. ':archive-days', now, day)
  redis.call('HINCRBY', p .. ':archive-bytes', day, a.bytes)
  each('SADD', p .. ':archive-ids:' .. day, a.ids)
end
each('HSET', p .. ':dead', dead)
each('ZADD', p .. ':delayed', delayed)
each('HSET', p .. ':delayed:body', bodies)
store(delivery, p .. ':delivery')
store(known, p .. ':known')
if woke then redis.call('PUBLISH', p .. ':wake', '1') end
return out
