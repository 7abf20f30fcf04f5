-- A token bucket: `rate` tokens a second up to `burst`; a call takes `cost` tokens or none.
-- Times are the Redis server's clock, so every API process shares one bucket per owner.
-- KEYS: bucket
-- ARGV: rate, burst, cost
-- Returns {allowed (1/0), milliseconds until `cost` tokens are there (0 if allowed)}.
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local held = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(held[1]) or burst
local since = now - (tonumber(held[2]) or now)
tokens = math.min(burst, tokens + math.max(since, 0) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
