"""The job domain, shared by every service: the job and its states (`model`), its queue's
settings (`queues`), attempts (`attempts`), retry policies (`retry`), what a failure tells
the owner (`failures`), results (`results`), artifacts (`artifacts`) and how long finished
jobs are kept (`retention`)."""
