-- Put jobs back in Redis from their database rows (the reconciler's second step, and
-- RetryJob). Per job, given its row as a hot-state document:
--   not in Redis                        -> put in line (Redis lost it, or it never got there)
--   finished in Redis, newer fence in   -> replaced by the row (a replay), keeping its event
--     the database                         sequence so watchers can resume across it
-- Anything else is left alone, so a stale or repeated call is harmless.
-- KEYS: the queue's keys (QueueKeys.all), then per job (in jobs_json's order): its key and
--       its log
-- ARGV: channel_prefix, maxlen, jobs_json
-- Returns {restored, replayed}.
local cp, maxlen = ARGV[1], ARGV[2]
local q = queue_keys()
local restored, replayed = 0, 0
for i, job in ipairs(cjson.decode(ARGV[3])) do
  local id = job['id']
  local jobkey, evkey = KEYS[QUEUE_KEY_COUNT + 2 * i - 1], KEYS[QUEUE_KEY_COUNT + 2 * i]
  local state = tonumber(redis.call('HGET', jobkey, 'state') or '0')
  if state == 0 then
    place(jobkey, job, q)
    emit(jobkey, evkey, cp .. id, maxlen)
    restored = restored + 1
  elseif (state == 4 or state == 6 or state == 7)
      and tonumber(job['fence']) > tonumber(redis.call('HGET', jobkey, 'fence') or '0') then
    local seq = redis.call('HGET', jobkey, 'seq') or '0'
    redis.call('DEL', jobkey)
    place(jobkey, job, q)
    redis.call('HSET', jobkey, 'seq', seq)
    redis.call('PERSIST', evkey)
    emit(jobkey, evkey, cp .. id, maxlen)
    replayed = replayed + 1
  end
end
wake(q.wake, restored + replayed)
return {restored, replayed}
