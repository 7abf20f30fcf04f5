-- Cancel a job that has not ended (the database already says CANCELLED): take it out of
-- every set, drop its lease so its worker's late writes are refused, and tell the workers
-- to stop its handler. Returns the state it had (0: not in Redis) and, for a job that was
-- RUNNING, the attempt it stopped: its number, start time and worker, and the time it was
-- stopped (now: the job may have started after the database's cancel, on a claim that raced it).
-- KEYS: the queue's keys (QueueKeys.all), then the job's key, its log and its legacy event
--       stream (see `retire`)
-- ARGV: id, finish_time, ttl_seconds, maxlen, channel_prefix, cancel_channel
local q = queue_keys()
local id = ARGV[1]
local jobkey, evkey = KEYS[QUEUE_KEY_COUNT + 1], KEYS[QUEUE_KEY_COUNT + 2]
local state = tonumber(redis.call('HGET', jobkey, 'state') or '0')
if state == 0 or state == 4 or state == 6 or state == 7 then return {state} end
local running = redis.call('HMGET', jobkey, 'attempt', 'start_time', 'worker')
for _, set in ipairs({q.ready, q.delayed, q.retry}) do redis.call('ZREM', set, id) end
unpark_one(q, jobkey, id)
local freed = redis.call('ZREM', q.leases, id) == 1
if freed then lease_ended(q, jobkey) end
redis.call('HDEL', jobkey, 'lease', 'worker')
redis.call('HSET', jobkey, 'state', 7, 'finish_time', ARGV[2])
emit(jobkey, evkey, ARGV[5] .. id, ARGV[4])
retire(jobkey, evkey, KEYS[QUEUE_KEY_COUNT + 3], ARGV[3])
tally(q, now_ms(), 'c')
if freed and redis.call('ZCARD', q.ready) > 0 then wake_one(q.wake) end
if state ~= 3 then return {state} end
redis.call('PUBLISH', ARGV[6], id)
return {state, running[1] or '0', running[2] or '0', running[3] or '', now_ms()}
