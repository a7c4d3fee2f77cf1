// The test page's own origin: a tiny static HTTP server (node:http) for page/ and
// tus-js-client's browser bundle, on a loopback address and port of the test's choosing,
// so the page and `transfer serve` are different origins. GET and HEAD only; anything
// not in FILES is 404. Nothing here knows about uploads.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const FILES = {
  '/': ['page/index.html', 'text/html; charset=utf-8'],
  '/index.html': ['page/index.html', 'text/html; charset=utf-8'],
  '/page.js': ['page/page.js', 'text/javascript; charset=utf-8'],
  '/tus.js': ['node_modules/tus-js-client/dist/tus.js', 'text/javascript; charset=utf-8'],
};

async function answer(request, response) {
  const path = new URL(request.url, 'http://page').pathname;
  const entry = FILES[path];
  if (!entry || !['GET', 'HEAD'].includes(request.method)) {
    response.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
    return;
  }
  const body = await readFile(here(entry[0]));
  response.writeHead(200, { 'Content-Type': entry[1], 'Cache-Control': 'no-store' });
  response.end(request.method === 'HEAD' ? undefined : body);
}

/** Listen on host:port; resolves to the server once it listens. */
export function serveStatic(host, port) {
  const server = createServer((request, response) => {
    answer(request, response).catch((error) => {
      response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${error}\n`);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
