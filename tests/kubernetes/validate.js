// Validates Kubernetes objects against the API's OpenAPI schemas, offline:
// kubernetes-models bundles them (4.x runs on Debian 12's Node 18), and
// @kubernetes-models/prometheus-operator the monitoring CRDs' schemas.
// stdin: a JSON array of objects. One line per object on stdout, "ok" or
// the schema errors; exit 1 when any object is invalid or of an unknown kind.
"use strict";

const fs = require("fs");

const docs = JSON.parse(fs.readFileSync(0, "utf8"));
let failed = 0;
for (const doc of docs) {
  const name = `${doc.kind} ${doc.metadata && doc.metadata.name}`;
  let Model;
  // Kubernetes' own kinds, then the Prometheus Operator's CRDs
  // (PodMonitor, PrometheusRule: @kubernetes-models/prometheus-operator).
  for (const pkg of ["kubernetes-models", "@kubernetes-models/prometheus-operator"]) {
    try {
      Model = require(`${pkg}/${doc.apiVersion}/${doc.kind}`)[doc.kind];
      break;
    } catch (e) {
      Model = undefined;
    }
  }
  if (Model === undefined) {
    console.log(`${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`${name}: ok`);
  } catch (e) {
    console.log(`${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
