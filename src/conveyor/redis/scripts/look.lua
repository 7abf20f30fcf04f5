-- GetJob's read in one round trip: the job's hot-state hash and, for a job waiting in line
-- (QUEUED), why it waits, as waiting.lua answers (read only).
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: job id, job key
-- Returns {flat hash (empty: Redis does not have the job), waiting.lua's answer or {}}.
local flat = redis.call('HGETALL', ARGV[2])
local waits = {}
if redis.call('HGET', ARGV[2], 'state') == '2' then
  waits = waiting_of(queue_keys(), ARGV[1], ARGV[2])
end
return {flat, waits}
