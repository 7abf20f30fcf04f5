-- The reconciler's first step, for a page of unfinished jobs of one queue known only by id
-- and fence (cheap to send for every unfinished job on every pass):
--   QUEUED/SCHEDULED/RETRYING but missing from its set, or RUNNING with no lease deadline
--                                       -> put back in its set; a RUNNING job gets a deadline
--                                          of now, so the next claim reclaims it
--   not in Redis, or finished in Redis with an older fence than the database's
--                                       -> returned: restore.lua puts it back from its row
-- KEYS: the queue's keys (QueueKeys.all), then each job's key (in ARGV's order)
-- ARGV: per job: id, fence
-- Returns {repaired, id_to_restore1, id_to_restore2, ...}.
local q = queue_keys()
local out = {0}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local jobkey = KEYS[QUEUE_KEY_COUNT + (i + 1) / 2]
  local held = redis.call('HMGET', jobkey, 'state', 'fence')
  local state = tonumber(held[1] or '0')
  if state == 0 then
    out[#out + 1] = id
  elseif state == 4 or state == 6 or state == 7 then
    if tonumber(ARGV[i + 1]) > tonumber(held[2] or '0') then out[#out + 1] = id end
  else
    local set, score = nil, nil
    if state == 2 and not redis.call('ZSCORE', q.ready, id) and not parked_in(q, jobkey, id) then
      set, score = q.ready, ready_score(q.seq, redis.call('HGET', jobkey, 'priority'))
    elseif state == 1 and not redis.call('ZSCORE', q.delayed, id) then
      set, score = q.delayed, redis.call('HGET', jobkey, 'run_at')
    elseif state == 5 and not redis.call('ZSCORE', q.retry, id) then
      set, score = q.retry, redis.call('HGET', jobkey, 'run_at')
    elseif state == 3 and not redis.call('ZSCORE', q.leases, id) then
      set, score = q.leases, now_ms()
    end
    if set then
      redis.call('ZADD', set, score, id)
      wake_one(q.wake)
      out[1] = out[1] + 1
    end
  end
end
return out
