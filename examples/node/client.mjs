// A small Conveyor client in Node: submit a job with an idempotency key, watch it to the end
// (resuming after a dropped stream), wait out RESOURCE_EXHAUSTED as its RetryInfo says, and
// print the BadRequest field violations of an INVALID_ARGUMENT.
//
// Environment: CONVEYOR_API_ADDR (default 127.0.0.1:50051) and CONVEYOR_API_KEY.
//
//   node client.mjs                      # submit a sleep job, submit it again, watch it to the end
//   node client.mjs --drop-first-stream  # ... dropping the first watch stream after one update
//   node client.mjs --bad                # an invalid request: prints its field violations
//
// No generated code: @grpc/proto-loader reads the repository's protos/ at start-up, and
// protobufjs decodes the google.rpc.Status in the `grpc-status-details-bin` trailer.
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTOS = process.env.CONVEYOR_PROTOS ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const TERMINAL = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_DEAD", "JOB_STATE_CANCELLED"]);

const { values: args } = parseArgs({
  options: {
    bad: { type: "boolean", default: false },
    "drop-first-stream": { type: "boolean", default: false },
    "idempotency-key": { type: "string", default: `example-${randomBytes(8).toString("hex")}` },
    queue: { type: "string", default: "default" },
    type: { type: "string", default: "sleep" },
  },
});

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

const apiKey = process.env.CONVEYOR_API_KEY || fail("set CONVEYOR_API_KEY (make dev printed one)");
const addr = process.env.CONVEYOR_API_ADDR || "127.0.0.1:50051";

// keepCase: fields as the protos spell them; int64s (sequence numbers) as strings.
const definition = protoLoader.loadSync("conveyor/v1/job_service.proto", {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { JobService } = grpc.loadPackageDefinition(definition).conveyor.v1;
// `conveyor dev` serves plaintext; use grpc.credentials.createSsl() for a TLS server.
const jobs = new JobService(addr, grpc.credentials.createInsecure());
// Every call carries the key as bearer auth.
const auth = new grpc.Metadata();
auth.set("authorization", `Bearer ${apiKey}`);

// google.rpc.Status and the error details (RetryInfo, BadRequest, ...) from protos/google/rpc.
const errorTypes = new protobuf.Root();
errorTypes.resolvePath = (_origin, target) => join(PROTOS, target);
errorTypes.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const Status = errorTypes.lookupType("google.rpc.Status");

/** The details of a gRPC error, decoded from its `grpc-status-details-bin` trailer. */
function details(error) {
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return [];
  return Status.decode(raw).details.map((any) => {
    const type = errorTypes.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value), { longs: Number }) };
  });
}

/** How long a RESOURCE_EXHAUSTED error asks us to wait (its RetryInfo), in ms; else null. */
function retryDelayMs(error) {
  if (error.code !== grpc.status.RESOURCE_EXHAUSTED) return null;
  const info = details(error).find((d) => d.type === "google.rpc.RetryInfo");
  if (!info?.retryDelay) return 1000; // no RetryInfo (a quota): back off a little anyway
  return (info.retryDelay.seconds ?? 0) * 1000 + (info.retryDelay.nanos ?? 0) / 1e6;
}

/** A google.protobuf.Struct of flat JSON values. proto-loader takes the well-known types
 * from protobufjs, whose field names are camelCase even with keepCase (and a misspelt
 * field is dropped silently, which leaves the value empty). */
function toStruct(object) {
  const value = (v) =>
    typeof v === "number" ? { numberValue: v } : typeof v === "boolean" ? { boolValue: v } : { stringValue: String(v) };
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, value(v)])) };
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    jobs[method](request, auth, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

/** Submits, waiting as long as the server's RetryInfo says whenever the rate limit refuses. */
async function submit(request) {
  for (;;) {
    try {
      return (await call("SubmitJob", request)).job;
    } catch (error) {
      const delay = retryDelayMs(error);
      if (delay === null) throw error;
      console.log(`rate limited: retrying in ${(delay / 1000).toFixed(2)}s`);
      await sleep(delay);
    }
  }
}

/** Follows the job to a terminal state. A stream that breaks (or that we drop on purpose) is
 * reopened with after_sequence = the last sequence seen: no change is missed or seen twice. */
async function watch(id, dropFirst) {
  let last = "0";
  for (;;) {
    const stream = jobs.WatchJob({ id, after_sequence: last }, auth);
    try {
      for await (const { sequence, job } of stream) {
        last = sequence;
        console.log(`update ${sequence} ${job.state} ${Math.round(job.progress)}%`);
        if (TERMINAL.has(job.state)) {
          stream.cancel();
          return job;
        }
        if (dropFirst) {
          dropFirst = false;
          stream.cancel();
          console.log(`dropped the stream after sequence ${last}; resuming`);
          break;
        }
      }
    } catch (error) {
      if (error.code === grpc.status.CANCELLED) continue; // ours: resume
      const delay = retryDelayMs(error);
      if (delay !== null) {
        console.log(`rate limited: retrying in ${(delay / 1000).toFixed(2)}s`);
        await sleep(delay);
      } else if (error.code === grpc.status.UNAVAILABLE) {
        console.log(`stream lost after sequence ${last}; resuming in 1s`); // e.g. a restart
        await sleep(1000);
      } else {
        throw error;
      }
    }
  }
}

/** Submits a job with a priority out of range (0-9) and prints the BadRequest field
 * violations that come back with INVALID_ARGUMENT. */
async function showViolations() {
  try {
    await call("SubmitJob", { type: "noop", priority: 99 });
  } catch (error) {
    if (error.code !== grpc.status.INVALID_ARGUMENT) throw error;
    console.log(`invalid argument: ${error.details}`);
    for (const detail of details(error)) {
      for (const v of detail.type === "google.rpc.BadRequest" ? detail.fieldViolations : []) {
        console.log(`field violation ${v.field}: ${v.description}`);
      }
    }
    return;
  }
  fail("expected INVALID_ARGUMENT");
}

async function main() {
  if (args.bad) return showViolations();
  const key = args["idempotency-key"];
  const payload = toStruct(args.type === "sleep" ? { seconds: 1, steps: 4 } : {});
  const request = { type: args.type, payload, queue: args.queue, idempotency_key: key };
  const job = await submit(request);
  console.log(`submitted job ${job.id} (idempotency key ${key})`);
  // A retried submit (after a timeout, say) with the same key gets the same job back.
  const again = await submit(request);
  if (again.id !== job.id) fail(`the same idempotency key gave another job: ${again.id}`);
  console.log(`submitted again: same job ${again.id}`);
  const final = await watch(job.id, args["drop-first-stream"]);
  console.log(`finished ${final.id} ${final.state}`);
  if (final.state !== "JOB_STATE_SUCCEEDED") process.exitCode = 1;
}

main()
  .catch((error) => fail(error.message))
  .finally(() => jobs.close());
