// The test page's script. Query parameters: endpoint (the tus base URL on another
// origin), size, seed, chunk (tus-js-client's chunkSize), hold (let this many PATCHes
// through, then hold the next one until the page is left; 0: hold none). A page that
// held once does not hold again after a reload (sessionStorage survives a reload, not
// the tab), so the reloaded page resumes and finishes.
//
// Invariants:
// - The bytes are a pure function of (size, seed): xorshift32, four little-endian bytes
//   per step; tests/test_browser.py regenerates them in Python, so a reload uploads the
//   very same file.
// - The upload is a File with a fixed name, type and lastModified, so tus-js-client's
//   default fingerprint (and its default localStorage URL storage) finds it again after
//   a reload: the second load resumes instead of creating a new upload.
// - `window.pageState` is all the driver reads; nothing here talks to the driver.
'use strict';

const params = new URLSearchParams(location.search);
const state = {
  phase: 'ready', url: null, resumedFrom: null, sha256: null, error: null,
  held: false, patchOffsets: [], acknowledged: 0,
};
window.pageState = state;

function pageBytes(size, seed) {
  const words = new Uint32Array(Math.ceil(size / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i += 1) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  // Uint32Array is little-endian on every platform Chromium runs on (x86, ARM).
  return new Uint8Array(words.buffer, 0, size);
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

function show() {
  document.getElementById('status').textContent = JSON.stringify(state, null, 1);
}

// Holds every PATCH after the first `hold` until the page is left: a gate, not a timer,
// so the reload always lands with exactly `hold` chunks acknowledged and none in flight.
function gate(hold) {
  let passed = 0;
  return (req) => {
    if (req.getMethod() !== 'PATCH') return undefined;
    state.patchOffsets.push(Number(req.getHeader('Upload-Offset')));
    if (hold === 0 || passed < hold) {
      passed += 1;
      return undefined;
    }
    state.held = true;
    sessionStorage.setItem('transfer-test-held', '1');
    show();
    return new Promise(() => {});
  };
}

async function start() {
  const size = Number(params.get('size'));
  const hold = Number(params.get('hold') || 0);
  const bytes = pageBytes(size, Number(params.get('seed')));
  state.sha256 = await sha256Hex(bytes);
  const file = new File([bytes], 'browser.bin', {
    type: 'application/octet-stream', lastModified: 1700000000000,
  });
  const upload = new tus.Upload(file, {
    endpoint: params.get('endpoint'),
    chunkSize: Number(params.get('chunk')),
    retryDelays: [], // a failure must reach the test, not be retried past it
    metadata: { filename: 'browser.bin', filetype: 'application/octet-stream' },
    onBeforeRequest: gate(sessionStorage.getItem('transfer-test-held') ? 0 : hold),
    onUploadUrlAvailable: () => { state.url = upload.url; show(); },
    onChunkComplete: (_chunk, accepted) => { state.acknowledged = accepted; show(); },
    onSuccess: () => { state.phase = 'done'; show(); },
    onError: (error) => { state.phase = 'failed'; state.error = String(error); show(); },
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length > 0) {
    state.resumedFrom = previous[0].uploadUrl;
    upload.resumeFromPreviousUpload(previous[0]);
  }
  state.phase = 'uploading';
  show();
  upload.start();
}

const button = document.getElementById('upload');
button.addEventListener('click', () => {
  button.disabled = true;
  start().catch((error) => { state.phase = 'failed'; state.error = String(error); show(); });
});
button.disabled = false;
show();
