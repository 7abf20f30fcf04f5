-- Put committed jobs of one queue into Redis: each job's hot state, its first event, and
-- its place in the ready or delayed set; one call for a whole batch. (The first event is
-- published only: see `emit`.)
-- Idempotent per job: a job already present is left alone.
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: job_prefix, events_prefix, channel_prefix, maxlen, jobs_json
-- jobs_json is an array of the jobs' hot-state hashes (all values strings).
local jp, cp = ARGV[1], ARGV[3]  -- ARGV[2] and [4] (events prefix, maxlen): event 1 is not kept
local q = queue_keys()
local added = 0
for _, job in ipairs(cjson.decode(ARGV[5])) do
  local id = job['id']
  local jobkey = jp .. id
  if redis.call('EXISTS', jobkey) == 0 then
    job['seq'] = '1'
    place(jobkey, job, q)
    publish_placed(job, cp .. id)  -- event 1 is published, not kept (see `emit`)
    added = added + 1
  end
end
wake(q.wake, added)
return added
