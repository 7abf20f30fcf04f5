-- A token bucket: `rate` tokens a second up to `burst`. A call needs `cost` tokens and asks
-- for up to `want` (at least `cost`): it gets as many whole tokens as the bucket holds, up to
-- `want`, or none when it holds fewer than `cost`. The API process spends the surplus on
-- its next calls without asking again (see conveyor.api.ratelimit).
-- Times are the Redis server's clock, so every API process shares one bucket per owner.
-- KEYS: bucket
-- ARGV: rate, burst, cost, want
-- Returns {tokens granted (0: refused), milliseconds until `cost` tokens are there (0 if granted)}.
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want = math.max(tonumber(ARGV[4]) or cost, cost)
local now = now_ms()
local held = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(held[1]) or burst
local since = now - (tonumber(held[2]) or now)
tokens = math.min(burst, tokens + math.max(since, 0) * rate / 1000)
local granted, wait = 0, 0
if tokens >= cost then
  granted = math.max(cost, math.min(want, math.floor(tokens)))
  tokens = tokens - granted
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {granted, wait}
