-- Extend the leases a worker holds. A lease is renewed only while the job still carries
-- the worker's lease token; jobs whose lease is gone (reclaimed, cancelled) are returned
-- so the worker stops them. A renewed lease was not released as its worker's death after
-- all, so the job loses the `gone` mark a sweep may have left (release_worker.lua).
-- KEYS: leases
-- ARGV: lease_ms, job_prefix, id1, lease1, id2, lease2, ...
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV, 2 do
  local id, lease = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', ARGV[2] .. id, 'lease') == lease then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('HDEL', ARGV[2] .. id, 'gone')
  else
    lost[#lost + 1] = id
  end
end
return lost
