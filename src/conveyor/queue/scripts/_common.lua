-- Shared by every script (prepended at load time by scripts.py).
-- States: 1 SCHEDULED, 2 QUEUED, 3 RUNNING, 4 SUCCEEDED, 5 RETRYING, 6 DEAD, 7 CANCELLED.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ready score: higher priority first, FIFO within a priority.
local function ready_score(seqkey, priority)
  local seq = redis.call('INCR', seqkey)
  return (9 - tonumber(priority)) * 1099511627776 + seq
end

-- Hash fields that are the workers' business, not the watchers'.
local PRIVATE = {payload = true, lease = true, worker = true, lost = true, exhausted = true}

-- Record a change of the job: bump its sequence, append the job (less its payload and the
-- workers' fields) to its event stream and publish the same JSON to live watchers. Returns
-- the job's whole hash (flat field/value list) as it now stands.
local function emit(jobkey, evkey, channel, maxlen)
  redis.call('HINCRBY', jobkey, 'seq', 1)
  local flat = redis.call('HGETALL', jobkey)
  local ev = {}
  for i = 1, #flat, 2 do
    local k = flat[i]
    if not PRIVATE[k] then ev[k] = flat[i + 1] end
  end
  local json = cjson.encode(ev)
  redis.call('XADD', evkey, 'MAXLEN', '~', maxlen, ev['seq'] .. '-1', 'j', json)
  redis.call('PUBLISH', channel, json)
  return flat
end

local function wake_one(wakekey)
  if redis.call('LLEN', wakekey) < 64 then redis.call('LPUSH', wakekey, '1') end
end

-- Write a job's hot state from a document (a table of strings, as Job.to_hot makes it) and
-- put it in line: the delayed set while SCHEDULED or RETRYING, else the ready set. One
-- wake token per job wakes as many blocked workers as there is work (capped); a delayed
-- job's token makes a worker learn the new due time and sleep until then.
-- q: {ready=, delayed=, wake=, seq=} keys of the job's queue.
local function place(jobkey, job, q)
  local fields = {}
  for k, v in pairs(job) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', jobkey, unpack(fields))
  if job['state'] == '1' or job['state'] == '5' then
    redis.call('ZADD', q.delayed, job['run_at'], job['id'])
  else
    redis.call('ZADD', q.ready, ready_score(q.seq, job['priority']), job['id'])
  end
  wake_one(q.wake)
end
