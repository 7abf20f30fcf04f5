-- Give back jobs a draining worker stopped before they ended: each goes back in line at
-- once (not after its lease runs out), and the attempt it was on is not counted.
-- With a delay (a handler raised RateLimited), each instead waits SCHEDULED until then, its
-- attempt still not counted, and its rate key's push-back (`q.rate_prefix .. 'u:' .. key`,
-- see the rate keys in _common.lua) is moved out to then, so that claims park the key's
-- other jobs until it passes. Only jobs whose lease the caller still holds are released.
-- KEYS: the queue's keys (QueueKeys.all), then per job: its key and its log
-- ARGV: channel_prefix, maxlen, delay_ms (0: at once), then per job: id, lease, fence
-- (the fence the attempt held, which a reclaim may have moved on).
-- Returns the number released.
local q = queue_keys()
local cp, maxlen, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local due = delay > 0 and now_ms() + delay or nil
local released = 0
local k = QUEUE_KEY_COUNT  -- the last key used
for i = 4, #ARGV, 3 do
  local id, lease = ARGV[i], ARGV[i + 1]
  local jobkey, evkey = KEYS[k + 1], KEYS[k + 2]
  k = k + 2
  if redis.call('HGET', jobkey, 'lease') == lease then
    redis.call('ZREM', q.leases, id)
    lease_ended(q, jobkey)
    local held = redis.call('HMGET', jobkey, 'attempt', 'rate_key', 'priority')
    if not due then
      -- A start that did not happen uses no rate (the queue's, nor its rate key's).
      redis.call('ZREM', q.starts, id .. ':' .. (held[1] or ''))
      if held[2] then redis.call('ZREM', q.rate_prefix .. 's:' .. held[2], id .. ':' .. held[1]) end
    end
    redis.call('HDEL', jobkey, 'lease', 'worker')
    redis.call('HINCRBY', jobkey, 'attempt', -1)
    redis.call('HSET', jobkey, 'progress', 0, 'progress_message', '', 'fence', ARGV[i + 2])
    if due then
      redis.call('HSET', jobkey, 'state', 1, 'run_at', due)
      redis.call('ZADD', q.delayed, due, id)
      if held[2] then rate_push_back(q, held[2], due) end
    else
      redis.call('HSET', jobkey, 'state', 2)
      redis.call('ZADD', q.ready, ready_score(q.seq, held[3]), id)
    end
    wake_one(q.wake)  -- a blocked worker takes it, or learns its due time
    emit(jobkey, evkey, cp .. id, maxlen)
    released = released + 1
  end
end
return released
