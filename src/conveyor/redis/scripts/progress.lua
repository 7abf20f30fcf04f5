-- Report a running job's progress; ignored unless the caller holds the job's lease.
-- KEYS: job, events
-- ARGV: lease, progress, message, maxlen, channel
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'progress_message', ARGV[3])
emit(KEYS[1], KEYS[2], ARGV[5], ARGV[4])
return 1
