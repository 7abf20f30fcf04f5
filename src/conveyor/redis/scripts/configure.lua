-- Apply a queue's settings (the database holds them; this is their copy where claims read
-- them) and wake blocked workers if the change may let jobs start: a resume, a raised cap
-- or rate. One token per ready job, capped as wake_one caps them.
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: paused (0/1), max_running (0: no cap), rate_jobs, rate_ms (0: no rate limit),
--       owner_max (0: no per-owner cap), per_key_max (0: no cap per concurrency key),
--       key_rate_jobs and key_rate_ms (the rate per rate key; 0: none)
local q = queue_keys()
redis.call('HSET', q.conf, 'paused', ARGV[1], 'max_running', ARGV[2], 'rate_jobs', ARGV[3],
  'rate_ms', ARGV[4], 'owner_max', ARGV[5], 'per_key_max', ARGV[6] or '0',
  'key_rate_jobs', ARGV[7] or '0', 'key_rate_ms', ARGV[8] or '0')
if tonumber(ARGV[3]) == 0 then redis.call('DEL', q.starts) end
-- A raised or removed per-owner or per-key cap, or a changed per-key rate, lets parked jobs
-- back in line (a claim parks again those still held back).
for _, group in ipairs(redis.call('SMEMBERS', q.parked_groups)) do unpark(q, group, false) end
if ARGV[1] == '0' then
  local ready = redis.call('ZCARD', q.ready)
  for _ = 1, math.min(ready, 64) do wake_one(q.wake) end
end
return 1
