// The stable error codes of the Fleetcast bridge. Names and numeric aliases are a public
// contract and never change; agent/bridge_frames.py holds the same table (a test keeps
// the two equal). Aliases follow Alipay-style pages: 1 not found/unavailable,
// 2 invalid argument, 3 unknown, 4 no permission.

/** @type {Readonly<Record<string, {alias: number, retryable: boolean}>>} */
export const CODES = Object.freeze({
  UNAVAILABLE: Object.freeze({ alias: 1, retryable: true }),
  INVALID_ARGUMENT: Object.freeze({ alias: 2, retryable: false }),
  PERMISSION_DENIED: Object.freeze({ alias: 4, retryable: false }),
  NOT_FOUND: Object.freeze({ alias: 1, retryable: false }),
  MODEL_LOADING: Object.freeze({ alias: 1, retryable: true }),
  RESOURCE_EXHAUSTED: Object.freeze({ alias: 3, retryable: true }),
  TIMEOUT: Object.freeze({ alias: 3, retryable: true }),
  INFERENCE_ERROR: Object.freeze({ alias: 3, retryable: false }),
  INTERNAL: Object.freeze({ alias: 3, retryable: false }),
});

/** An error a bridge call rejects with: `code` is a name in CODES, `alias` its number. */
export class FleetcastError extends Error {
  constructor(code, message, retryable) {
    const known = Object.prototype.hasOwnProperty.call(CODES, code) ? code : 'INTERNAL';
    super(message);
    this.name = 'FleetcastError';
    this.code = known;
    this.alias = CODES[known].alias;
    this.retryable = typeof retryable === 'boolean' ? retryable : CODES[known].retryable;
  }

  /** The Alipay-style failure object: `{error, errorMessage, errorCode}`. */
  toResult() {
    return { error: this.alias, errorMessage: this.message, errorCode: this.code };
  }
}

/** A FleetcastError from a wire document `{code, message, retryable}`. */
export function fromDocument(doc) {
  if (!doc || typeof doc !== 'object') {
    return new FleetcastError('INTERNAL', 'the bridge answered an error without a document');
  }
  return new FleetcastError(String(doc.code), String(doc.message ?? ''), doc.retryable);
}

/** Any thrown value as a FleetcastError (a bug in a page callback becomes INTERNAL). */
export function asFleetcastError(value) {
  if (value instanceof FleetcastError) return value;
  return new FleetcastError('INTERNAL', value instanceof Error ? value.message : String(value));
}
