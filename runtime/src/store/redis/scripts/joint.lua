-- Commit a batch's key-value buffers and settle its events in one script
-- (issue 13): joint.rs puts kv/commit.lua's body in a function
-- `commit(KEYS, ARGV)` and settle.lua's in `settle(ARGV)` ahead of this.
-- KEYS: commit.lua's. ARGV = n, commit.lua's n arguments, then prefix,
-- group, now (ms), the number of buffers b and b event indexes (1-based,
-- 0: the buffer's event is not settled in this batch), then per event
--   n, its settlement (n settle.lua arguments),
--   r, its settlement when a buffer of it is refused (r arguments; r = 0
--   when it has none).
-- Returns {commit.lua's reply, settle.lua's reply}.
local nkv = tonumber(ARGV[1])
local kv = {}
for k = 1, nkv do kv[k] = ARGV[1 + k] end
local codes = commit(KEYS, kv)
local i = nkv + 2
local argv = { ARGV[i], ARGV[i + 1], ARGV[i + 2] }
local nb = tonumber(ARGV[i + 3])
i = i + 4
local refused = {}
for b = 1, nb do
  if codes[b] == 2 then refused[tonumber(ARGV[i + b - 1])] = true end
end
i = i + nb
local e = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local r = tonumber(ARGV[i + 1 + n])
  local from, count = i + 1, n
  if refused[e] and r > 0 then from, count = i + 2 + n, r end
  for j = from, from + count - 1 do argv[#argv + 1] = ARGV[j] end
  i = i + 2 + n + r
  e = e + 1
end
local applied = {}
if #argv > 3 then applied = settle(argv) end
return { codes, applied }
