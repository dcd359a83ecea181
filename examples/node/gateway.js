// A plant gateway that sends telemetry to Prognos over gRPC with mutual TLS.
//
// It reads its asset type's channels, registers its asset (again harmlessly on a re-run),
// streams one columnar batch of readings (one column of timestamps, one column per channel)
// and prints the receipt, which comes once the accepted readings are durably stored.
//
// Environment: PROGNOS_INGEST_ADDRESS (host:port), PROGNOS_TLS_CA_FILE,
// PROGNOS_TLS_CERT_FILE, PROGNOS_TLS_KEY_FILE, PROGNOS_TOKEN (a token with the gateway role),
// PROGNOS_PLANT, PROGNOS_ASSET_ID, PROGNOS_ASSET_TYPE (registered beforehand by an ML
// engineer); PROGNOS_PROTOS (default ../../protos) and PROGNOS_ROWS (default 5).
"use strict";

const crypto = require("node:crypto");
const { api, call, connect, env, explain } = require("./prognos");

const PLANT = env("PROGNOS_PLANT");
const ASSET_ID = env("PROGNOS_ASSET_ID");
const ASSET_TYPE = env("PROGNOS_ASSET_TYPE");
const ROWS = Number(env("PROGNOS_ROWS", "5"));

// Readings one second apart up to now, each channel in the middle of its valid range: a
// real gateway reads them from its sensors or historian.
function batchOf(channels) {
  const now = BigInt(Date.now()) * 1000n;
  const timestamps = Array.from({ length: ROWS }, (_, i) =>
    String(now - BigInt(ROWS - 1 - i) * 1_000_000n),
  );
  return {
    // A batch resent with the same id (after a lost receipt) is stored only once.
    batch_id: crypto.randomUUID(),
    asset_id: ASSET_ID,
    timestamps_us: timestamps,
    channels: channels.map((channel) => ({
      name: channel.name,
      // Empty: the values are in the channel's canonical unit. Another compatible unit
      // ("degC" for a "kelvin" channel) would be converted by the server.
      unit: "",
      values: timestamps.map(() => (channel.min_value + channel.max_value) / 2),
    })),
  };
}

// Send the batches on one stream and resolve with their receipts, in the batches' order.
function stream(ingest, batches) {
  return new Promise((resolve, reject) => {
    const receipts = [];
    const telemetry = ingest.StreamTelemetry({ deadline: new Date(Date.now() + 30_000) });
    telemetry.on("data", (response) => receipts.push(response.receipt));
    telemetry.on("error", reject);
    telemetry.on("end", () => resolve(receipts));
    for (const batch of batches) telemetry.write({ batch });
    telemetry.end();
  });
}

async function main() {
  const ingest = connect(api("ingest").IngestService, env("PROGNOS_INGEST_ADDRESS"));

  const { asset_type: type } = await call(ingest, "GetAssetType", { name: ASSET_TYPE });
  const channels = type.channels.map((c) => `${c.name} [${c.unit}]`).join(", ");
  console.log(`asset type ${type.name}: ${channels}`);

  // RegisterAssets leaves an asset registered the same way as it is, so a re-run is harmless.
  const registered = await call(ingest, "RegisterAssets", {
    assets: [{ asset_id: ASSET_ID, plant: PLANT, asset_type: ASSET_TYPE }],
  });
  console.log(`asset ${ASSET_ID} in ${PLANT}: ${registered.registered_count} newly registered`);

  const [receipt] = await stream(ingest, [batchOf(type.channels)]);
  console.log(
    `receipt batch=${receipt.batch_id} accepted=${receipt.accepted_count}` +
      ` quarantined=${receipt.quarantined_count} sequence=${receipt.stream_sequence}` +
      ` duplicate=${receipt.duplicate}`,
  );
  for (const rejection of receipt.sample_rejections) {
    console.log(`quarantined ${rejection.channel}: ${rejection.reason}: ${rejection.detail}`);
  }
  ingest.close();
}

main().catch((error) => {
  if (error.code !== undefined) explain(error);
  console.error(`gateway: ${error.message ?? error}`);
  process.exit(1);
});
