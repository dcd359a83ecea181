// An ERP that follows Prognos work orders over gRPC with mutual TLS.
//
// It watches the work orders of one plant, acknowledges, starts and completes the first
// released one, and shows how a rejected request names its field: the google.rpc.BadRequest
// in the grpc-status-details-bin trailer (see prognos.js).
//
// Environment: PROGNOS_SCHEDULER_ADDRESS (host:port), PROGNOS_TLS_CA_FILE,
// PROGNOS_TLS_CERT_FILE, PROGNOS_TLS_KEY_FILE, PROGNOS_TOKEN (a token with the erp role),
// PROGNOS_PLANT; PROGNOS_PROTOS (default ../../protos) and PROGNOS_WAIT_S (default 60).
"use strict";

const crypto = require("node:crypto");
const { api, call, connect, env, explain, grpc } = require("./prognos");

const PLANT = env("PROGNOS_PLANT");
const WAIT_MS = Number(env("PROGNOS_WAIT_S", "60")) * 1000;

// Resolve with the first work order of the plant that the watch shows RELEASED. A real ERP
// stores the position of each change it has processed and passes the last one as
// `after_position` when it reconnects.
function firstReleased(scheduler) {
  return new Promise((resolve, reject) => {
    const stream = scheduler.WatchWorkOrders(
      { plant: PLANT, after_position: "0" },
      { deadline: new Date(Date.now() + WAIT_MS) },
    );
    stream.on("data", (change) => {
      const order = change.work_order;
      console.log(`watch ${change.position} ${change.event_type} ${order.id} ${order.state}`);
      if (order.state === "WORK_ORDER_STATE_RELEASED") {
        // Cancelling ends the stream with CANCELLED, which is no failure here.
        stream.removeAllListeners("error");
        stream.on("error", () => {});
        stream.cancel();
        resolve(order);
      }
    });
    stream.on("error", reject);
    stream.on("end", () => reject(new Error("the watch ended before a work order was released")));
  });
}

async function main() {
  const { MaintenanceScheduler } = api("scheduler");
  const scheduler = connect(MaintenanceScheduler, env("PROGNOS_SCHEDULER_ADDRESS"));
  // Every change carries a key of the client's choosing, so that a retry is harmless.
  const key = () => crypto.randomUUID();

  // A request without its idempotency key is rejected with the field named.
  try {
    await call(scheduler, "AcknowledgeWorkOrder", { work_order_id: "none" });
    throw new Error("a request without an idempotency key was accepted");
  } catch (error) {
    if (error.code !== grpc.status.INVALID_ARGUMENT) throw error;
    explain(error);
  }

  const order = await firstReleased(scheduler);
  const erpNumber = `ERP-${order.id.slice(0, 8)}`;
  let response = await call(scheduler, "AcknowledgeWorkOrder", {
    idempotency_key: key(),
    work_order_id: order.id,
    erp_order_number: erpNumber,
    acknowledged_by: "node-erp",
  });
  console.log(`acknowledged ${order.id} as ${erpNumber}: ${response.work_order.state}`);
  response = await call(scheduler, "StartWorkOrder", {
    idempotency_key: key(),
    work_order_id: order.id,
  });
  console.log(`started ${order.id}: ${response.work_order.state}`);
  response = await call(scheduler, "CompleteWorkOrder", {
    idempotency_key: key(),
    work_order_id: order.id,
    outcome: {
      failure_found: true,
      failure_mode: "bearing_wear",
      findings: "worn bearing replaced",
    },
  });
  console.log(`completed ${order.id}: ${response.work_order.state}`);
  scheduler.close();
}

main().catch((error) => {
  if (error.code !== undefined) explain(error);
  console.error(`erp: ${error.message ?? error}`);
  process.exit(1);
});
