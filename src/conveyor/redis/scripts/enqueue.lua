-- Put committed jobs of one queue into Redis: each job's hot state, its first event, and
-- its place in the ready or delayed set; one call for a whole batch. (The first event is
-- published only: see `emit`.)
-- Idempotent per job: a job already present is left alone.
-- KEYS: the queue's keys (QueueKeys.all), then each job's key (in jobs_json's order)
-- ARGV: channel_prefix, jobs_json, then one event per job
-- jobs_json is an array with, per job, its id, state, priority and run_at, then its hash as
-- a flat field/value list (all strings, seq 1 included); ARGV[2 + i] is job i's first
-- event, the JSON `emit` would publish for it. The Python side builds both (RedisQueue.
-- enqueue), so nothing here walks or encodes a job.
local cp = ARGV[1]
local q = queue_keys()
local added = 0
for i, job in ipairs(cjson.decode(ARGV[2])) do
  local id = job[1]
  local jobkey = KEYS[QUEUE_KEY_COUNT + i]
  if redis.call('EXISTS', jobkey) == 0 then
    redis.call('HSET', jobkey, unpack(job, 5))
    line_up(q, id, job[2], job[3], job[4])
    redis.call('PUBLISH', cp .. id, ARGV[2 + i])  -- event 1 is published, not kept (see `emit`)
    added = added + 1
  end
end
wake(q.wake, added)
return added
