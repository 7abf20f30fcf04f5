-- A later submit of a debounced burst (conveyor.jobs.unique): if the job still waits
-- (SCHEDULED: not yet due, so not claimed), replace its payload and labels and move its
-- run_at, and its place in the delayed set, to the new due time, in one step that no claim
-- can come between; if Redis lacks the job (its first submit's enqueue not yet done, or
-- Redis lost it), put it in line with the new values (that enqueue then finds it present
-- and leaves it). Returns 1 when the job now waits with the new values, 0 when it is due,
-- running or ended (the submit then makes a new job).
-- KEYS: the queue's keys (QueueKeys.all), then the job's key and its log
-- ARGV: id, payload, run_at, labels ('' for none), maxlen, channel_prefix, then the job's
--       whole hash as a flat field/value list (Job.to_hot, for the job Redis lacks)
local q = queue_keys()
local id = ARGV[1]
local jobkey, evkey = KEYS[QUEUE_KEY_COUNT + 1], KEYS[QUEUE_KEY_COUNT + 2]
local state = tonumber(redis.call('HGET', jobkey, 'state') or '0')
if state == 0 then
  redis.call('HSET', jobkey, 'seq', '1', unpack(ARGV, 7))
  line_up(q, id, '1', '0', ARGV[3])
  wake_one(q.wake)
  return 1
end
if state ~= 1 then return 0 end
redis.call('ZADD', q.delayed, ARGV[3], id)
local job = read_job(jobkey)
local changes = {payload = ARGV[2], run_at = ARGV[3]}
if ARGV[4] ~= '' then
  changes['labels'] = ARGV[4]
elseif job['labels'] then
  redis.call('HDEL', jobkey, 'labels')
  job['labels'] = nil
end
emit_job(jobkey, evkey, ARGV[6] .. id, ARGV[5], job, changes)
return 1
