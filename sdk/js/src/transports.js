// The last hop, one per host. Each implements the interface described in core.js.
//
//   webSocketTransport   desktop bridge, binary frames, events pushed   (reference)
//   httpTransport        desktop bridge, one POST per call, no events
//   androidTransport     WebView addWebMessageListener object (ArrayBuffer messages)
//   iosTransport         WKScriptMessageHandlerWithReply (base64 strings, main frame only)

import { FleetcastError } from './errors.js';
import { encodeFrame } from './frames.js';

const SUBPROTOCOL = 'fleetcast.v1';
const TOKEN_PREFIX = 'fleetcast.token.';
const WS_TOO_BIG = 1009;

function refusedOrDown(what) {
  return new FleetcastError('UNAVAILABLE', `${what}: the agent's bridge is not running, or refused this page `
    + '(origin, host or token); the agent log names the reason');
}

function unreachable(what) {
  return {
    events: false,
    async send() {
      throw new FleetcastError('UNAVAILABLE', `${what}: no bridge address; the app injects `
        + 'window.__FLEETCAST_BRIDGE__ = {ws, call, token} from the agent\'s bridge.json');
    },
    close() {},
  };
}

/** WebSocket to `url` (bridge.json "ws"); opened on first use and again after a close. */
export function webSocketTransport({ url, token, probeUrl, WebSocketImpl = globalThis.WebSocket,
  fetchImpl = globalThis.fetch } = {}) {
  // Without a url every call fails; without a token the agent refuses it (PERMISSION_DENIED).
  if (!url) return unreachable('webSocketTransport');
  let socket = null;
  let opening = null;
  let frameCallback = () => {};
  let closeCallback = () => {};

  function open() {
    if (socket && socket.readyState === 1) return Promise.resolve(socket);
    if (opening) return opening;
    opening = new Promise((resolve, reject) => {
      const ws = new WebSocketImpl(url, token ? [SUBPROTOCOL, TOKEN_PREFIX + token] : [SUBPROTOCOL]);
      ws.binaryType = 'arraybuffer';
      let opened = false;
      ws.onopen = () => {
        opened = true;
        socket = ws;
        opening = null;
        resolve(ws);
      };
      ws.onmessage = (event) => {
        if (event.data instanceof ArrayBuffer) frameCallback(event.data);
      };
      ws.onclose = (event) => {
        socket = null;
        opening = null;
        if (!opened) {
          reject(refusedOrDown('could not open the bridge WebSocket'));
          return;
        }
        closeCallback(event.code === WS_TOO_BIG
          ? new FleetcastError('RESOURCE_EXHAUSTED', 'the frame is over the bridge\'s size cap')
          : new FleetcastError('UNAVAILABLE', `the bridge closed the connection (${event.code})`));
      };
    });
    return opening;
  }

  // A refused upgrade shows the page no status: ask the HTTP endpoint why (one hello).
  async function why(error) {
    if (!probeUrl) return error;
    try {
      await httpTransport({ url: probeUrl, token, fetchImpl }).send(encodeFrame({ id: 0, method: 'hello', params: {} }));
    } catch (e) {
      if (e instanceof FleetcastError && e.code !== 'UNAVAILABLE') return e;
    }
    return error;
  }

  return {
    events: true,
    async send(frame) {
      let ws;
      try {
        ws = await open();
      } catch (e) {
        throw await why(e);
      }
      ws.send(frame);
      return undefined;
    },
    onFrame(callback) { frameCallback = callback; },
    onClose(callback) { closeCallback = callback; },
    open,
    close() { socket?.close(1000); },
  };
}

/** One POST per call to `url` (bridge.json "call"). */
export function httpTransport({ url, token, fetchImpl = globalThis.fetch } = {}) {
  if (!url) return unreachable('httpTransport');
  const headers = { 'content-type': 'application/octet-stream' };
  if (token) headers.authorization = `Bearer ${token}`;
  return {
    events: false,
    async send(frame) {
      let response;
      try {
        response = await fetchImpl(url, {
          method: 'POST',
          headers,
          body: frame,
          credentials: 'omit',
          cache: 'no-store',
        });
      } catch {
        throw refusedOrDown('the bridge did not answer');
      }
      const type = response.headers.get('content-type') ?? '';
      if (type.startsWith('application/json')) {
        const doc = await response.json().catch(() => null);
        const error = doc?.error;
        throw new FleetcastError(error?.code ?? 'INTERNAL', error?.message ?? `HTTP ${response.status}`, error?.retryable);
      }
      return response.arrayBuffer();
    },
    close() {},
  };
}

/**
 * Android: the app calls WebViewCompat.addWebMessageListener(webView, name, originRules,
 * listener); the page gets `window[name]` with postMessage(ArrayBuffer) and onmessage.
 */
export function androidTransport({ object } = {}) {
  if (!object || typeof object.postMessage !== 'function') {
    throw new TypeError('androidTransport needs the object the app injected with addWebMessageListener');
  }
  let frameCallback = () => {};
  object.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) frameCallback(event.data);
  };
  return {
    events: true,
    async send(frame) {
      object.postMessage(frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength));
      return undefined;
    },
    onFrame(callback) { frameCallback = callback; },
    close() {},
  };
}

const toBase64 = (bytes) => {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
};
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)).buffer;

/**
 * iOS: the app adds a WKScriptMessageHandlerWithReply named `name` for the main frame
 * only; postMessage(base64 frame) resolves with the base64 answer. Events arrive through
 * `window.__fleetcastEvent(base64)`, which the app calls with evaluateJavaScript.
 */
export function iosTransport({ handler, eventHook = '__fleetcastEvent', scope = globalThis } = {}) {
  if (!handler || typeof handler.postMessage !== 'function') {
    throw new TypeError('iosTransport needs window.webkit.messageHandlers.<name>');
  }
  let frameCallback = () => {};
  scope[eventHook] = (text) => frameCallback(fromBase64(text));
  return {
    events: true,
    async send(frame) {
      let reply;
      try {
        reply = await handler.postMessage(toBase64(frame));
      } catch (e) {
        throw new FleetcastError('UNAVAILABLE', `the app did not pass the call on: ${e?.message ?? e}`);
      }
      return fromBase64(reply);
    },
    onFrame(callback) { frameCallback = callback; },
    close() { delete scope[eventHook]; },
  };
}
