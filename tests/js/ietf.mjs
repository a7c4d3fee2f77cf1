// Upload one file to the IETF resumable-upload front-end with tus-js-client 4 under
// Node; driven by tests/test_ietf_clients.py.
// Usage: node ietf.mjs ENDPOINT FILE PROTOCOL '{"option": value, ...}'
// PROTOCOL: ietf-draft-03 or ietf-draft-05. Options: uploadDataDuringCreation,
// uploadLengthDeferred, parallelUploads, chunkSize.
// Prints {"url": ..., "status": N} on success (N: the last response's status); on
// failure prints the error to stderr and exits 1.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import * as tus from 'tus-js-client';

const [endpoint, path, protocol, json] = process.argv.slice(2);
const options = JSON.parse(json || '{}');
const data = readFileSync(path);

const upload = new tus.Upload(data, {
  endpoint,
  protocol,
  retryDelays: [], // a failure must fail the test, not be retried past it
  metadata: { filename: basename(path) },
  chunkSize: options.chunkSize ?? Infinity,
  uploadDataDuringCreation: Boolean(options.uploadDataDuringCreation),
  uploadLengthDeferred: Boolean(options.uploadLengthDeferred),
  parallelUploads: options.parallelUploads ?? 1,
  onSuccess: ({ lastResponse }) => {
    process.stdout.write(JSON.stringify({ url: upload.url, status: lastResponse.getStatus() }) + '\n');
  },
  onError: (error) => {
    process.stderr.write(`tus-js-client failed: ${error}\n`);
    process.exit(1);
  },
});
upload.start();
