// The transport-neutral core: frames, ids, answers, events, the promise facade and the
// Alipay-style call(). Only the last hop differs between the desktop bridge (WebSocket or
// HTTP), an Android WebView (addWebMessageListener) and an iOS WKWebView
// (WKScriptMessageHandlerWithReply): see transports.js.
//
// A transport implements:
//   send(frame: Uint8Array): Promise<ArrayBuffer | undefined>
//       request/response transports resolve with the answer frame; message transports
//       resolve undefined and deliver answers through onFrame. Rejects with FleetcastError.
//   onFrame?(callback: (frame: ArrayBuffer) => void): void   answers and pushed events
//   onClose?(callback: (error: FleetcastError) => void): void  pending calls fail with it
//   events: boolean     whether the agent can push events (modelUpdated) over it
//   close(): void

import { FleetcastError, asFleetcastError, fromDocument } from './errors.js';
import { decodeFrame, encodeFrame, littleEndian, packTensor, unpackTensor } from './frames.js';
import { pixelsOf } from './images.js';

/** The features this SDK knows; canIUse() also asks what the agent allows this page. */
const SDK_FEATURES = Object.freeze({
  'ml.ready': 'hello',
  'ml.listModels': 'listModels',
  'ml.info': 'info',
  'ml.run': 'run',
  'ml.run.image': 'run',
  'ml.on.modelUpdated': 'events',
  call: null,
});
const CLIENT_GRACE_MS = 1000;
const DEFAULT_TIMEOUT_MS = 30000;

export function createFleetcast({ transport, topOnly = true } = {}) {
  if (!transport || typeof transport.send !== 'function') {
    throw new TypeError('createFleetcast needs a transport with send(frame)');
  }
  let nextId = 1;
  let hello = null;
  const pending = new Map();
  const listeners = { modelUpdated: new Set() };

  const framed = typeof window !== 'undefined' && topOnly && window.top !== window.self;

  function settle(answer) {
    let frame;
    try {
      frame = decodeFrame(answer);
    } catch {
      return; // not ours to answer: nothing can be matched to a call
    }
    const { header, buffers } = frame;
    if (header.event) {
      for (const fn of listeners[header.event] ?? []) {
        try { fn(header.data); } catch (e) { setTimeout(() => { throw e; }); }
      }
      return;
    }
    const call = pending.get(header.id);
    if (!call) return;
    pending.delete(header.id);
    clearTimeout(call.timer);
    if (header.error) call.reject(fromDocument(header.error));
    else call.resolve({ result: header.result, buffers });
  }

  transport.onFrame?.(settle);
  transport.onClose?.((error) => {
    for (const [id, call] of pending) {
      pending.delete(id);
      clearTimeout(call.timer);
      call.reject(error);
    }
  });

  async function request(method, params, buffers = [], timeoutMs = DEFAULT_TIMEOUT_MS) {
    if (framed) {
      throw new FleetcastError('PERMISSION_DENIED', 'the bridge serves the app\'s top-level page only, not a frame');
    }
    if (!littleEndian()) throw new FleetcastError('INTERNAL', 'this platform is big-endian; the bridge needs little-endian');
    const id = nextId++;
    const frame = encodeFrame({ id, method, params }, buffers);
    const answer = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new FleetcastError('TIMEOUT', `no answer to ${method} within ${timeoutMs} ms`));
      }, timeoutMs + CLIENT_GRACE_MS);
      pending.set(id, { resolve, reject, timer });
    });
    try {
      const direct = await transport.send(frame);
      if (direct) settle(direct);
    } catch (e) {
      const call = pending.get(id);
      if (call) {
        pending.delete(id);
        clearTimeout(call.timer);
      }
      throw asFleetcastError(e);
    }
    return answer;
  }

  async function buildInputs(inputs) {
    if (!inputs || typeof inputs !== 'object') {
      throw new FleetcastError('INVALID_ARGUMENT', 'run needs inputs: {name: {dtype, shape, data}}');
    }
    const buffers = [];
    const docs = {};
    for (const [name, value] of Object.entries(inputs)) {
      if (value && typeof value === 'object' && 'image' in value) {
        const pixels = await pixelsOf(value.image);
        docs[name] = { image: packTensor(name, pixels, buffers), preprocess: value.preprocess ?? {} };
      } else {
        docs[name] = packTensor(name, value, buffers);
      }
    }
    return { docs, buffers };
  }

  const ml = {
    /** Resolves once the agent answers: {protocol, methods, features, model}. */
    async ready() {
      const { result } = await request('hello', {});
      hello = result;
      return result;
    },
    async listModels() {
      return (await request('listModels', {})).result.models;
    },
    async info({ model } = {}) {
      return (await request('info', model === undefined ? {} : { model })).result;
    },
    /** {outputs: {name: {dtype, shape, data: TypedArray}}, latencyMs, model, version}. */
    async run({ model, inputs, outputs, timeoutMs } = {}) {
      const { docs, buffers } = await buildInputs(inputs);
      const params = { inputs: docs };
      if (model !== undefined) params.model = model;
      if (outputs !== undefined) params.outputs = outputs;
      if (timeoutMs !== undefined) params.timeoutMs = timeoutMs;
      const { result, buffers: answered } = await request('run', params, buffers, timeoutMs ?? DEFAULT_TIMEOUT_MS);
      const tensors = {};
      for (const [name, ref] of Object.entries(result.outputs)) tensors[name] = unpackTensor(ref, answered);
      return { outputs: tensors, latencyMs: result.latencyMs, model: result.model, version: result.version };
    },
    /** Subscribes to 'modelUpdated' (the agent activated a new version); returns unsubscribe. */
    on(event, fn) {
      if (!listeners[event]) throw new FleetcastError('INVALID_ARGUMENT', `no event ${event}; known: modelUpdated`);
      if (typeof fn !== 'function') throw new FleetcastError('INVALID_ARGUMENT', 'on() needs a function');
      listeners[event].add(fn);
      return () => listeners[event].delete(fn);
    },
    off(event, fn) {
      listeners[event]?.delete(fn);
    },
    /** Whether this page may use a feature: known to the SDK and, after ready(), allowed by the agent. */
    canIUse(feature) {
      if (!Object.prototype.hasOwnProperty.call(SDK_FEATURES, feature)) return false;
      const needs = SDK_FEATURES[feature];
      if (needs === 'events') return Boolean(transport.events) && (!hello || hello.features.includes('events'));
      if (needs === null || !hello) return true;
      return hello.methods.includes(needs);
    },
  };

  const CALLS = {
    'ml.ready': () => ml.ready(),
    'ml.listModels': async () => ({ models: await ml.listModels() }),
    'ml.info': (params) => ml.info(params),
    'ml.run': (params) => ml.run(params),
  };

  /** Alipay-style: callback(result) on success, callback({error, errorMessage, errorCode}) on failure. */
  function call(name, params, callback) {
    const done = typeof params === 'function' ? params : callback;
    const args = typeof params === 'function' ? {} : params ?? {};
    const fn = CALLS[name];
    const promise = fn
      ? Promise.resolve().then(() => fn(args))
      : Promise.reject(new FleetcastError('NOT_FOUND', `no bridge call ${name}; known: ${Object.keys(CALLS).join(', ')}`));
    promise.then(
      (result) => done?.(result),
      (e) => done?.(asFleetcastError(e).toResult()),
    );
  }

  return { ml, call, close: () => transport.close?.() };
}
