-- Extends a handler's lease if it still holds the caller's token.
-- KEYS[1] the lease, KEYS[2] the wanted flag; ARGV[1] the token,
-- ARGV[2] lease length in ms
-- Returns 0 if the lease is gone or another holder's, 1 if renewed, 2 if
-- renewed while another host waits for it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
  return 1
end
return 0
