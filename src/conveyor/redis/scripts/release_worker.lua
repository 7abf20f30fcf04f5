-- A worker the registry found dead (its announcement expired) may hold leases in this
-- queue: make each of them due now, so that the next claim reclaims the job exactly as it
-- reclaims an expired lease (a LOST attempt on record, the fence bumped, the attempt
-- counted), seconds after the death instead of a whole lease later. The lease itself stays
-- the backstop for a worker that stops renewing without ever being found dead.
-- Fenced: only RUNNING jobs whose hash still names that worker as their holder; a job
-- already reclaimed, released or finished is untouched, so running this twice, or from
-- several sweepers at once, changes nothing more. If the worker was only slow and renews
-- before anyone claims, its lease simply goes on, as with a lease renewed just in time.
-- The job is marked `gone` (a private field) so its lost attempt says why it was lost.
-- KEYS: the queue's keys (QueueKeys.all): the leased jobs' hashes are found as the script
--       runs, under the queue's job prefix
-- ARGV: worker_id
-- Returns the number of leases made due.
local q = queue_keys()
local jp, worker = q.job_prefix, ARGV[1]
local now = now_ms()
local released = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.leases, '(' .. now, '+inf')) do
  local jobkey = jp .. id
  local held = redis.call('HMGET', jobkey, 'worker', 'state')
  if held[1] == worker and held[2] == '3' then
    redis.call('ZADD', q.leases, 'XX', now, id)
    redis.call('HSET', jobkey, 'gone', 1)
    wake_one(q.wake)
    released = released + 1
  end
end
return released
