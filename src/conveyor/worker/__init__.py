"""The worker's engine: claiming and running jobs (`runner`), recording their outcomes
(`recording`), announcing the worker (`announcer`), and process isolation (`isolation`)."""
