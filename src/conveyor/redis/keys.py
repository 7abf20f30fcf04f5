"""Every Redis key and channel Conveyor uses, in one place.

All keys of one queue share the hash tag `{queue}`, so every Lua script touches a single
Redis Cluster slot. A job's own keys carry its queue's tag too, so finding a job's hot state
takes its queue: the API learns it from the submit or from the job's database row and keeps
it in a bounded in-process map (see `conveyor.api.jobs`).

Every key a script touches comes to it in KEYS (tests/unit/test_script_keys.py checks each
`redis.call`): the queue's keys (`QueueKeys.all`), then the keys of the jobs the caller
names. A key whose name a script learns only as it runs (a popped or reclaimed job's hash
and log, a cap group's parked set, the tally of the second the server's clock reads) is
built from one of the queue's prefixes below, which `QueueKeys.all` also passes: a prefix
carries the queue's hash tag, so it declares the one slot all those keys live in.

    cv:{Q}:ready          zset  queued job ids; score = (9 - priority) << 40 | sequence
    cv:{Q}:delayed        zset  SCHEDULED job ids by due time (epoch ms)
    cv:{Q}:retry          zset  RETRYING job ids by due time (epoch ms)
    cv:{Q}:leases         zset  RUNNING job ids by lease deadline (epoch ms, Redis clock)
    cv:{Q}:conf           hash  the queue's settings: paused, max_running, rate_jobs, rate_ms,
                                owner_max, per_key_max, key_rate_jobs, key_rate_ms (a copy
                                of the `queues` row; the reconciler re-applies it);
                                shard 0's also `shards`, the shard count. A sharded queue's
                                shard i > 0 has all these keys under the tag `{Q~i}`
                                (see conveyor.jobs.shards)
    cv:{Q}:starts         zset  leases started in the rate limit's window, by start time
    cv:{Q}:running        hash  leased jobs per cap group: `o:<owner>`, `k:<key id>`,
                                `c:<concurrency key>` (and `r:<rate key>` for parking)
    cv:{Q}:caps           hash  each API key's cap (`k:<key id>`), as its jobs carry it
    cv:{Q}:parked:<group> zset  ready jobs held back by their group's cap, scored as in ready
                                (the prefix `cv:{Q}:parked:` is in QueueKeys.all)
    cv:{Q}:parked-groups  set   groups with parked jobs
    cv:{Q}:rate-due       zset  rate groups (`r:<rate key>`) with parked jobs, by when the
                                key's window opens again (see _common.lua's rate keys)
    cv:{Q}:rate:s:<key>   zset  a rate key's starts in its window, by start time
    cv:{Q}:rate:u:<key>   string  a handler's push-back: the key's jobs wait until this
                                time (epoch ms; expires then). The prefix `cv:{Q}:rate:`
                                is in QueueKeys.all
    cv:{Q}:stats:<sec>    hash  attempts ended in that second by outcome (kept 2 minutes;
                                the prefix `cv:{Q}:stats:` is in QueueKeys.all)
    cv:{Q}:stats:m<min>   hash  the same for that minute (minutes since the epoch), the
                                history GetQueueStats answers with (kept 17 minutes;
                                `tally` in scripts/_common.lua)
    cv:{Q}:wake           list  tokens that wake one blocked worker each
    cv:{Q}:seq            int   FIFO sequence for ready scores
    cv:{Q}:job:<id>       hash  the job's hot state (see Job.to_hot), plus seq and lease
                                (the prefix `cv:{Q}:job:` is in QueueKeys.all)
    cv:{Q}:log:<id>       list  the job's changes, oldest first, the last `maxlen` of them:
                                each the job's public fields as JSON, with its `seq` (the
                                first, seq 1, is published only). A list, not a stream: it
                                takes no preallocated 4 KB node and needs no rewrite to
                                shed one when the job ends (the name changed with the type;
                                the prefix `cv:{Q}:log:` is in QueueKeys.all)
    cv:{Q}:events:<id>    stream  the log's older form (before issue 21): deleted when its job
                                ends (`retire` in _common.lua), never written
    cv:{Q}:ev:<id>        pub/sub channel carrying the same JSON, for live watchers
    cv:cancel             pub/sub channel: ids of running jobs to stop at once
    cv:epoch              string  set by the reconciler; its absence means Redis lost its data
    cv:reconcile:lock     string  the reconciler replica whose turn it is (SET NX PX)
    cv:probe:write        string  an API's health probe of Redis writes (SET PX, expires)
    cv:rl:{<owner>}:<kind>  hash  an owner's token bucket for submits or reads
    cv:queues:existing    set   the queues that exist: served by a worker (each announcement
                                adds its queues) or configured by an admin (`configure`;
                                the reconciler re-applies every configured queue). Never
                                a name only a submit used (see `conveyor.api.known_names`)
    cv:worker:<id>        string  a worker's announcement (JSON), expiring after three missed
    cv:workers            zset  worker ids by their last announcement (Redis clock); a dead
                                one stays until a sweep has released its leases
    cv:workers:queues     hash  worker id -> the queues it serves (JSON), kept past its
                                announcement for that sweep
    cv:worker:<id>:sweep  string  the worker sweeping a dead one's leases (SET NX PX)
    (the registry's keys are in conveyor.redis.workers)
    cv:schedules          pub/sub channel: a schedule changed; schedulers look again
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "cv"
CANCEL_CHANNEL = f"{PREFIX}:cancel"
EPOCH_KEY = f"{PREFIX}:epoch"
RECONCILE_LOCK = f"{PREFIX}:reconcile:lock"
WRITE_PROBE_KEY = f"{PREFIX}:probe:write"
EXISTING_QUEUES_KEY = f"{PREFIX}:queues:existing"
SCHEDULES_CHANNEL = f"{PREFIX}:schedules"
# The field of a queue's `conf` (shard 0's) that holds its shard count; absent: 1.
SHARDS_FIELD = "shards"


def rate_bucket(owner: str, kind: str) -> str:
    return f"{PREFIX}:rl:{{{owner}}}:{kind}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one named queue."""

    queue: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.queue}}}"

    @property
    def ready(self) -> str:
        return f"{self.tag}:ready"

    @property
    def delayed(self) -> str:
        return f"{self.tag}:delayed"

    @property
    def retry(self) -> str:
        return f"{self.tag}:retry"

    @property
    def conf(self) -> str:
        return f"{self.tag}:conf"

    @property
    def starts(self) -> str:
        return f"{self.tag}:starts"

    @property
    def running(self) -> str:
        return f"{self.tag}:running"

    @property
    def parked_groups(self) -> str:
        return f"{self.tag}:parked-groups"

    @property
    def caps(self) -> str:
        return f"{self.tag}:caps"

    @property
    def stats_prefix(self) -> str:
        return f"{self.tag}:stats:"

    @property
    def rate_due(self) -> str:
        return f"{self.tag}:rate-due"

    @property
    def rate_prefix(self) -> str:
        return f"{self.tag}:rate:"

    @property
    def parked_prefix(self) -> str:
        return f"{self.tag}:parked:"

    @property
    def all(self) -> list[str]:
        """The keys every queue-level script takes, in the order `queue_keys()` (in
        scripts/_common.lua) reads them and by the same names: the queue's keys, then the
        prefixes of the keys a script finds only as it runs (a popped job's, a cap group's
        parked set, a second's tally). A script's other keys follow these."""
        return [self.ready, self.delayed, self.retry, self.leases, self.wake, self.seq,
                self.conf, self.starts, self.running, self.parked_groups, self.caps,
                self.job_prefix, self.events_prefix, self.parked_prefix,
                self.stats_prefix, self.rate_due, self.rate_prefix]  # fmt: skip

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def wake(self) -> str:
        return f"{self.tag}:wake"

    @property
    def seq(self) -> str:
        return f"{self.tag}:seq"

    @property
    def job_prefix(self) -> str:
        return f"{self.tag}:job:"

    @property
    def events_prefix(self) -> str:
        return f"{self.tag}:log:"

    @property
    def channel_prefix(self) -> str:
        return f"{self.tag}:ev:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def events(self, job_id: str) -> str:
        return self.events_prefix + job_id

    def legacy_events(self, job_id: str) -> str:
        """The job's event stream as versions before issue 21 kept it (see `retire` in
        scripts/_common.lua, which deletes it)."""
        return f"{self.tag}:events:{job_id}"

    def job_keys(self, job_id: str) -> tuple[str, str]:
        """A job's hash and log: the keys a script that changes the job passes for it."""
        return self.job_prefix + job_id, self.events_prefix + job_id

    def ending_keys(self, job_id: str) -> tuple[str, str, str]:
        """A job's hash, log and legacy event stream: the keys a script that may end the
        job passes for it (ending it expires the first two and deletes the third)."""
        return self.job_prefix + job_id, self.events_prefix + job_id, self.legacy_events(job_id)

    def channel(self, job_id: str) -> str:
        return self.channel_prefix + job_id
