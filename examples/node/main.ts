/**
 * Ironflow from Node.js, through the Connect-ES client generated from proto/ironflow/v1 (gen/ts).
 *
 * Emits `order.placed`, publishes a topic message, follows the run the event started over
 * `system.run.>` (Connect server streaming) until it ends, then lists the function's recent runs.
 * Every request is a generated message shape checked by TypeScript; there is no hand-written HTTP.
 *
 *     ironflow serve                                              # terminal 1: the server
 *     uvicorn examples.embedded_worker.app:app --port 8000        # terminal 2: a worker for order.placed
 *     npm ci && npx tsx examples/node/main.ts                     # terminal 3, at the repository root
 *
 * The server is the first argument, else IRONFLOW_SERVER_URL, else http://localhost:9123.
 */
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

import { EventService } from "../../gen/ts/ironflow/v1/events_pb.js";
import { RunStatus, SchedulerService } from "../../gen/ts/ironflow/v1/runs_pb.js";
import { SubscriptionService } from "../../gen/ts/ironflow/v1/subscriptions_pb.js";

const ENDED = new Set(["completed", "failed", "cancelled"]);

async function main(): Promise<void> {
  const baseUrl = process.argv[2] ?? process.env.IRONFLOW_SERVER_URL ?? "http://localhost:9123";
  // HTTP/1.1 reaches any Ironflow deployment, proxies included; Connect streams responses over it too.
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
  const events = createClient(EventService, transport);
  const scheduler = createClient(SchedulerService, transport);
  const subscriptions = createClient(SubscriptionService, transport);

  const orderId = `ord_node_${Date.now()}`;
  const emitted = await events.emit({
    name: "order.placed",
    data: { orderId, items: ["book", "pen"], total: 42.5 },
    idempotencyKey: orderId,
  });
  console.log(`emitted order.placed: event ${emitted.eventId}, sequence ${emitted.sequence}`);
  const runId = emitted.runIds[0];
  if (runId === undefined) {
    throw new Error("no function is triggered by order.placed: start a worker first");
  }
  console.log(`started run ${runId}`);

  const published = await events.publish({
    topic: "notifications.email",
    data: { to: "buyer@example.com", orderId },
  });
  console.log(`published notifications.email: event ${published.eventId}, sequence ${published.sequence}`);

  // Start right after the emitted event's stream position: whatever the run did since, even if it
  // ended before this call, is replayed first, then the stream goes live. The signal ends the stream
  // once the run has ended, or after 30 s. (Not the timeoutMs call option: after an early exit from
  // the loop, its timer would hold the process open for the full 30 s.)
  const prefix = `system.run.${runId}.`;
  const done = new AbortController();
  const stream = subscriptions.subscribe(
    { patterns: ["system.run.>"], startAfterSequence: emitted.sequence },
    { signal: AbortSignal.any([done.signal, AbortSignal.timeout(30_000)]) },
  );
  try {
    for await (const response of stream) {
      if (response.message.case !== "event" || !response.message.value.subject.startsWith(prefix)) {
        continue;
      }
      const { subject, sequence } = response.message.value;
      console.log(`  ${sequence} ${subject}`);
      if (ENDED.has(subject.slice(prefix.length))) {
        break;
      }
    }
  } finally {
    done.abort(); // leaving the loop alone does not end the request
  }

  const { run } = await scheduler.getRun({ id: runId });
  if (run === undefined) {
    throw new Error(`run ${runId} not found`);
  }
  const output = run.output === undefined ? null : toJson(ValueSchema, run.output);
  console.log(`run ${run.id} ${RunStatus[run.status].toLowerCase()}: ${JSON.stringify(output)}`);

  const { runs } = await scheduler.listRuns({ functionId: run.functionId, limit: 5 });
  console.log(`recent runs of ${run.functionId}:`);
  for (const listed of runs) {
    console.log(`  ${listed.id} ${RunStatus[listed.status].toLowerCase()}`);
  }
}

main().catch((error: unknown) => {
  const err = ConnectError.from(error);
  const code = err.code === Code.Unknown ? "" : `${Code[err.code]}: `;
  console.error(`error: ${code}${err.rawMessage}`);
  process.exitCode = 1;
});
