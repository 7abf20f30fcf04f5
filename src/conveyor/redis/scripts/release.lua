-- Give back jobs a draining worker stopped before they ended: each goes back in line at
-- once (not after its lease runs out), and the attempt it was on is not counted.
-- Only jobs whose lease the caller still holds are released.
-- KEYS: the queue's keys (QueueKeys.all), then per job: its key and its log
-- ARGV: channel_prefix, maxlen, then per job: id, lease, fence
-- (the fence the attempt held, which a reclaim may have moved on).
-- Returns the number released.
local q = queue_keys()
local cp, maxlen = ARGV[1], ARGV[2]
local released = 0
local k = QUEUE_KEY_COUNT  -- the last key used
for i = 3, #ARGV, 3 do
  local id, lease = ARGV[i], ARGV[i + 1]
  local jobkey, evkey = KEYS[k + 1], KEYS[k + 2]
  k = k + 2
  if redis.call('HGET', jobkey, 'lease') == lease then
    redis.call('ZREM', q.leases, id)
    lease_ended(q, jobkey)
    -- A start that did not happen uses no rate (the queue's, nor its rate key's).
    local held = redis.call('HMGET', jobkey, 'attempt', 'rate_key')
    redis.call('ZREM', q.starts, id .. ':' .. (held[1] or ''))
    if held[2] then redis.call('ZREM', q.rate_prefix .. 's:' .. held[2], id .. ':' .. held[1]) end
    redis.call('HDEL', jobkey, 'lease', 'worker')
    redis.call('HINCRBY', jobkey, 'attempt', -1)
    redis.call('HSET', jobkey, 'state', 2, 'progress', 0, 'progress_message', '',
      'fence', ARGV[i + 2])
    redis.call('ZADD', q.ready, ready_score(q.seq, redis.call('HGET', jobkey, 'priority')), id)
    wake_one(q.wake)
    emit(jobkey, evkey, cp .. id, maxlen)
    released = released + 1
  end
end
return released
