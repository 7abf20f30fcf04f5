"""What the API does per RPC, between the servicers (which only decode and encode) and the
stores: job, schedule and queue operations (`jobs`, `schedules`, `queues`), and what they
check and owe (rate limits, page tokens, the names that exist, Redis writes to retry)."""
