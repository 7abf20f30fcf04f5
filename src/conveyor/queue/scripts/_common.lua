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

-- Record a change of the job: bump its sequence, append the job (less its payload) to its
-- event stream and publish the same JSON to live watchers. Returns the job's whole hash
-- (flat field/value list) as it now stands.
local function emit(jobkey, evkey, channel, maxlen)
  redis.call('HINCRBY', jobkey, 'seq', 1)
  local flat = redis.call('HGETALL', jobkey)
  local ev = {}
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k ~= 'payload' and k ~= 'lease' and k ~= 'worker' then ev[k] = flat[i + 1] end
  end
  local json = cjson.encode(ev)
  redis.call('XADD', evkey, 'MAXLEN', '~', maxlen, ev['seq'] .. '-1', 'j', json)
  redis.call('PUBLISH', channel, json)
  return flat
end

local function wake_one(wakekey)
  if redis.call('LLEN', wakekey) < 64 then redis.call('LPUSH', wakekey, '1') end
end
