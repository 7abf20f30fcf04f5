-- Record the ends of attempts in one queue; an attempt whose lease is no longer held (a
-- stale worker) changes nothing. State 5 (RETRYING) puts the job in the retry set until
-- run_at; 4, 6, 7 are terminal and start the hot state's time to live. Each end is
-- tallied for GetQueueStats, and each freed lease wakes a worker if jobs wait (a queue at
-- its concurrency cap has workers blocked until one does).
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: job_prefix, events_prefix, channel_prefix, ttl_seconds, maxlen, stats_prefix,
--       then per attempt: id, lease, state, error, finish_time, run_at, fence
-- Returns per attempt 1 (recorded) or 0 (stale).
local q = queue_keys()
local jp, ep, cp, ttl, maxlen, sp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local OUTCOME = {[4] = 's', [5] = 'r', [6] = 'd', [7] = 'c'}
local now = now_ms()
local out = {}
local freed = false
for i = 7, #ARGV, 7 do
  local id, lease, state = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local jobkey, evkey = jp .. id, ep .. id
  if redis.call('HGET', jobkey, 'lease') ~= lease then
    out[#out + 1] = 0
  else
    redis.call('ZREM', q.leases, id)
    lease_ended(q, jobkey)
    freed = true
    redis.call('HDEL', jobkey, 'lease', 'worker', 'lost')  -- lost attempts are on record now
    redis.call('HSET', jobkey, 'state', state, 'error', ARGV[i + 3], 'fence', ARGV[i + 6])
    if state == 5 then
      redis.call('HSET', jobkey, 'run_at', ARGV[i + 5])
      redis.call('ZADD', q.retry, ARGV[i + 5], id)
      wake_one(q.wake)  -- a blocked worker wakes, sees the new due time and sleeps until then
    else
      redis.call('HSET', jobkey, 'finish_time', ARGV[i + 4])
      if state == 4 then redis.call('HSET', jobkey, 'progress', 100) end
    end
    emit(jobkey, evkey, cp .. id, maxlen)
    if state ~= 5 then retire(jobkey, evkey, ttl) end
    if OUTCOME[state] then tally(sp, now, OUTCOME[state]) end
    out[#out + 1] = 1
  end
end
if freed and redis.call('ZCARD', q.ready) > 0 then wake_one(q.wake) end
return out
