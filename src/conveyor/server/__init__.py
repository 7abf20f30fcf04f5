"""What every service process shares: the gRPC server (`grpcserver`), TLS (`tls`), API keys
and authentication (`auth`), and a process's start-up (`service`)."""
