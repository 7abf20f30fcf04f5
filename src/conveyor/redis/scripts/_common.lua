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

-- The fields a job's events carry: all of its hash but the payload and the fields that are
-- the workers' business, not the watchers' (lease, worker, lost, exhausted, gone; Job.to_hot
-- writes them; tests/integration check that this list and to_hot agree). Events are built
-- from these alone, so a change never reads or re-encodes the payload.
local PUBLIC = {'id', 'owner', 'type', 'queue', 'state', 'priority', 'max_attempts',
                'timeout_ms', 'create_time', 'run_at', 'attempt', 'progress',
                'progress_message', 'error', 'retry', 'fence', 'key_id', 'key_cap',
                'idempotency_key', 'start_time', 'finish_time', 'retention_ms', 'trace_parent',
                'shard', 'labels', 'concurrency_key', 'rate_key',
                'seq'}

-- A job's public fields (and the named private ones) in one HMGET, as a table by name
-- (a field the hash lacks is absent). An empty table: Redis does not have the job.
local function read_job(jobkey, ...)
  local names = {unpack(PUBLIC)}
  for _, name in ipairs({...}) do names[#names + 1] = name end
  local values = redis.call('HMGET', jobkey, unpack(names))
  local job = {}
  for i, name in ipairs(names) do
    if values[i] then job[name] = values[i] end
  end
  return job
end

-- Record a change of the job `job` (a table as read_job gives it, or the whole hash): set
-- the fields in `changes` (a table by name; every value a string or number) and the next
-- sequence in one HSET, append the job's public fields as JSON to its event log (a list,
-- the last `maxlen` events; see keys.py) and publish the same JSON to live watchers.
-- `job` is updated in place.
-- A new job's first event (enqueue.lua, as RedisQueue.enqueue builds it) is published only:
-- a watcher resuming from sequence 0 gets the job's snapshot, never event 1.
local function emit_job(jobkey, evkey, channel, maxlen, job, changes)
  local fields = {}
  for k, v in pairs(changes) do
    job[k] = tostring(v)
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  job['seq'] = tostring((tonumber(job['seq']) or 0) + 1)
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = job['seq']
  redis.call('HSET', jobkey, unpack(fields))
  local ev = {}
  for _, name in ipairs(PUBLIC) do ev[name] = job[name] end
  local json = cjson.encode(ev)
  if redis.call('RPUSH', evkey, json) > tonumber(maxlen) then
    redis.call('LTRIM', evkey, -tonumber(maxlen), -1)
  end
  redis.call('PUBLISH', channel, json)
end

-- `emit_job` for a job whose hash the caller has already changed: reads its public fields.
local function emit(jobkey, evkey, channel, maxlen)
  emit_job(jobkey, evkey, channel, maxlen, read_job(jobkey), {})
end

-- A job has ended: Redis keeps its hash and event log `ttl` seconds more (GetJob and
-- WatchJob resumes are served from them until then, from PostgreSQL after). The log is a
-- list, stored compactly as it grows (a stream would keep a preallocated 4 KB node and
-- need a DUMP/RESTORE to shed it).
--
-- A job claimed before the upgrade that made the log a list (issue 21) still has its old
-- event stream, `cv:{Q}:events:<id>` (`oldkey`, passed in KEYS as every key is), which
-- nothing would ever expire: it goes here (same hash tag, so the same slot; a job that
-- never had one costs one DEL of a missing key).
local function retire(jobkey, evkey, oldkey, ttl)
  redis.call('EXPIRE', jobkey, ttl)
  redis.call('EXPIRE', evkey, ttl)
  redis.call('DEL', oldkey)
end

-- Why an attempt was lost (entry: claim.lua's `lost` entry). Claim.from_hash says the same.
local function lost_error(entry)
  local worker = entry['w'] ~= '' and entry['w'] or '?'
  if entry['g'] then
    return 'lease released: worker ' .. worker .. ' stopped announcing itself'
  end
  return 'lease expired: worker ' .. worker .. ' stopped renewing it'
end

-- Wake up to `n` blocked workers: the wake list holds at most 64 tokens, pushed at once.
local function wake(wakekey, n)
  local room = math.min(n, 64 - redis.call('LLEN', wakekey))
  if room > 0 then
    local tokens = {}
    for i = 1, room do tokens[i] = '1' end
    redis.call('LPUSH', wakekey, unpack(tokens))
  end
end

local function wake_one(wakekey)
  wake(wakekey, 1)
end

-- The keys of the queue a script works on, in the order QueueKeys.all gives them (the names
-- are QueueKeys' own). Every key a script touches is passed in KEYS, so that a cluster
-- client sends the call to the node of its slot and that node can check it. A key whose
-- name a script learns only as it runs (a popped job's hash and log, a cap group's parked
-- set, the tally of a second read from the server's clock, a rate key's start log) is a
-- prefix from here, itself of the queue's hash tag and so declaring the slot, followed by
-- the id, group, second or key: `q.job_prefix .. id`, `q.parked_prefix .. group`,
-- `q.stats_prefix .. second`, `q.rate_prefix .. 's:' .. key`.
-- A script's own keys (a job's, when the caller knows which) follow these, from
-- KEYS[QUEUE_KEY_COUNT + 1] on.
local QUEUE_KEY_COUNT = 17
local function queue_keys()
  return {ready = KEYS[1], delayed = KEYS[2], retry = KEYS[3], leases = KEYS[4],
          wake = KEYS[5], seq = KEYS[6], conf = KEYS[7], starts = KEYS[8], running = KEYS[9],
          parked_groups = KEYS[10], caps = KEYS[11], job_prefix = KEYS[12],
          events_prefix = KEYS[13], parked_prefix = KEYS[14], stats_prefix = KEYS[15],
          rate_due = KEYS[16], rate_prefix = KEYS[17]}
end

-- Concurrency caps within a queue, per owner (conf `owner_max`, else the workers' default
-- `owner_default`, CONVEYOR_DEFAULT_MAX_RUNNING_PER_OWNER, which claims keep in the conf),
-- per API key (the job's `key_cap`, set from the key that submitted it) and per
-- concurrency key (conf `per_key_max`, the queue's max_running_per_key, for the jobs
-- submitted with that `concurrency_key`): leased jobs are counted per group in q.running
-- (fields `o:<owner>`, `k:<key id>` and `c:<concurrency key>`, an API key's cap kept in
-- q.caps). A job counts in every group it belongs to and runs only while none of them is
-- at its cap (0: no cap). A ready job whose group is at its cap when a claim reaches it
-- is parked (moved, with its score, to the group's parked set) so that claims look past
-- it to other jobs, and when one of the group's leases ends its best parked jobs go back
-- in line.
-- (The conf's caps are read once per script call: no script changes the conf after
-- reading it.)
local owner_cap, per_key_cap = nil, nil
local function group_cap(q, group)
  local kind = string.sub(group, 1, 2)
  if kind == 'o:' then
    if owner_cap == nil then
      local caps = redis.call('HMGET', q.conf, 'owner_max', 'owner_default')
      owner_cap = tonumber(caps[1] or '0')
      if owner_cap <= 0 then owner_cap = tonumber(caps[2] or '0') end
    end
    return owner_cap
  elseif kind == 'c:' then
    if per_key_cap == nil then
      per_key_cap = tonumber(redis.call('HGET', q.conf, 'per_key_max') or '0')
    end
    return per_key_cap
  end
  return tonumber(redis.call('HGET', q.caps, group) or '0')
end

-- The groups a job counts in, from its fields `owner`, `key_id` and `concurrency_key` (a
-- table by name): always its owner's, then its API key's and its concurrency key's when
-- it has them.
local function groups_of(job)
  local groups = {'o:' .. (job['owner'] or '')}
  local key_id, ckey = job['key_id'], job['concurrency_key']
  if key_id and key_id ~= '' then groups[#groups + 1] = 'k:' .. key_id end
  if ckey and ckey ~= '' then groups[#groups + 1] = 'c:' .. ckey end
  return groups
end

local function cap_fields(jobkey)
  local held = redis.call('HMGET', jobkey, 'owner', 'key_id', 'key_cap', 'concurrency_key',
    'rate_key')
  return {owner = held[1], key_id = held[2], key_cap = held[3], concurrency_key = held[4],
          rate_key = held[5]}
end

-- The cap of group `g` for `job`: an API key's is the one the job carries.
local function cap_for(q, job, g)
  if string.sub(g, 1, 2) == 'k:' then return tonumber(job['key_cap'] or '0') end
  return group_cap(q, g)
end

-- The group whose cap holds back `job` (a table with its `owner`, `key_id`, `key_cap` and
-- `concurrency_key`) now, or nil. `capped` is a set of groups a claim has already found
-- at their cap: they stay there while it leases.
local function held_by(q, job, capped)
  local groups = groups_of(job)
  for _, g in ipairs(groups) do
    if capped[g] then return g end
  end
  for _, g in ipairs(groups) do
    local cap = cap_for(q, job, g)
    if cap > 0 and tonumber(redis.call('HGET', q.running, g) or '0') >= cap then
      capped[g] = true
      return g
    end
  end
  return nil
end

-- Rate keys: the jobs submitted with one `rate_key` start at most `key_rate_jobs` times
-- in any window of `key_rate_ms` (the conf's copy of QueueLimits.rate_per_key_*; 0: no
-- rate), each key in a window of its own, kept like the queue's (q.starts) in the key's
-- start log `q.rate_prefix .. 's:' .. key` (a zset, member `<id>:<attempt>` scored by
-- start time, trimmed at each start and expiring a window after its last). A handler's
-- push-back (RateLimited, see release.lua) holds the key's jobs until a time kept in
-- `q.rate_prefix .. 'u:' .. key` (a string expiring then).
--
-- A ready job whose key may not start now is parked like a capped job, in the group
-- `r:<key>`, so claims look past it (no head of line blocking), but a rate group is freed
-- by time, not by a lease ending: parking it also puts the group in q.rate_due, scored by
-- when its window opens again (or its push-back ends). Each claim first lets the due
-- groups' parked jobs back in line, as it promotes due delayed jobs, at most the room their
-- window has (so a key's backlog is not moved back and parked again every window); a group
-- with jobs left is put back in q.rate_due at its next opening, and the claim's answer
-- (next_wake_ms) counts q.rate_due's first time, so a worker looks again then. Every step
-- is O(log n) per job moved: a group's jobs move between sets by ZPOPMIN/ZADD, a key's
-- window is one ZCOUNT.
local key_rate = nil  -- {jobs, window ms}, read once per script call
local function rate_conf(q)
  if key_rate == nil then
    local c = redis.call('HMGET', q.conf, 'key_rate_jobs', 'key_rate_ms')
    key_rate = {tonumber(c[1] or '0'), tonumber(c[2] or '0')}
  end
  return key_rate[1], key_rate[2]
end

-- The starts of rate key `key` in the window ending at `now`, and the oldest's time (nil
-- when none). Reads only (waiting.lua calls it too): the log is trimmed at starts.
local function rate_window(q, key, now, window)
  local log = q.rate_prefix .. 's:' .. key
  local since = '(' .. (now - window)
  local started = redis.call('ZCOUNT', log, since, '+inf')
  if started == 0 then return 0, nil end
  local oldest = redis.call('ZRANGEBYSCORE', log, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return started, tonumber(oldest[2])
end

-- When the jobs of rate key `key` may start next, as of `now` (`now` itself: at once), and
-- how many may start then (-1: any number). A push-back wins over the window.
local function rate_opens(q, key, now)
  local held = tonumber(redis.call('GET', q.rate_prefix .. 'u:' .. key) or '0')
  if held > now then return held, 0 end
  local jobs, window = rate_conf(q)
  if jobs <= 0 or window <= 0 then return now, -1 end
  local started, oldest = rate_window(q, key, now, window)
  if started < jobs then return now, jobs - started end
  return oldest + window + 1, 0
end

-- A lease of a job with rate key `key` started at `now`: log it in the key's window.
local function rate_started(q, key, member, now)
  local jobs, window = rate_conf(q)
  if jobs <= 0 or window <= 0 then return end
  local log = q.rate_prefix .. 's:' .. key
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  redis.call('ZADD', log, now, member)
  redis.call('PEXPIRE', log, window + 1000)
end

-- A handler pushed back for rate key `key` (RateLimited): its jobs start no sooner than
-- `until_ms` (a later push-back already there stands).
local function rate_push_back(q, key, until_ms)
  local held = q.rate_prefix .. 'u:' .. key
  local wait = until_ms - now_ms()
  if wait > 0 and tonumber(redis.call('GET', held) or '0') < until_ms then
    redis.call('SET', held, until_ms, 'PX', wait)
  end
end

-- Put rate group `group` in q.rate_due at `at`, unless it is due sooner already.
local function rate_due_at(q, group, at)
  local due = redis.call('ZSCORE', q.rate_due, group)
  if not due or tonumber(due) > at then redis.call('ZADD', q.rate_due, at, group) end
end

-- The groups a job's parked set may be under, read from its hash: its cap groups, and its
-- rate key's.
local function lease_groups(jobkey)
  local job = cap_fields(jobkey)
  local groups = groups_of(job)
  local rkey = job['rate_key']
  if rkey and rkey ~= '' then groups[#groups + 1] = 'r:' .. rkey end
  return groups
end

-- How many of a group's `waiting` parked jobs may go back in line now: a cap group's room
-- under its cap; a rate group's room in its key's window (none before its push-back ends),
-- the group put back in q.rate_due for the rest at the key's next opening.
local function unpark_room(q, group, waiting)
  if string.sub(group, 1, 2) == 'r:' then
    local now = now_ms()
    local key = string.sub(group, 3)
    local opens, room = rate_opens(q, key, now)
    if room < 0 or room >= waiting then return waiting end
    if opens == now then
      -- Once these have started the window is full, until its oldest start leaves it.
      local _, window = rate_conf(q)
      local _, oldest = rate_window(q, key, now, window)
      opens = (oldest or now) + window + 1
    end
    rate_due_at(q, group, opens)
    return room
  end
  local cap, room = group_cap(q, group), waiting
  if cap > 0 then
    room = math.min(waiting, cap - tonumber(redis.call('HGET', q.running, group) or '0'))
  end
  return room
end

-- Let the best of group `group`'s parked jobs back in line, as many as it has room for
-- (`unpark_room`), and wake as many workers when `wake_them`; returns how many it moved.
-- A group left with no parked job leaves q.parked_groups, and so does one whose parked
-- set it finds empty already: cancel.lua empties parked sets without it (`unpark_one`
-- takes the job out only), and configure.lua and queue_stats.lua walk every member.
local function unpark(q, group, wake_them)
  local key = q.parked_prefix .. group
  local waiting = redis.call('ZCARD', key)
  if waiting == 0 then
    redis.call('SREM', q.parked_groups, group)
    return 0
  end
  local room = unpark_room(q, group, waiting)
  if room <= 0 then return 0 end
  local moved = redis.call('ZPOPMIN', key, room)
  for first = 1, #moved, 1000 do  -- 500 jobs per ZADD (unpack's limit is about 8,000)
    local scored = {}
    for i = first, math.min(first + 999, #moved), 2 do
      scored[#scored + 1] = moved[i + 1]
      scored[#scored + 1] = moved[i]
    end
    redis.call('ZADD', q.ready, unpack(scored))
  end
  if waiting == room then redis.call('SREM', q.parked_groups, group) end
  if wake_them then wake(q.wake, #moved / 2) end
  return #moved / 2
end

-- A lease of `job` (a table with its `owner`, `key_id`, `key_cap` and `concurrency_key`)
-- started: count it in its groups (and, for an API key, remember its cap for unparking).
local function lease_started(q, job)
  for _, group in ipairs(groups_of(job)) do
    if string.sub(group, 1, 2) == 'k:' then
      redis.call('HSET', q.caps, group, job['key_cap'] or '0')
    end
    redis.call('HINCRBY', q.running, group, 1)
  end
end

-- A lease of `job` (a table with its `owner`, `key_id` and `concurrency_key`) ended: uncount it, and add the
-- groups it leaves room in to the set `freed`; `unpark_freed` then lets their parked jobs
-- back in line once for all the leases a script ended. (Unparking after each lease would
-- let the n-th lease of a batch put n jobs back, the room then, on top of those put back
-- before it: a claim parks the surplus again.)
local function lease_ended_job(q, job, freed)
  for _, group in ipairs(groups_of(job)) do
    if redis.call('HINCRBY', q.running, group, -1) <= 0 then
      redis.call('HDEL', q.running, group)
    end
    freed[group] = true
  end
end

local function unpark_freed(q, freed)
  for group in pairs(freed) do unpark(q, group, true) end
end

-- A lease ended (released, cancelled, expired): count it, and let the groups' parked jobs
-- back in line.
local function lease_ended(q, jobkey)
  local freed = {}
  lease_ended_job(q, cap_fields(jobkey), freed)
  unpark_freed(q, freed)
end

-- Park ready jobs under the groups that hold them back: `parked` maps each group to a
-- flat list of score, id (as popped), one ZADD per 500 jobs of a group.
local function park(q, parked)
  local groups = {}
  for group, scored in pairs(parked) do
    groups[#groups + 1] = group
    for first = 1, #scored, 1000 do
      redis.call('ZADD', q.parked_prefix .. group,
        unpack(scored, first, math.min(first + 999, #scored)))
    end
  end
  if #groups > 0 then redis.call('SADD', q.parked_groups, unpack(groups)) end
end

-- The group whose parked set holds the job, or nil.
local function parked_in(q, jobkey, id)
  for _, group in ipairs(lease_groups(jobkey)) do
    if redis.call('ZSCORE', q.parked_prefix .. group, id) then return group end
  end
  return nil
end

-- Take a job out of whichever parked set holds it.
local function unpark_one(q, jobkey, id)
  for _, group in ipairs(lease_groups(jobkey)) do
    redis.call('ZREM', q.parked_prefix .. group, id)
  end
end

-- Put a job whose hash is written in line (`place`, or enqueue.lua's flat hashes): the
-- delayed set (SCHEDULED), the retry set (RETRYING) or the ready set. Values are strings.
local function line_up(q, id, state, priority, run_at)
  if state == '1' then
    redis.call('ZADD', q.delayed, run_at, id)
  elseif state == '5' then
    redis.call('ZADD', q.retry, run_at, id)
  else
    redis.call('ZADD', q.ready, ready_score(q.seq, priority), id)
  end
end

-- Write a job's hash from its hot-state document (a table of strings, as Job.to_hot makes it).
local function write_hash(jobkey, job)
  local fields = {}
  for k, v in pairs(job) do
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
  redis.call('HSET', jobkey, unpack(fields))
end

-- Write a job's hash and put it in line (`line_up`: the delayed set while SCHEDULED, the
-- retry set while RETRYING, both by due time, else the ready set). It wakes no one: the
-- caller wakes the workers once for all the jobs it placed (`wake`, one token per job,
-- capped), and a delayed job's token makes a worker learn the new due time and sleep
-- until then.
local function place(jobkey, job, q)
  write_hash(jobkey, job)
  line_up(q, job['id'], job['state'], job['priority'], job['run_at'])
end

-- How many whole minutes of history GetQueueStats answers with (QueueStats.recent_minutes,
-- queue_stats.lua), before the current minute: the one place this number is set.
local RECENT_MINUTES = 15

-- Count ended attempts in the queue's tallies: `counts` by outcome, s succeeded, r failed
-- and retrying, d dead, c cancelled (or one outcome's letter, for a single attempt). Two
-- hashes: the second's (`q.stats_prefix .. second`, summed for the last 60 s, kept 2
-- minutes) and the minute's (`q.stats_prefix .. 'm' .. minute`, the recent history, kept
-- RECENT_MINUTES + 2 minutes: read until RECENT_MINUTES + 1 minutes after its start).
-- A hash's time to live is set by the call that creates one of its fields (HINCRBY
-- answers n): the hash's first write always does, so every tally expires, and the usual
-- call, into fields already there, costs only the HINCRBYs.
local function tally(q, now, counts)
  if type(counts) == 'string' then counts = {[counts] = 1} end
  local second = q.stats_prefix .. math.floor(now / 1000)
  local minute = q.stats_prefix .. 'm' .. math.floor(now / 60000)
  local new_second, new_minute = false, false
  for outcome, n in pairs(counts) do
    if redis.call('HINCRBY', second, outcome, n) == n then new_second = true end
    if redis.call('HINCRBY', minute, outcome, n) == n then new_minute = true end
  end
  if new_second then redis.call('EXPIRE', second, 120) end
  if new_minute then redis.call('EXPIRE', minute, (RECENT_MINUTES + 2) * 60) end
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

-- Why a ready job waits (waiting.lua's answer; see there for the order).
local function waiting_of(q, id, jobkey)
  local now = now_ms()
  local rank = redis.call('ZRANK', q.ready, id)
  local conf = redis.call('HMGET', q.conf, 'paused', 'max_running', 'rate_jobs', 'rate_ms')
  local rate, window = tonumber(conf[3] or '0'), tonumber(conf[4] or '0')
  local started, opens = 0, -1
  if rate > 0 and window > 0 then
    started = redis.call('ZCOUNT', q.starts, now - window + 1, '+inf')
    if started >= rate then
      local oldest = redis.call('ZRANGEBYSCORE', q.starts, now - window + 1, '+inf',
        'WITHSCORES', 'LIMIT', 0, 1)
      if oldest[2] then opens = tonumber(oldest[2]) + window + 1 end
    end
  end
  local group = parked_in(q, jobkey, id) or ''
  local cap, running, key_opens, key_window = 0, 0, -1, 0
  if string.sub(group, 1, 2) == 'r:' then
    -- A rate group: its rate and starts in its window, and when it may start.
    local key = string.sub(group, 3)
    cap, key_window = rate_conf(q)
    if cap > 0 and key_window > 0 then running = rate_window(q, key, now, key_window) end
    key_opens = rate_opens(q, key, now)
    if cap <= 0 or key_window <= 0 then cap, key_window = 0, 0 end
  elseif group ~= '' then
    cap = group_cap(q, group)
    running = tonumber(redis.call('HGET', q.running, group) or '0')
  end
  return {rank or -1, tonumber(conf[1] or '0'), tonumber(conf[2] or '0'),
          redis.call('ZCARD', q.leases), rate, window, started, opens, group, cap, running,
          key_opens, key_window}
end
