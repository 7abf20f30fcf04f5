// A small Conveyor client in Go: submit a job with an idempotency key, watch it to the end
// (resuming after a dropped stream), wait out RESOURCE_EXHAUSTED as its RetryInfo says, and
// print the BadRequest field violations of an INVALID_ARGUMENT.
//
// Environment: CONVEYOR_API_ADDR (default 127.0.0.1:50051) and CONVEYOR_API_KEY.
//
//	go run .                      # submit a sleep job, submit it again, watch it to the end
//	go run . -drop-first-stream   # ... dropping the first watch stream after one update
//	go run . -bad                 # an invalid request: prints its field violations
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	conveyorv1 "conveyor/examples/go/gen/conveyor/v1"
)

func main() {
	bad := flag.Bool("bad", false, "submit an invalid request and print its field violations")
	dropFirst := flag.Bool("drop-first-stream", false, "drop the first watch stream after its first update, then resume")
	key := flag.String("idempotency-key", "", "the submit's idempotency key (default: a random one)")
	queue := flag.String("queue", "default", "the queue to submit to")
	jobType := flag.String("type", "sleep", "the job type: a built-in (sleep, noop) or one of your handlers")
	flag.Parse()

	addr := os.Getenv("CONVEYOR_API_ADDR")
	if addr == "" {
		addr = "127.0.0.1:50051"
	}
	apiKey := os.Getenv("CONVEYOR_API_KEY")
	if apiKey == "" {
		fail("set CONVEYOR_API_KEY (make dev printed one)")
	}
	// grpc.WithInsecure: `conveyor dev` serves plaintext. It is deprecated in newer grpc-go
	// (use grpc.WithTransportCredentials(insecure.NewCredentials())) but kept so the example
	// also builds against Debian's grpc-go 1.33.
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	if err != nil {
		fail("connect: %v", err)
	}
	defer conn.Close()
	jobs := conveyorv1.NewJobServiceClient(conn)
	// Every call carries the key as bearer auth.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)

	if *bad {
		showViolations(ctx, jobs)
		return
	}
	if *key == "" {
		*key = randomKey()
	}
	payload, err := structpb.NewStruct(map[string]interface{}{"seconds": 1, "steps": 4})
	if err != nil {
		fail("payload: %v", err)
	}
	if *jobType != "sleep" {
		payload = &structpb.Struct{}
	}
	request := &conveyorv1.SubmitJobRequest{Type: *jobType, Payload: payload, Queue: *queue, IdempotencyKey: *key}
	job := submit(ctx, jobs, request)
	fmt.Printf("submitted job %s (idempotency key %s)\n", job.Id, *key)
	// A retried submit (after a timeout, say) with the same key gets the same job back.
	again := submit(ctx, jobs, request)
	if again.Id != job.Id {
		fail("the same idempotency key gave another job: %s", again.Id)
	}
	fmt.Printf("submitted again: same job %s\n", again.Id)

	final := watch(ctx, jobs, job.Id, *dropFirst)
	fmt.Printf("finished %s %s\n", final.Id, final.State)
	if final.State != conveyorv1.JobState_JOB_STATE_SUCCEEDED {
		os.Exit(1)
	}
}

// submit sends the request, waiting as long as the server's RetryInfo says whenever the
// key's rate limit refuses it (RESOURCE_EXHAUSTED).
func submit(ctx context.Context, jobs conveyorv1.JobServiceClient, request *conveyorv1.SubmitJobRequest) *conveyorv1.Job {
	for {
		reply, err := jobs.SubmitJob(ctx, request)
		if err == nil {
			return reply.Job
		}
		delay, ok := retryDelay(err)
		if !ok {
			fail("submit: %v", err)
		}
		fmt.Printf("rate limited: retrying in %.2fs\n", delay.Seconds())
		time.Sleep(delay)
	}
}

// retryDelay is the RetryInfo of a RESOURCE_EXHAUSTED error (grpc-go decodes the
// grpc-status-details-bin trailer into status details).
func retryDelay(err error) (time.Duration, bool) {
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok && info.RetryDelay != nil {
			d := info.RetryDelay
			return time.Duration(d.Seconds)*time.Second + time.Duration(d.Nanos), true
		}
	}
	return time.Second, true // no RetryInfo (a quota): back off a little anyway
}

// watch follows the job until a terminal state. A stream that breaks (or that we drop on
// purpose) is reopened with after_sequence = the last sequence seen, so no change is
// missed and none is seen twice.
func watch(ctx context.Context, jobs conveyorv1.JobServiceClient, id string, dropFirst bool) *conveyorv1.Job {
	var last int64
	for {
		streamCtx, cancel := context.WithCancel(ctx)
		stream, err := jobs.WatchJob(streamCtx, &conveyorv1.WatchJobRequest{Id: id, AfterSequence: last})
		if err != nil {
			cancel()
			fail("watch: %v", err)
		}
		for {
			update, err := stream.Recv()
			if err != nil {
				cancel()
				if errors.Is(err, io.EOF) {
					break // ended without a terminal state: resume
				}
				if delay, ok := retryDelay(err); ok {
					fmt.Printf("rate limited: retrying in %.2fs\n", delay.Seconds())
					time.Sleep(delay)
					break
				}
				if status.Code(err) != codes.Unavailable {
					fail("watch: %v", err)
				}
				fmt.Printf("stream lost after sequence %d; resuming in 1s\n", last) // e.g. a restart
				time.Sleep(time.Second)
				break
			}
			last = update.Sequence
			job := update.Job
			fmt.Printf("update %d %s %.0f%%\n", update.Sequence, job.State, job.Progress)
			if terminal(job.State) {
				cancel()
				return job
			}
			if dropFirst {
				dropFirst = false
				cancel()
				fmt.Printf("dropped the stream after sequence %d; resuming\n", last)
				break
			}
		}
	}
}

func terminal(state conveyorv1.JobState) bool {
	switch state {
	case conveyorv1.JobState_JOB_STATE_SUCCEEDED, conveyorv1.JobState_JOB_STATE_DEAD, conveyorv1.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// showViolations submits a job with a priority out of range (0-9) and prints the
// BadRequest field violations that come back with INVALID_ARGUMENT.
func showViolations(ctx context.Context, jobs conveyorv1.JobServiceClient) {
	priority := int32(99)
	_, err := jobs.SubmitJob(ctx, &conveyorv1.SubmitJobRequest{Type: "noop", Priority: &priority})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		fail("expected INVALID_ARGUMENT, got %v", err)
	}
	fmt.Printf("invalid argument: %s\n", st.Message())
	for _, detail := range st.Details() {
		if request, ok := detail.(*errdetails.BadRequest); ok {
			for _, v := range request.FieldViolations {
				fmt.Printf("field violation %s: %s\n", v.Field, v.Description)
			}
		}
	}
}

func randomKey() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		fail("random: %v", err)
	}
	return "example-" + hex.EncodeToString(b)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(1)
}
