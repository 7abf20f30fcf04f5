-- Record the ends of attempts in one queue; an attempt whose lease is no longer held (a
-- stale worker) changes nothing. State 5 (RETRYING) puts the job in the delayed set until
-- run_at; 4, 6, 7 are terminal and start the hot state's time to live.
-- KEYS: leases, delayed, wake
-- ARGV: job_prefix, events_prefix, channel_prefix, ttl_seconds, maxlen,
--       then per attempt: id, lease, state, error, finish_time, run_at, fence
-- Returns per attempt 1 (recorded) or 0 (stale).
local jp, ep, cp, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out = {}
for i = 6, #ARGV, 7 do
  local id, lease, state = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local jobkey, evkey = jp .. id, ep .. id
  if redis.call('HGET', jobkey, 'lease') ~= lease then
    out[#out + 1] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', jobkey, 'lease', 'worker', 'lost')  -- lost attempts are on record now
    redis.call('HSET', jobkey, 'state', state, 'error', ARGV[i + 3], 'fence', ARGV[i + 6])
    if state == 5 then
      redis.call('HSET', jobkey, 'run_at', ARGV[i + 5])
      redis.call('ZADD', KEYS[2], ARGV[i + 5], id)
      wake_one(KEYS[3])  -- a blocked worker wakes, sees the new due time and sleeps until then
    else
      redis.call('HSET', jobkey, 'finish_time', ARGV[i + 4])
      if state == 4 then redis.call('HSET', jobkey, 'progress', 100) end
    end
    emit(jobkey, evkey, cp .. id, maxlen)
    if state ~= 5 then
      redis.call('EXPIRE', jobkey, ttl)
      redis.call('EXPIRE', evkey, ttl)
    end
    out[#out + 1] = 1
  end
end
return out
