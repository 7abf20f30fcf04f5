-- A worker announces itself: its id goes in the registry's sorted set scored by the Redis
-- server's clock (never a worker's, so workers with skewed clocks judge each other alike),
-- and the reply names the workers that have not announced for `stale_ms`: the ones that
-- may be dead, for the caller to check (their announcement may last longer than the
-- caller's own, if they announce less often) and sweep.
-- KEYS: cv:workers
-- ARGV: worker_id, stale_ms, at most this many ids returned
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])),
  'LIMIT', 0, tonumber(ARGV[3]))
