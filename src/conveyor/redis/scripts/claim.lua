-- Claim up to `count` jobs for a worker, atomically: promote due scheduled and retrying
-- jobs and the parked jobs of rate keys whose window opened (q.rate_due), put jobs whose
-- lease expired back in line (their worker died or froze), then pop the best ready jobs
-- the queue's settings admit (paused, concurrency cap, rate limit; see `admissible`; jobs
-- of an owner or key at its cap are parked, see `held_by`, and so are those of a rate key
-- that may not start yet, see `rate_opens`) and lease them. Times are the Redis server's clock, never a worker's.
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: count, lease_ms, lease_token, worker_id, channel_prefix, maxlen,
--       the claiming worker's default per-owner cap (kept in the conf as `owner_default`
--       for every script that reads caps; a queue's own `owner_max` wins over it)
-- The jobs a claim pops, promotes or reclaims are known only as it runs: their hashes and
-- logs are the queue's `job_prefix .. id` and `events_prefix .. id` (see `queue_keys`).
-- Returns {next_wake_ms, job1_flat_hash, job2_flat_hash, ...}; next_wake_ms is the earliest
-- due time, lease deadline or rate-limit opening (the queue's, or a parked rate key's)
-- still pending (-1: none), so the worker can block until then.
-- A reclaimed job's hash carries `lost`, a JSON list of the attempts lost since its last
-- recorded outcome ({a: attempt, w: worker, s: start, t: when reclaimed}); its new worker
-- must fence them off and record them before it runs the job. The list is kept until an
-- outcome is recorded (finish.lua), so a reclaimer that dies before recording them passes
-- them on. `exhausted` marks a job whose lost attempt was its last: the claimer records it
-- DEAD instead of running it.
local q = queue_keys()
local count, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local jp, ep, cp, maxlen = q.job_prefix, q.events_prefix, ARGV[5], ARGV[6]
local now = now_ms()
if ARGV[7] and redis.call('HGET', q.conf, 'owner_default') ~= ARGV[7] then
  redis.call('HSET', q.conf, 'owner_default', ARGV[7])
end

local function requeue(id)
  local jobkey = jp .. id
  local pr = redis.call('HGET', jobkey, 'priority')
  if not pr then return end
  redis.call('HSET', jobkey, 'state', 2)
  redis.call('HDEL', jobkey, 'lease', 'worker', 'gone')
  redis.call('ZADD', q.ready, ready_score(q.seq, pr), id)
  emit(jobkey, ep .. id, cp .. id, maxlen)
end

for _, set in ipairs({q.delayed, q.retry}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', set, id)
    local state = redis.call('HGET', jp .. id, 'state')
    if state == '1' or state == '5' then requeue(id) end
  end
end
-- Rate keys whose window opened: their parked jobs back in line, as many as it has room
-- for (`unpark`; a group with jobs left is due again at its next opening, one whose jobs
-- were cancelled meanwhile leaves q.parked_groups).
for _, group in ipairs(redis.call('ZRANGEBYSCORE', q.rate_due, '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', q.rate_due, group)
  unpark(q, group, false)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.leases, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', q.leases, id)
  local jobkey = jp .. id
  lease_ended(q, jobkey)
  if redis.call('HGET', jobkey, 'state') == '3' then
    local held = redis.call('HMGET', jobkey, 'attempt', 'worker', 'start_time', 'lost', 'gone')
    local lost = held[4] and cjson.decode(held[4]) or {}
    local entry = {a = tonumber(held[1]) or 0, w = held[2] or '', s = tonumber(held[3]) or 0,
                   t = now}
    if held[5] then entry['g'] = 1 end  -- made due by release_worker.lua: found dead
    lost[#lost + 1] = entry
    redis.call('HSET', jobkey, 'lost', cjson.encode(lost), 'error', lost_error(entry))
    requeue(id)
  end
end

local out = {-1}
local allowed, rate_wake = 0, -1
if count > 0 and redis.call('ZCARD', q.ready) > 0 then
  allowed, rate_wake = admissible(q, count, now)
end
local limited = redis.call('HGET', q.conf, 'rate_jobs')
local leased, looked = 0, 0
-- Lease a popped job (its whole hash as a table): it is changed in one HSET and its event
-- built from the fields in hand (`emit_job`); the claimer gets all of it, payload included.
local function lease(id, job)
  local jobkey = jp .. id
  local attempt = tonumber(job['attempt'])
  local changes = {state = 3, start_time = now, worker = ARGV[4], progress = 0,
                   progress_message = ''}
  local exhausted = attempt >= tonumber(job['max_attempts'])
  if exhausted then
    changes['lease'] = ARGV[3] .. ':' .. attempt .. ':x'
  else
    attempt = attempt + 1
    changes['attempt'] = attempt
    changes['lease'] = ARGV[3] .. ':' .. attempt
  end
  redis.call('ZADD', q.leases, now + lease_ms, id)
  lease_started(q, job)
  if limited and limited ~= '0' then redis.call('ZADD', q.starts, now, id .. ':' .. attempt) end
  if job['rate_key'] then rate_started(q, job['rate_key'], id .. ':' .. attempt, now) end
  emit_job(jobkey, ep .. id, cp .. id, maxlen, job, changes)
  if job['exhausted'] or job['gone'] then redis.call('HDEL', jobkey, 'exhausted', 'gone') end
  job['exhausted'] = exhausted and '1' or nil  -- told to the claimer, not kept
  local reply = {}
  for k, v in pairs(job) do
    reply[#reply + 1] = k
    reply[#reply + 1] = v
  end
  out[#out + 1] = reply
  leased = leased + 1
end
-- The rate group holding back `job` now (`r:<key>`), or nil; a key found closed stays so
-- for the rest of the claim (`closed`: key -> when it opens, put in q.rate_due on parking).
local closed = {}
local function rate_held(job)
  local key = job['rate_key']
  if not key then return nil end
  if closed[key] then return 'r:' .. key end
  local opens = rate_opens(q, key, now)
  if opens <= now then return nil end
  closed[key] = opens
  return 'r:' .. key
end
-- Pop the best ready jobs; park the jobs whose owner or key is at its cap, or whose rate
-- key may not start yet (looking at SCAN jobs at most per claim), and go on to the next.
local SCAN = 1000
local capped = {}  -- groups found at their cap (see held_by)
local parked = {}  -- group -> score, id, ... (parked at once, see park)
while leased < allowed and looked < SCAN do
  local popped = redis.call('ZPOPMIN', q.ready, allowed - leased)
  if #popped == 0 then break end
  for i = 1, #popped, 2 do
    local id = popped[i]
    looked = looked + 1
    -- The job's hash, read once for both the cap check and the lease.
    local flat = redis.call('HGETALL', jp .. id)
    local job = {}
    for j = 1, #flat, 2 do job[flat[j]] = flat[j + 1] end
    local group = job['attempt'] and (held_by(q, job, capped) or rate_held(job))
    if group then
      local scored = parked[group] or {}
      scored[#scored + 1] = popped[i + 1]
      scored[#scored + 1] = id
      parked[group] = scored
    elseif job['attempt'] then
      lease(id, job)
    end
  end
end
park(q, parked)
for key, opens in pairs(closed) do
  if parked['r:' .. key] then rate_due_at(q, 'r:' .. key, opens) end
end
-- More work may be waiting for the next worker: pass a wake token on. (Not when the
-- queue's settings held jobs back: a finished job, ResumeQueue or the rate limit's
-- opening wakes a worker then, and a token now would only make workers spin.)
if allowed > 0 and (leased == count or looked >= SCAN) and redis.call('ZCARD', q.ready) > 0
    and redis.call('LLEN', q.wake) == 0 then
  redis.call('LPUSH', q.wake, '1')
end

local next_wake = rate_wake
for _, key in ipairs({q.delayed, q.retry, q.leases, q.rate_due}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2])
    if next_wake < 0 or t < next_wake then next_wake = t end
  end
end
out[1] = next_wake
return out
