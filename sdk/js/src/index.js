// @fleetcast/bridge: call the on-device model a Fleetcast agent serves, from a page
// inside an app. No build step: import this file as an ES module.
//
//   import { connect } from './node_modules/@fleetcast/bridge/src/index.js';
//   const fleetcast = connect();              // uses what the app injected
//   await fleetcast.ml.ready();
//   const { outputs, latencyMs } = await fleetcast.ml.run({ inputs: { input: tensor } });

import { createFleetcast } from './core.js';
import { androidTransport, httpTransport, iosTransport, webSocketTransport } from './transports.js';

export { CODES, FleetcastError } from './errors.js';
export { DTYPES, PROTOCOL_VERSION, decodeFrame, encodeFrame } from './frames.js';
export { createFleetcast } from './core.js';
export { androidTransport, httpTransport, iosTransport, webSocketTransport } from './transports.js';

/**
 * A bridge client over the transport the host offers. `options` overrides what the app
 * injected as `window.__FLEETCAST_BRIDGE__` ({ws, call, token}, from the agent's
 * bridge.json), or names `transport: 'websocket' | 'http'`, `android` or `ios`.
 */
export function connect(options = {}) {
  const scope = globalThis;
  const injected = { ...(scope.__FLEETCAST_BRIDGE__ ?? {}), ...options };
  let transport = injected.transport;
  if (transport === 'http') {
    transport = httpTransport({ url: injected.call, token: injected.token });
  } else if (transport === 'websocket') {
    transport = webSocketTransport({ url: injected.ws, token: injected.token, probeUrl: injected.call });
  } else if (!transport) {
    if (injected.android || scope.fleetcastBridge) {
      transport = androidTransport({ object: injected.android ?? scope.fleetcastBridge });
    } else if (injected.ios || scope.webkit?.messageHandlers?.fleetcast) {
      transport = iosTransport({ handler: injected.ios ?? scope.webkit.messageHandlers.fleetcast });
    } else {
      transport = webSocketTransport({ url: injected.ws, token: injected.token, probeUrl: injected.call });
    }
  }
  return createFleetcast({ transport, topOnly: injected.topOnly ?? true });
}
