-- Gives a handler's lease back if it still holds the caller's token, and
-- tells the hosts waiting for it.
-- KEYS[1] the lease; ARGV[1] the token, ARGV[2] the release channel,
-- ARGV[3] the handler
-- Returns 1 if released, 0 if the lease is gone or another holder's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
