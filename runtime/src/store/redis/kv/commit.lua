-- Commits a batch of key-value buffers (see kv.rs, `RedisKv::commit`) in
-- one script call, so no other client sees a half-applied batch. Each
-- buffer is checked (mark, read versions, increment sums) before its first
-- write, so a refused buffer writes nothing.
--
-- KEYS[1]  sorted set of marks, scored by the server's time in ms
-- KEYS[2]  set of bucket names that hold a key
-- per bucket i (1-based): KEYS[2i+1] hash key -> "<version> <value>",
--                         KEYS[2i+2] sorted set of its keys (score 0)
-- per lease j (1-based):  KEYS[2 + 2 * nbuckets + j] a handler's lease
--                         (value: its holder's fencing token; lease.rs)
-- ARGV: nbuckets, bucket names..., nleases, nbuffers, then per buffer:
--   mark, lease index (0: not fenced), token,
--   nreads, (bucket index, key, version) * nreads,
--   nafter, (mark) * nafter  -- pending buffers of its lane it was built on
--   nops, (bucket index, key, op, arg) * nops
--   op: "s" set (arg: value), "d" delete (arg: ""), "a" add (arg: decimal delta)
-- Returns one integer per buffer: 0 applied, 1 already applied, 2 conflict
-- (a version read changed, a buffer it was built on is not applied, or it
-- is fenced by a lease that no longer holds its token).

local MAX = '18446744073709551615'

-- Canonical digits of a decimal u64 as Rust's `str::trim` + `parse::<u64>`
-- read it (ASCII whitespace only), or nil.
local function decimal(s)
  s = string.match(s, '^%s*(.-)%s*$')
  if string.sub(s, 1, 1) == '+' then s = string.sub(s, 2) end
  if not string.match(s, '^%d+$') then return nil end
  s = string.match(s, '^0*(%d.*)$')
  if string.len(s) > string.len(MAX) or (string.len(s) == string.len(MAX) and s > MAX) then return nil end
  return s
end

-- a + b for canonical decimals, exact; nil past u64 (Lua numbers are doubles).
local function add(a, b)
  local digits, carry = {}, 0
  local i, j = string.len(a), string.len(b)
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    digits[#digits + 1] = string.char(48 + d % 10)
    carry = math.floor(d / 10)
  end
  return decimal(string.reverse(table.concat(digits)))
end

-- Version (0: absent) and value of a key of bucket `b`.
local function current(b, key)
  local raw = redis.call('HGET', KEYS[2 * b + 1], key)
  if not raw then return 0, nil end
  local sp = string.find(raw, ' ', 1, true)
  return tonumber(string.sub(raw, 1, sp - 1)), string.sub(raw, sp + 1)
end

-- Parse everything first: a malformed call fails before any write.
local p = 1
local function take()
  local v = ARGV[p]
  if v == nil then error('kv commit: too few arguments') end
  p = p + 1
  return v
end
local names = {}
for i = 1, tonumber(take()) do names[i] = take() end
local leases = 2 + 2 * #names
local nleases = tonumber(take())
local buffers = {}
for n = 1, tonumber(take()) do
  local buffer = { mark = take(), lease = tonumber(take()), token = take(), reads = {}, after = {}, ops = {} }
  if buffer.lease < 0 or buffer.lease > nleases then error('kv commit: bad lease index') end
  for r = 1, tonumber(take()) do
    local b = tonumber(take())
    local key = take()
    buffer.reads[r] = { b = b, key = key, version = tonumber(take()) }
  end
  for a = 1, tonumber(take()) do buffer.after[a] = take() end
  for o = 1, tonumber(take()) do
    local b = tonumber(take())
    local key = take()
    local kind = take()
    buffer.ops[o] = { b = b, key = key, kind = kind, arg = take() }
  end
  buffers[n] = buffer
end
if ARGV[p] ~= nil then error('kv commit: too many arguments') end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {}
for n, buffer in ipairs(buffers) do
  if #buffer.ops == 0 then
    out[n] = 0
  elseif redis.call('ZSCORE', KEYS[1], buffer.mark) then
    -- Not checked for conflicts: running its event again would only find
    -- the mark again.
    out[n] = 1
  else
    local stale = false
    -- Fenced: its lane's lease must still hold the token it ran under, or
    -- another host has taken over (or may) and this write is too late.
    if buffer.lease > 0 and redis.call('GET', KEYS[leases + buffer.lease]) ~= buffer.token then
      stale = true
    end
    -- Built on a pending buffer of its lane that is not applied (refused,
    -- or not here yet): run it again. One applied earlier in this script
    -- has its mark already.
    for _, m in ipairs(buffer.after) do
      if not redis.call('ZSCORE', KEYS[1], m) then
        stale = true
        break
      end
    end
    for _, r in ipairs(buffer.reads) do
      if (current(r.b, r.key)) ~= r.version then
        stale = true
        break
      end
    end
    local sums = {}
    if not stale then
      for i, op in ipairs(buffer.ops) do
        if op.kind == 'a' then
          local _, old = current(op.b, op.key)
          local base = '0'
          if old then base = decimal(old) end
          -- Set to something that is not a number since it was read, or
          -- past u64: run the event again; its own increment says which.
          local sum = base and add(base, op.arg)
          if not sum then
            stale = true
            break
          end
          sums[i] = sum
        end
      end
    end
    if stale then
      out[n] = 2
    else
      redis.call('ZADD', KEYS[1], now, buffer.mark)
      for i, op in ipairs(buffer.ops) do
        local data, keys = KEYS[2 * op.b + 1], KEYS[2 * op.b + 2]
        if op.kind == 'd' then
          redis.call('HDEL', data, op.key)
          redis.call('ZREM', keys, op.key)
          if redis.call('HLEN', data) == 0 then redis.call('SREM', KEYS[2], names[op.b]) end
        else
          local value = op.arg
          if op.kind == 'a' then value = sums[i] end
          local version = current(op.b, op.key)
          redis.call('HSET', data, op.key, string.format('%d', version + 1) .. ' ' .. value)
          redis.call('ZADD', keys, 0, op.key)
          redis.call('SADD', KEYS[2], names[op.b])
        end
      end
      out[n] = 0
    end
  end
end
return out
