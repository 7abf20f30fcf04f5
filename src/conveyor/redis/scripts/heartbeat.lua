-- Extend the leases a worker holds. A lease is renewed only while the job still carries
-- the worker's lease token; jobs whose lease is gone (reclaimed, cancelled) are returned
-- so the worker stops them. A renewed lease was not released as its worker's death after
-- all, so the job loses the `gone` mark a sweep may have left (release_worker.lua).
-- KEYS: leases, then each job's key (id1's, id2's, ...)
-- ARGV: lease_ms, id1, lease1, id2, lease2, ...
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id, lease, jobkey = ARGV[i], ARGV[i + 1], KEYS[1 + i / 2]
  if redis.call('HGET', jobkey, 'lease') == lease then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('HDEL', jobkey, 'gone')
  else
    lost[#lost + 1] = id
  end
end
return lost
