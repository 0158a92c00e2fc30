// The H5 digits demo: draw a digit, the agent's digits model answers through the bridge.
// The app that hosts this page injects window.__FLEETCAST_BRIDGE__ ({ws, call, token},
// from the agent's bridge.json); `make demo-h5` passes the same in the URL fragment,
// which never leaves the browser.

import { connect } from '../../sdk/js/src/index.js';

// What the digits model wants: 8x8 grey pixels, 0 (blank) .. 16 (ink), as [1, 64] float32.
export const DIGITS_PREPROCESS = Object.freeze({
  channels: 'gray', resize: [8, 8], scale: 16 / 255, layout: 'NCHW', dtype: 'float32', reshape: [1, 64],
});

function injected() {
  if (window.__FLEETCAST_BRIDGE__) return window.__FLEETCAST_BRIDGE__;
  const params = new URLSearchParams(location.hash.slice(1));
  return params.get('token') ? { ws: params.get('ws'), call: params.get('call'), token: params.get('token') } : null;
}

const pad = document.getElementById('pad');
const context = pad.getContext('2d');
const $ = (id) => document.getElementById(id);

function clear() {
  context.fillStyle = '#000';
  context.fillRect(0, 0, pad.width, pad.height);
  $('answer').textContent = '';
  $('latency').textContent = '';
}

function drawable() {
  let drawing = false;
  const at = (e) => { const r = pad.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  pad.addEventListener('pointerdown', (e) => { drawing = true; context.beginPath(); context.moveTo(...at(e)); });
  pad.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    context.lineTo(...at(e));
    context.strokeStyle = '#fff';
    context.lineWidth = 18;
    context.lineCap = 'round';
    context.stroke();
  });
  addEventListener('pointerup', () => { drawing = false; });
}

function show(result, roundTripMs) {
  const p = result.outputs.probabilities.data;
  let best = 0;
  for (let i = 1; i < p.length; i += 1) if (p[i] > p[best]) best = i;
  $('answer').textContent = String(best);
  $('answer').dataset.digit = String(best);
  $('latency').textContent = `model ${result.latencyMs.toFixed(2)} ms, round trip ${roundTripMs.toFixed(2)} ms `
    + `(${result.model} v${result.version})`;
}

function fail(error) {
  $('status').textContent = `${error.code ?? 'ERROR'}: ${error.message}`;
  $('status').className = 'error';
  $('status').dataset.code = error.code ?? '';
}

async function recognize(image) {
  const started = performance.now();
  try {
    const result = await window.fleetcast.ml.run({
      inputs: { input: { image, preprocess: DIGITS_PREPROCESS } }, outputs: ['probabilities'],
    });
    show(result, performance.now() - started);
    window.lastResult = result;
  } catch (e) {
    fail(e);
  }
}

async function main() {
  clear();
  drawable();
  const config = injected();
  if (!config) {
    fail({ code: 'PERMISSION_DENIED', message: 'no bridge token: open this page from its app or `make demo-h5`' });
    return;
  }
  window.fleetcast = connect(config);
  $('clear').onclick = clear;
  $('recognize').onclick = () => recognize(context.getImageData(0, 0, pad.width, pad.height));
  $('upload').onchange = (e) => e.target.files[0] && recognize(e.target.files[0]);
  window.fleetcast.ml.on('modelUpdated', (info) => { $('status').textContent = `updated to ${info.model} v${info.version}`; });
  try {
    const hello = await window.fleetcast.ml.ready();
    const model = hello.model;
    $('status').textContent = model ? `serving ${model.model} v${model.version} on ${model.backend}` : 'no model yet';
    $('status').dataset.ready = 'true';
    $('recognize').disabled = false;
  } catch (e) {
    fail(e);
  }
}

main();
