-- Why a ready job waits, for GetJob's blocked_reason: its place in line and what the
-- queue's settings hold back (read only).
-- KEYS: the queue's keys (QueueKeys.all), then the job's key
-- ARGV: job id
-- Returns {jobs_ahead (-1: not in line), paused, max_running, running, rate_jobs, rate_ms,
--          starts in the current rate window, when the window opens again (-1: it is open),
--          the cap group holding it back (`o:<owner>`, `k:<key id>`,
--          `c:<concurrency key>`; "": none), that
--          group's cap and its running jobs}.
return waiting_of(queue_keys(), ARGV[1], KEYS[QUEUE_KEY_COUNT + 1])
