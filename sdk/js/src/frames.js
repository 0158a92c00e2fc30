// Versioned binary frames, the same on every transport (agent/bridge_frames.py has the
// byte layout). Tensors travel as typed arrays: a header reference {dtype, shape, buffer}
// plus the raw little-endian bytes, never as JSON number arrays.

import { FleetcastError } from './errors.js';

export const PROTOCOL_VERSION = 1;
const MAGIC = [0x46, 0x43, 0x42]; // "FCB"
const ALIGN = 8;
const MAX_HEADER_BYTES = 64 * 1024;

/** dtype name -> the typed array that holds it (float16 as raw bits, bool as bytes). */
export const DTYPES = Object.freeze({
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  uint32: Uint32Array,
  int64: BigInt64Array,
  uint64: BigUint64Array,
  bool: Uint8Array,
});

const padded = (n) => Math.ceil(n / ALIGN) * ALIGN;
const invalid = (message) => new FleetcastError('INVALID_ARGUMENT', message);
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** True where typed arrays are little-endian, which the wire format needs. */
export function littleEndian() {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

/** One frame: `header` gets `v` and `buffers`; `buffers` are Uint8Array/typed array views. */
export function encodeFrame(header, buffers = []) {
  const ranges = [];
  let position = 0;
  for (const b of buffers) {
    ranges.push([position, b.byteLength]);
    position = padded(position + b.byteLength);
  }
  const head = encoder.encode(JSON.stringify({ ...header, v: PROTOCOL_VERSION, buffers: ranges }));
  const base = padded(8 + head.byteLength);
  const out = new Uint8Array(base + position);
  out.set(MAGIC, 0);
  out[3] = PROTOCOL_VERSION;
  new DataView(out.buffer).setUint32(4, head.byteLength, true);
  out.set(head, 8);
  buffers.forEach((b, i) => {
    out.set(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), base + ranges[i][0]);
  });
  return out;
}

/** {header, buffers} from a frame's bytes (ArrayBuffer or Uint8Array); throws INVALID_ARGUMENT. */
export function decodeFrame(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.byteLength < 8) throw invalid('frame is shorter than its 8-byte prefix');
  if (bytes[0] !== MAGIC[0] || bytes[1] !== MAGIC[1] || bytes[2] !== MAGIC[2]) {
    throw invalid('not a Fleetcast bridge frame (bad magic)');
  }
  if (bytes[3] !== PROTOCOL_VERSION) {
    throw invalid(`frame version ${bytes[3]} is not supported; this page speaks ${PROTOCOL_VERSION}`);
  }
  const length = new DataView(bytes.buffer, bytes.byteOffset, 8).getUint32(4, true);
  if (length > MAX_HEADER_BYTES || 8 + length > bytes.byteLength) throw invalid('frame header length is bad');
  let header;
  try {
    header = JSON.parse(decoder.decode(bytes.subarray(8, 8 + length)));
  } catch (e) {
    throw invalid(`frame header is not JSON: ${e.message}`);
  }
  if (!header || typeof header !== 'object' || header.v !== PROTOCOL_VERSION) {
    throw invalid('frame header is not a version 1 object');
  }
  const base = padded(8 + length);
  const buffers = (header.buffers ?? []).map(([offset, size]) => {
    if (base + offset + size > bytes.byteLength) throw invalid('frame buffer is past the frame');
    return { buffer: bytes.buffer, byteOffset: bytes.byteOffset + base + offset, byteLength: size };
  });
  return { header, buffers };
}

/** Checks a page's tensor {dtype, shape, data} and appends its bytes; returns the reference. */
export function packTensor(name, tensor, buffers) {
  if (!tensor || typeof tensor !== 'object') throw invalid(`input ${name}: expected {dtype, shape, data}`);
  const { dtype, shape, data } = tensor;
  const Type = DTYPES[dtype];
  if (!Type) throw invalid(`input ${name}: dtype ${dtype} is not one of ${Object.keys(DTYPES).join(', ')}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw invalid(`input ${name}: shape must be an array of non-negative integers`);
  }
  if (!ArrayBuffer.isView(data) || data instanceof DataView) {
    throw invalid(`input ${name}: data must be a typed array (${Type.name}), never a JSON number array`);
  }
  const okType = data instanceof Type || (dtype === 'float16' && data.constructor?.name === 'Float16Array')
    || (Type === Uint8Array && data instanceof Uint8ClampedArray);
  if (!okType) throw invalid(`input ${name}: dtype ${dtype} needs a ${Type.name}, got ${data.constructor.name}`);
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw invalid(`input ${name}: ${data.length} values do not fill shape [${shape}]`);
  buffers.push(data);
  return { dtype, shape: [...shape], buffer: buffers.length - 1 };
}

/** The page's view of a tensor reference in a decoded frame: {dtype, shape, data}. */
export function unpackTensor(ref, buffers) {
  const Type = DTYPES[ref?.dtype];
  const slot = buffers[ref?.buffer];
  if (!Type || !slot) throw invalid('answer names a tensor that is not in the frame');
  const count = slot.byteLength / Type.BYTES_PER_ELEMENT;
  // Offsets are 8-byte aligned, so a view needs no copy.
  const data = new Type(slot.buffer, slot.byteOffset, count);
  return { dtype: ref.dtype, shape: ref.shape, data };
}
