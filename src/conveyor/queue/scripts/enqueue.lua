-- Put a committed job into Redis: its hot state, its first event, and the ready or delayed set.
-- Idempotent: a job already present is left alone (the reconciler may enqueue again).
-- KEYS: job, events, ready, delayed, wake, seq
-- ARGV: id, state, priority, run_at, maxlen, channel, field1, value1, ...
local id, state, priority, run_at = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if state == 1 then
  redis.call('ZADD', KEYS[4], run_at, id)
  wake_one(KEYS[5])  -- a blocked worker wakes, sees the new due time and sleeps until then
else
  redis.call('ZADD', KEYS[3], ready_score(KEYS[6], priority), id)
  wake_one(KEYS[5])
end
emit(KEYS[1], KEYS[2], ARGV[6], ARGV[5])
return 1
