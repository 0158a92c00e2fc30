import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createFleetcast } from '../src/core.js';
import { decodeFrame, encodeFrame, unpackTensor } from '../src/frames.js';
import { androidTransport, httpTransport, iosTransport, webSocketTransport } from '../src/transports.js';

// A fake agent behind the real transport interface: answers hello/info/run by decoding
// the page's frame; run doubles a float32 input so the answer depends on the bytes sent.
function fakeAgent({ methods = ['hello', 'info', 'listModels', 'run'] } = {}) {
  const seen = [];
  function answer(bytes) {
    const { header, buffers } = decodeFrame(bytes);
    seen.push(header);
    const reply = (h, b = []) => encodeFrame({ id: header.id, ...h }, b);
    if (!methods.includes(header.method)) {
      return reply({ error: { code: 'PERMISSION_DENIED', message: `no ${header.method}`, retryable: false } });
    }
    if (header.method === 'hello') return reply({ result: { protocol: 1, methods, features: ['events'], model: null } });
    if (header.method === 'info') return reply({ result: { model: 'digits', version: '2' } });
    if (header.method === 'listModels') return reply({ result: { models: [{ model: 'digits' }] } });
    const ref = header.params.inputs.input;
    if (ref.image) return reply({ result: { outputs: {}, latencyMs: 0, model: 'digits', version: '2', image: ref.image } });
    const x = unpackTensor(ref, buffers).data;
    const y = Float32Array.from(x, (v) => v * 2);
    return reply({ result: { outputs: { y: { dtype: 'float32', shape: ref.shape, buffer: 0 } }, latencyMs: 0.5,
      model: 'digits', version: '2' } }, [y]);
  }
  return { seen, answer };
}

const requestResponse = (agent) => ({ events: false, send: async (frame) => agent.answer(frame) });

test('run sends a typed array and returns typed-array outputs with the model and version', async () => {
  const fc = createFleetcast({ transport: requestResponse(fakeAgent()) });
  const out = await fc.ml.run({ inputs: { input: { dtype: 'float32', shape: [1, 3], data: new Float32Array([1, 2, 3]) } } });
  assert.ok(out.outputs.y.data instanceof Float32Array);
  assert.deepEqual(Array.from(out.outputs.y.data), [2, 4, 6]);
  assert.deepEqual([out.model, out.version, out.latencyMs], ['digits', '2', 0.5]);
});

test('an ImageData input travels as uint8 RGBA pixels with its preprocessing spec', async () => {
  const agent = fakeAgent();
  const fc = createFleetcast({ transport: requestResponse(agent) });
  const image = { width: 2, height: 1, data: new Uint8ClampedArray(8).fill(9) };
  await fc.ml.run({ inputs: { input: { image, preprocess: { resize: [8, 8], layout: 'NCHW' } } } });
  const sent = agent.seen.at(-1).params.inputs.input;
  assert.deepEqual(sent.image, { dtype: 'uint8', shape: [1, 2, 4], buffer: 0 });
  assert.deepEqual(sent.preprocess, { resize: [8, 8], layout: 'NCHW' });
});

test('call() answers Alipay-style: the result, or {error, errorMessage, errorCode}', async () => {
  const fc = createFleetcast({ transport: requestResponse(fakeAgent({ methods: ['hello', 'run'] })) });
  const ok = await new Promise((resolve) => fc.call('ml.ready', {}, resolve));
  assert.equal(ok.protocol, 1);
  const denied = await new Promise((resolve) => fc.call('ml.listModels', {}, resolve));
  assert.deepEqual(denied, { error: 4, errorMessage: 'no listModels', errorCode: 'PERMISSION_DENIED' });
  const unknown = await new Promise((resolve) => fc.call('ml.nothing', resolve));
  assert.equal(unknown.error, 1);
  assert.equal(unknown.errorCode, 'NOT_FOUND');
});

test('canIUse follows what the agent allows this page once ready() answered', async () => {
  const fc = createFleetcast({ transport: { events: true, send: async (f) => fakeAgent({ methods: ['hello', 'run'] }).answer(f) } });
  assert.equal(fc.ml.canIUse('ml.listModels'), true);     // not known yet: the SDK supports it
  assert.equal(fc.ml.canIUse('ml.teleport'), false);
  await fc.ml.ready();
  assert.equal(fc.ml.canIUse('ml.run'), true);
  assert.equal(fc.ml.canIUse('ml.listModels'), false);
  assert.equal(fc.ml.canIUse('ml.on.modelUpdated'), true);
  const http = createFleetcast({ transport: requestResponse(fakeAgent()) });
  assert.equal(http.ml.canIUse('ml.on.modelUpdated'), false);
});

test('a pushed modelUpdated event reaches every listener, and unsubscribe stops it', async () => {
  let deliver;
  const transport = { events: true, send: async () => undefined, onFrame: (cb) => { deliver = cb; } };
  const fc = createFleetcast({ transport });
  const got = [];
  const off = fc.ml.on('modelUpdated', (info) => got.push(info.version));
  deliver(encodeFrame({ event: 'modelUpdated', data: { model: 'digits', version: '3' } }).buffer);
  off();
  deliver(encodeFrame({ event: 'modelUpdated', data: { model: 'digits', version: '4' } }).buffer);
  assert.deepEqual(got, ['3']);
  assert.throws(() => fc.ml.on('somethingElse', () => {}), /no event/);
});

test('a transport closing fails the pending calls with its error', async () => {
  let closed;
  const transport = { events: true, send: async () => undefined, onFrame: () => {}, onClose: (cb) => { closed = cb; } };
  const fc = createFleetcast({ transport });
  const pending = fc.ml.info();
  const { FleetcastError } = await import('../src/errors.js');
  closed(new FleetcastError('RESOURCE_EXHAUSTED', 'too big'));
  await assert.rejects(pending, (e) => e.code === 'RESOURCE_EXHAUSTED' && e.retryable === true);
});

test('the Android transport posts ArrayBuffers and takes answers from onmessage', async () => {
  const agent = fakeAgent();
  const object = { postMessage(buffer) { assert.ok(buffer instanceof ArrayBuffer); setTimeout(() => object.onmessage({ data: agent.answer(buffer).buffer })); } };
  const fc = createFleetcast({ transport: androidTransport({ object }) });
  assert.equal((await fc.ml.info()).version, '2');
});

test('the iOS transport sends base64 frames and decodes base64 replies and events', async () => {
  const agent = fakeAgent();
  const scope = {};
  const handler = { postMessage: async (text) => Buffer.from(agent.answer(Buffer.from(text, 'base64'))).toString('base64') };
  const fc = createFleetcast({ transport: iosTransport({ handler, scope }) });
  const out = await fc.ml.run({ inputs: { input: { dtype: 'float32', shape: [2], data: new Float32Array([0.25, 8]) } } });
  assert.deepEqual(Array.from(out.outputs.y.data), [0.5, 16]);
  const got = [];
  fc.ml.on('modelUpdated', (info) => got.push(info.version));
  scope.__fleetcastEvent(Buffer.from(encodeFrame({ event: 'modelUpdated', data: { version: '9' } })).toString('base64'));
  assert.deepEqual(got, ['9']);
});

test('the WebSocket transport offers the token as a subprotocol and a refused upgrade is UNAVAILABLE', async () => {
  const offered = [];
  class RefusingSocket {
    constructor(url, protocols) { offered.push(url, protocols); setTimeout(() => this.onclose({ code: 1006 })); }
  }
  const fc = createFleetcast({ transport: webSocketTransport({ url: 'ws://127.0.0.1:1/v1/ws', token: 'abc', WebSocketImpl: RefusingSocket }) });
  await assert.rejects(fc.ml.info(), (e) => e.code === 'UNAVAILABLE');
  assert.deepEqual(offered, ['ws://127.0.0.1:1/v1/ws', ['fleetcast.v1', 'fleetcast.token.abc']]);
});

test('the HTTP transport sends the token as a bearer header and reads JSON refusals', async () => {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push([url, init.headers.authorization]);
    return new Response(JSON.stringify({ v: 1, error: { code: 'PERMISSION_DENIED', message: 'origin', retryable: false } }),
      { status: 403, headers: { 'content-type': 'application/json' } });
  };
  const fc = createFleetcast({ transport: httpTransport({ url: 'http://127.0.0.1:1/v1/call', token: 't0k', fetchImpl }) });
  await assert.rejects(fc.ml.info(), (e) => e.code === 'PERMISSION_DENIED' && e.alias === 4);
  assert.deepEqual(calls, [['http://127.0.0.1:1/v1/call', 'Bearer t0k']]);
});

test('a refused WebSocket upgrade is reported with the code the HTTP endpoint gives', async () => {
  class RefusingSocket { constructor() { setTimeout(() => this.onclose({ code: 1006 })); } }
  const fetchImpl = async () => new Response(JSON.stringify({ v: 1, error: { code: 'PERMISSION_DENIED', message: 'origin x', retryable: false } }),
    { status: 403, headers: { 'content-type': 'application/json' } });
  const transport = webSocketTransport({ url: 'ws://127.0.0.1:1/v1/ws', token: 't', probeUrl: 'http://127.0.0.1:1/v1/call',
    WebSocketImpl: RefusingSocket, fetchImpl });
  const fc = createFleetcast({ transport });
  await assert.rejects(fc.ml.run({ inputs: { input: { dtype: 'float32', shape: [1], data: new Float32Array(1) } } }),
    (e) => e.code === 'PERMISSION_DENIED' && e.message === 'origin x');
});
