-- Takes a handler's lease if nobody holds it (see lease.rs).
-- KEYS[1] the lease (value: the holder's token), KEYS[2] the token counter,
-- KEYS[3] the wanted flag (set while another host waits for the lease)
-- ARGV[1] lease length in ms
-- Returns the new token, or 0 while another holder has the lease (then the
-- wanted flag tells the holder that someone waits).
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
  return 0
end
local token = redis.call('INCR', KEYS[2])
if not redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('DEL', KEYS[3])
return token
