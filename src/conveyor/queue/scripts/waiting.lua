-- Why a ready job waits, for GetJob's blocked_reason: its place in line and what the
-- queue's settings hold back (read only).
-- KEYS: the queue's keys (QueueKeys.all)
-- ARGV: job id, job key
-- Returns {jobs_ahead (-1: not in line), paused, max_running, running, rate_jobs, rate_ms,
--          starts in the current rate window, when the window opens again (-1: it is open),
--          the cap group holding it back (`o:<owner>`, `k:<key id>`; "": none), that
--          group's cap and its running jobs}.
local q = queue_keys()
local now = now_ms()
local rank = redis.call('ZRANK', q.ready, ARGV[1])
local conf = redis.call('HMGET', q.conf, 'paused', 'max_running', 'rate_jobs', 'rate_ms')
local rate, window = tonumber(conf[3] or '0'), tonumber(conf[4] or '0')
local started, opens = 0, -1
if rate > 0 and window > 0 then
  started = redis.call('ZCOUNT', q.starts, now - window + 1, '+inf')
  if started >= rate then
    local oldest = redis.call('ZRANGEBYSCORE', q.starts, now - window + 1, '+inf', 'WITHSCORES',
      'LIMIT', 0, 1)
    if oldest[2] then opens = tonumber(oldest[2]) + window + 1 end
  end
end
local group = parked_in(q, ARGV[2], ARGV[1]) or ''
local cap, running = 0, 0
if group ~= '' then
  cap = group_cap(q, group)
  running = tonumber(redis.call('HGET', q.running, group) or '0')
end
return {rank or -1, tonumber(conf[1] or '0'), tonumber(conf[2] or '0'),
        redis.call('ZCARD', q.leases), rate, window, started, opens, group, cap, running}
