// Upload one file to a tus endpoint with tus-js-client 4 under Node; driven by
// tests/test_tus_js.py. Usage: node upload.mjs ENDPOINT FILE '{"option": value, ...}'
// Options: uploadDataDuringCreation, uploadLengthDeferred, parallelUploads, chunkSize.
// Prints {"url": ...} on success; on failure prints the error to stderr and exits 1.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import * as tus from 'tus-js-client';

const [endpoint, path, json] = process.argv.slice(2);
const options = JSON.parse(json || '{}');
const data = readFileSync(path);

const upload = new tus.Upload(data, {
  endpoint,
  protocol: 'tus-v1',
  retryDelays: [], // a failure must fail the test, not be retried past it
  metadata: { filename: basename(path), filetype: 'application/octet-stream' },
  chunkSize: options.chunkSize ?? Infinity,
  uploadDataDuringCreation: Boolean(options.uploadDataDuringCreation),
  uploadLengthDeferred: Boolean(options.uploadLengthDeferred),
  parallelUploads: options.parallelUploads ?? 1,
  onSuccess: () => {
    process.stdout.write(JSON.stringify({ url: upload.url }) + '\n');
  },
  onError: (error) => {
    process.stderr.write(`tus-js-client failed: ${error}\n`);
    process.exit(1);
  },
});
upload.start();
