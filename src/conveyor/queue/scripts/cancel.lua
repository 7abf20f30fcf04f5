-- Cancel a job that has not ended (the database already says CANCELLED): take it out of
-- every set, drop its lease so its worker's late writes are refused, and tell the workers
-- to stop its handler. Returns the state it had (0: not in Redis).
-- KEYS: job, events, ready, delayed, leases
-- ARGV: id, finish_time, ttl_seconds, maxlen, channel, cancel_channel
local id = ARGV[1]
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
if state == 0 or state == 4 or state == 6 or state == 7 then return state end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
redis.call('HDEL', KEYS[1], 'lease', 'worker')
redis.call('HSET', KEYS[1], 'state', 7, 'finish_time', ARGV[2])
emit(KEYS[1], KEYS[2], ARGV[5], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if state == 3 then redis.call('PUBLISH', ARGV[6], id) end
return state
