-- Record the end of an attempt that still holds its lease (a stale worker changes nothing).
-- state 5 (RETRYING) puts the job in the delayed set until run_at; 4, 6, 7 are terminal and
-- start the hot state's time to live.
-- KEYS: job, events, leases, delayed, wake
-- ARGV: id, lease, state, error, finish_time, run_at, ttl_seconds, maxlen, channel
local id, state = ARGV[1], tonumber(ARGV[3])
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[1], 'lease', 'worker')
redis.call('HSET', KEYS[1], 'state', state, 'error', ARGV[4])
if state == 5 then
  redis.call('HSET', KEYS[1], 'run_at', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], id)
  wake_one(KEYS[5])  -- a blocked worker wakes, sees the new due time and sleeps until then
else
  redis.call('HSET', KEYS[1], 'finish_time', ARGV[5])
  if state == 4 then redis.call('HSET', KEYS[1], 'progress', 100) end
end
emit(KEYS[1], KEYS[2], ARGV[9], ARGV[8])
if state ~= 5 then
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
return 1
