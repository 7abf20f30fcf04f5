-- GetJob's read in one round trip: the job's hot-state hash and, for a job waiting in line
-- (QUEUED), why it waits, as waiting.lua answers (read only).
-- KEYS: the queue's keys (QueueKeys.all), then the job's key
-- ARGV: job id
-- Returns {flat hash (empty: Redis does not have the job), waiting.lua's answer or {}}.
local jobkey = KEYS[QUEUE_KEY_COUNT + 1]
local flat = redis.call('HGETALL', jobkey)
local waits = {}
if redis.call('HGET', jobkey, 'state') == '2' then
  waits = waiting_of(queue_keys(), ARGV[1], jobkey)
end
return {flat, waits}
