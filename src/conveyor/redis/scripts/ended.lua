-- Make known the end of jobs Redis never had: jobs waiting for their dependencies, which
-- live in the database alone, that a failed dependency cancelled (conveyor.jobs.dependencies).
-- Each one's hash is written as the database holds it and its change emitted, so that its
-- watchers see the end, and both are kept `ttl` seconds, as for any ended job. A job
-- Redis has is left alone (it is not one of these).
-- KEYS: per job (in jobs_json's order), its key and its log
-- ARGV: channel_prefix, maxlen, ttl_seconds, jobs_json
local cp, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
for i, job in ipairs(cjson.decode(ARGV[4])) do
  local jobkey, evkey = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', jobkey) == 0 then
    write_hash(jobkey, job)
    emit(jobkey, evkey, cp .. job['id'], maxlen)
    redis.call('EXPIRE', jobkey, ttl)
    redis.call('EXPIRE', evkey, ttl)
  end
end
return 0
