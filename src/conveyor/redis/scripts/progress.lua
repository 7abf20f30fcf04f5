-- Report a running job's progress; ignored unless the caller holds the job's lease. The
-- job's hash is read once (public fields and lease, not its payload).
-- KEYS: job, events
-- ARGV: lease, progress, message, maxlen, channel
local job = read_job(KEYS[1], 'lease')
if job['lease'] ~= ARGV[1] then return 0 end
emit_job(KEYS[1], KEYS[2], ARGV[5], ARGV[4], job, {progress = ARGV[2], progress_message = ARGV[3]})
return 1
