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

-- The keys of the queue a script works on, in the order QueueKeys.all gives them. An
-- owner's parked jobs live under `parked_prefix .. owner` (same hash tag).
local function queue_keys()
  return {ready = KEYS[1], delayed = KEYS[2], retry = KEYS[3], leases = KEYS[4],
          wake = KEYS[5], seq = KEYS[6], conf = KEYS[7], starts = KEYS[8], running = KEYS[9],
          parked_owners = KEYS[10], parked_prefix = string.sub(KEYS[1], 1, -6) .. 'parked:'}
end

-- Per-owner caps (conf `owner_max`): an owner's leased jobs are counted in q.running; a
-- ready job whose owner is at the cap when a claim reaches it is parked (moved, with its
-- score, to the owner's parked set) so that claims look past it to other owners' jobs,
-- and when one of the owner's leases ends its best parked jobs go back in line.
local function unpark(q, owner, wake)
  local key = q.parked_prefix .. owner
  local waiting = redis.call('ZCARD', key)
  if waiting == 0 then return 0 end
  local cap = tonumber(redis.call('HGET', q.conf, 'owner_max') or '0')
  local room = waiting
  if cap > 0 then
    room = math.min(waiting, cap - tonumber(redis.call('HGET', q.running, owner) or '0'))
  end
  if room <= 0 then return 0 end
  local moved = redis.call('ZPOPMIN', key, room)
  for i = 1, #moved, 2 do redis.call('ZADD', q.ready, moved[i + 1], moved[i]) end
  if waiting == room then redis.call('SREM', q.parked_owners, owner) end
  if wake then for _ = 1, #moved / 2 do wake_one(q.wake) end end
  return #moved / 2
end

-- A lease of `owner`'s ended (finished, released, cancelled, expired): count it and let
-- the owner's parked jobs back in line.
local function lease_ended(q, owner)
  if not owner then return end
  if redis.call('HINCRBY', q.running, owner, -1) <= 0 then redis.call('HDEL', q.running, owner) end
  unpark(q, owner, true)
end

-- Write a job's hot state from a document (a table of strings, as Job.to_hot makes it) and
-- put it in line: the delayed set while SCHEDULED, the retry set while RETRYING (both by
-- due time), else the ready set. One wake token per job wakes as many blocked workers as
-- there is work (capped); a delayed job's token makes a worker learn the new due time and
-- sleep until then.
local function place(jobkey, job, q)
  local fields = {}
  for k, v in pairs(job) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', jobkey, unpack(fields))
  if job['state'] == '1' then
    redis.call('ZADD', q.delayed, job['run_at'], job['id'])
  elseif job['state'] == '5' then
    redis.call('ZADD', q.retry, job['run_at'], job['id'])
  else
    redis.call('ZADD', q.ready, ready_score(q.seq, job['priority']), job['id'])
  end
  wake_one(q.wake)
end

-- Count an ended attempt in the queue's per-second tally (GetQueueStats reads the last
-- minute): s succeeded, r failed and retrying, d dead, c cancelled.
local function tally(stats_prefix, now, outcome)
  local key = stats_prefix .. math.floor(now / 1000)
  redis.call('HINCRBY', key, outcome, 1)
  redis.call('EXPIRE', key, 120)
end

-- How many jobs the queue's settings let a claim start now, out of `wanted`, and, when
-- that is fewer than wanted because of its rate limit, when the next may start (-1: not
-- rate limited). Settings (cv:{Q}:conf): paused, max_running (0: no cap), rate_jobs and
-- rate_ms (at most rate_jobs starts in any window of rate_ms; 0: no limit). The starts of
-- the last window are kept in q.starts (member `<id>:<attempt>`), scored by time.
local function admissible(q, wanted, now)
  local conf = redis.call('HMGET', q.conf, 'paused', 'max_running', 'rate_jobs', 'rate_ms')
  if conf[1] == '1' then return 0, -1 end
  local allowed, retry_at = wanted, -1
  local cap = tonumber(conf[2] or '0')
  if cap > 0 then
    allowed = math.min(allowed, math.max(cap - redis.call('ZCARD', q.leases), 0))
  end
  local rate, window = tonumber(conf[3] or '0'), tonumber(conf[4] or '0')
  if rate > 0 and window > 0 then
    redis.call('ZREMRANGEBYSCORE', q.starts, '-inf', now - window)
    local left = math.max(rate - redis.call('ZCARD', q.starts), 0)
    if left < allowed then
      -- The window is full once these start: it opens again when its oldest start (one
      -- already there, else one of these) leaves it.
      allowed = left
      local oldest = redis.call('ZRANGE', q.starts, 0, 0, 'WITHSCORES')
      retry_at = (oldest[2] and tonumber(oldest[2]) or now) + window + 1
    end
  end
  return allowed, retry_at
end
