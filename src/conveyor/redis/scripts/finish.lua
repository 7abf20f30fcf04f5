-- Record the ends of attempts in one queue; an attempt whose lease is no longer held (a
-- stale worker) changes nothing. State 5 (RETRYING) puts the job in the retry set until
-- run_at; 4, 6, 7 are terminal and start the hot state's time to live. Each end is
-- tallied for GetQueueStats, and each freed lease wakes a worker if jobs wait (a queue at
-- its concurrency cap has workers blocked until one does).
-- Each job's hash is read once (its public fields and lease, never its payload) and
-- written once; the groups whose leases ended let their parked jobs back in line once for
-- the whole batch.
-- KEYS: the queue's keys (QueueKeys.all), then per attempt: the job's key, its log and its
--       legacy event stream (see `retire`)
-- ARGV: channel_prefix, ttl_seconds, maxlen,
--       then per attempt: id, lease, state, error, finish_time, run_at, fence
-- Returns per attempt 1 (recorded) or 0 (stale).
local q = queue_keys()
local cp, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3]
local OUTCOME = {[4] = 's', [5] = 'r', [6] = 'd', [7] = 'c'}
local out = {}
local freed = {}
local ended = 0
local outcomes = {}
local k = QUEUE_KEY_COUNT  -- the last key used
for i = 4, #ARGV, 7 do
  local id, lease, state = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local jobkey, evkey, oldkey = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  k = k + 3
  local job = read_job(jobkey, 'lease')
  if job['lease'] ~= lease then
    out[#out + 1] = 0
  else
    redis.call('ZREM', q.leases, id)
    lease_ended_job(q, job, freed)
    ended = ended + 1
    redis.call('HDEL', jobkey, 'lease', 'worker', 'lost')  -- lost attempts are on record now
    local changes = {state = state, error = ARGV[i + 3], fence = ARGV[i + 6]}
    if state == 5 then
      changes['run_at'] = ARGV[i + 5]
      redis.call('ZADD', q.retry, ARGV[i + 5], id)
      wake_one(q.wake)  -- a blocked worker wakes, sees the new due time and sleeps until then
    else
      changes['finish_time'] = ARGV[i + 4]
      if state == 4 then changes['progress'] = 100 end
    end
    emit_job(jobkey, evkey, cp .. id, maxlen, job, changes)
    if state ~= 5 then retire(jobkey, evkey, oldkey, ttl) end
    local outcome = OUTCOME[state]
    if outcome then outcomes[outcome] = (outcomes[outcome] or 0) + 1 end
    out[#out + 1] = 1
  end
end
if ended > 0 then
  unpark_freed(q, freed)
  tally(q, now_ms(), outcomes)
  if redis.call('ZCARD', q.ready) > 0 then wake_one(q.wake) end
end
return out
