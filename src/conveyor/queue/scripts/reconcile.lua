-- Bring Redis in line with the database for unfinished jobs of one queue (the reconciler,
-- and RetryJob for a replayed job). Per job, given its database row as a hot-state document:
--   not in Redis                        -> put in line (Redis lost it, or it never got there)
--   finished in Redis, newer fence in   -> replaced by the row (a replay), keeping its event
--     the database                         sequence so watchers can resume across it
--   QUEUED/SCHEDULED/RETRYING but missing from its set, or RUNNING with no lease deadline
--                                       -> put back in its set; a RUNNING job gets a deadline
--                                          of now, so the next claim reclaims it
-- Everything else is left alone, so running this twice, or from several replicas, is safe.
-- KEYS: ready, delayed, leases, wake, seq
-- ARGV: job_prefix, events_prefix, channel_prefix, maxlen, jobs_json
-- Returns {restored, replayed, repaired}.
local jp, ep, cp, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local q = {ready = KEYS[1], delayed = KEYS[2], wake = KEYS[4], seq = KEYS[5]}
local restored, replayed, repaired = 0, 0, 0
for _, job in ipairs(cjson.decode(ARGV[5])) do
  local id = job['id']
  local jobkey, evkey = jp .. id, ep .. id
  local state = tonumber(redis.call('HGET', jobkey, 'state') or '0')
  if state == 0 then
    place(jobkey, job, q)
    emit(jobkey, evkey, cp .. id, maxlen)
    restored = restored + 1
  elseif state == 4 or state == 6 or state == 7 then
    if tonumber(job['fence']) > tonumber(redis.call('HGET', jobkey, 'fence') or '0') then
      local seq = redis.call('HGET', jobkey, 'seq') or '0'
      redis.call('DEL', jobkey)
      place(jobkey, job, q)
      redis.call('HSET', jobkey, 'seq', seq)
      redis.call('PERSIST', evkey)
      emit(jobkey, evkey, cp .. id, maxlen)
      replayed = replayed + 1
    end
  elseif state == 2 then
    if not redis.call('ZSCORE', KEYS[1], id) then
      redis.call('ZADD', KEYS[1], ready_score(KEYS[5], redis.call('HGET', jobkey, 'priority')), id)
      wake_one(KEYS[4])
      repaired = repaired + 1
    end
  elseif state == 1 or state == 5 then
    if not redis.call('ZSCORE', KEYS[2], id) then
      redis.call('ZADD', KEYS[2], redis.call('HGET', jobkey, 'run_at'), id)
      wake_one(KEYS[4])
      repaired = repaired + 1
    end
  elseif state == 3 then
    if not redis.call('ZSCORE', KEYS[3], id) then
      redis.call('ZADD', KEYS[3], now_ms(), id)
      wake_one(KEYS[4])
      repaired = repaired + 1
    end
  end
end
return {restored, replayed, repaired}
