-- Put committed jobs of one queue into Redis: each job's hot state, its first event, and
-- its place in the ready or delayed set; one call for a whole batch.
-- Idempotent per job: a job already present is left alone (the reconciler may enqueue again).
-- KEYS: ready, delayed, wake, seq
-- ARGV: job_prefix, events_prefix, channel_prefix, maxlen, jobs_json
-- jobs_json is an array of the jobs' hot-state hashes (all values strings).
local jp, ep, cp, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local added = 0
for _, job in ipairs(cjson.decode(ARGV[5])) do
  local id = job['id']
  local jobkey = jp .. id
  if redis.call('EXISTS', jobkey) == 0 then
    local fields = {}
    for k, v in pairs(job) do
      fields[#fields + 1] = k
      fields[#fields + 1] = v
    end
    redis.call('HSET', jobkey, unpack(fields))
    if job['state'] == '1' then
      redis.call('ZADD', KEYS[2], job['run_at'], id)
    else
      redis.call('ZADD', KEYS[1], ready_score(KEYS[4], job['priority']), id)
    end
    -- One token per job wakes as many blocked workers as there is work (capped); a delayed
    -- job's token makes a worker learn the new due time and sleep until then.
    wake_one(KEYS[3])
    emit(jobkey, ep .. id, cp .. id, maxlen)
    added = added + 1
  end
end
return added
