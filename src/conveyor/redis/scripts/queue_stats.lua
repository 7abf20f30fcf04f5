-- A queue's numbers for GetQueueStats, read in one step so they agree with each other.
-- KEYS: the queue's keys (QueueKeys.all): the ready jobs' hashes, the parked sets and the
--       tallies (the last minute's seconds, the history's minutes) are found as the script
--       runs, under its prefixes
-- ARGV: none
-- Returns {paused, max_running, rate_jobs, rate_ms, scheduled, retrying, running,
--          oldest_wait_ms (how long the oldest ready job has waited; -1: none),
--          succeeded, retried, dead, cancelled (the last 60 s),
--          queued at priority 0, 1, ..., 9, owner_max, shards (the queue's shard
--          count, kept in shard 0's settings; 1 when unset), per_key_max, key_rate_jobs,
--          key_rate_ms (the per-key rate),
--          first_minute (the start of the history's first minute, in minutes since the
--          epoch), then per minute from that one to the current one (RECENT_MINUTES + 1,
--          oldest first): succeeded, retried, dead, cancelled}.
local q = queue_keys()
local now = now_ms()
local conf = redis.call('HMGET', q.conf, 'paused', 'max_running', 'rate_jobs', 'rate_ms',
  'owner_max', 'shards', 'per_key_max', 'key_rate_jobs', 'key_rate_ms')
local out = {tonumber(conf[1] or '0'), tonumber(conf[2] or '0'), tonumber(conf[3] or '0'),
             tonumber(conf[4] or '0'), redis.call('ZCARD', q.delayed),
             redis.call('ZCARD', q.retry), redis.call('ZCARD', q.leases), -1}
local band = 1099511627776
local lines = {q.ready}  -- the ready set and each owner's parked set
for _, group in ipairs(redis.call('SMEMBERS', q.parked_groups)) do
  lines[#lines + 1] = q.parked_prefix .. group
end
local by_priority, oldest = {}, -1
for p = 0, 9 do
  local low = (9 - p) * band
  by_priority[p + 1] = 0
  for _, set in ipairs(lines) do
    local n = redis.call('ZCOUNT', set, low, low + band - 1)
    by_priority[p + 1] = by_priority[p + 1] + n
    if n > 0 then  -- the line's first job of this priority is its longest waiting
      local first = redis.call('ZRANGEBYSCORE', set, low, low + band - 1, 'LIMIT', 0, 1)
      local since = tonumber(redis.call('HGET', q.job_prefix .. first[1], 'run_at') or '-1')
      if since >= 0 and (oldest < 0 or since < oldest) then oldest = since end
    end
  end
end
if oldest >= 0 then out[8] = math.max(now - oldest, 0) end
local totals = {s = 0, r = 0, d = 0, c = 0}
local second = math.floor(now / 1000)
for t = second - 59, second do
  local counts = redis.call('HGETALL', q.stats_prefix .. t)
  for i = 1, #counts, 2 do
    totals[counts[i]] = (totals[counts[i]] or 0) + tonumber(counts[i + 1])
  end
end
out[9], out[10], out[11], out[12] = totals.s, totals.r, totals.d, totals.c
for p = 1, 10 do out[12 + p] = by_priority[p] end
out[23] = tonumber(conf[5] or '0')
out[24] = tonumber(conf[6] or '1')
out[25] = tonumber(conf[7] or '0')
out[26] = tonumber(conf[8] or '0')
out[27] = tonumber(conf[9] or '0')
local minute = math.floor(now / 60000)
out[28] = minute - RECENT_MINUTES
for m = minute - RECENT_MINUTES, minute do
  local counts = redis.call('HMGET', q.stats_prefix .. 'm' .. m, 's', 'r', 'd', 'c')
  for i = 1, 4 do out[#out + 1] = tonumber(counts[i] or '0') end
end
return out
