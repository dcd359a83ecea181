// What every Prognos client in Node.js needs: the contracts loaded from protos/, a channel
// with mutual TLS and a bearer token, deadlines, and the error details of a failed call.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`${name} is not set`);
  return value;
}

const PROTOS = path.resolve(env("PROGNOS_PROTOS", path.join(__dirname, "..", "..", "protos")));

// Field names as the .proto files spell them (keepCase), 64-bit integers as strings (a
// JavaScript number loses precision above 2^53), enums by name, unset fields with defaults.
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };

// The package object of one contract, e.g. api("scheduler").MaintenanceScheduler.
function api(service) {
  const file = `prognos/api/${service}/v1/${service}.proto`;
  const definition = protoLoader.loadSync(file, { ...LOAD_OPTIONS, includeDirs: [PROTOS] });
  return grpc.loadPackageDefinition(definition).prognos.api[service].v1;
}

// A client of `Service` at `address`: TLS with the CA that signed the server's certificate,
// this client's certificate and key, and `authorization: Bearer <token>` on every call.
function connect(Service, address) {
  const tls = grpc.credentials.createSsl(
    fs.readFileSync(env("PROGNOS_TLS_CA_FILE")),
    fs.readFileSync(env("PROGNOS_TLS_KEY_FILE")),
    fs.readFileSync(env("PROGNOS_TLS_CERT_FILE")),
  );
  const token = env("PROGNOS_TOKEN");
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, done) => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    done(null, metadata);
  });
  return new Service(address, grpc.credentials.combineChannelCredentials(tls, bearer));
}

// A unary call as a promise, with a deadline: Prognos expects every call to have one.
function call(client, method, request, seconds = 10) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// The google.rpc error details, from the vendored protos/google/rpc files. protobufjs
// ships google/protobuf/*.proto itself; every other import is looked up under protos/.
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => {
  const vendored = path.join(PROTOS, target);
  return fs.existsSync(vendored) ? vendored : target;
};
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");

// The details of a failed call: the google.rpc.Status that the server puts, serialized, in
// the `grpc-status-details-bin` trailer, with each Any unpacked to { type, value }. A
// detail of a type these protos do not declare comes back with value null.
function details(error) {
  const raw = error.metadata?.get("grpc-status-details-bin")?.[0];
  if (!raw) return [];
  return Status.decode(raw).details.map((any) => {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = rpc.lookup(name);
    if (!(type instanceof protobuf.Type)) return { type: name, value: null };
    return { type: name, value: type.toObject(type.decode(any.value), LOAD_OPTIONS) };
  });
}

// Print what a rejected call says about itself. Code that reacts to an error branches on
// ErrorInfo.reason, never on the message.
function explain(error) {
  console.log(`rejected: ${grpc.status[error.code]}: ${error.details}`);
  for (const { type, value } of details(error)) {
    if (type === "google.rpc.BadRequest") {
      for (const violation of value.field_violations) {
        console.log(`field violation: ${violation.field}: ${violation.description}`);
      }
    } else if (type === "google.rpc.ErrorInfo") {
      console.log(`error reason: ${value.reason} (${value.domain})`);
    } else {
      console.log(`detail: ${type} ${JSON.stringify(value)}`);
    }
  }
}

module.exports = { api, call, connect, details, env, explain, grpc };
