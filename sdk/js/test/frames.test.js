import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CODES, FleetcastError } from '../src/errors.js';
import { decodeFrame, encodeFrame, packTensor, unpackTensor } from '../src/frames.js';

test('a frame with tensors decodes to the same header and bytes, each buffer 8-byte aligned', () => {
  const a = new Float32Array([1.5, -2, Math.PI]);
  const b = new BigInt64Array([1n, -2n]);
  const c = new Uint8Array([7]);
  const frame = encodeFrame({ id: 3, method: 'run', params: { x: 1 } }, [a, c, b]);
  const { header, buffers } = decodeFrame(frame.buffer);
  assert.equal(header.v, 1);
  assert.equal(header.id, 3);
  assert.deepEqual(header.params, { x: 1 });
  for (const slot of buffers) assert.equal(slot.byteOffset % 8, 0);
  assert.deepEqual(Array.from(unpackTensor({ dtype: 'float32', shape: [3], buffer: 0 }, buffers).data), Array.from(a));
  assert.deepEqual(Array.from(unpackTensor({ dtype: 'uint8', shape: [1], buffer: 1 }, buffers).data), [7]);
  assert.deepEqual(Array.from(unpackTensor({ dtype: 'int64', shape: [2], buffer: 2 }, buffers).data), [1n, -2n]);
});

test('decoding refuses bad magic, another version and a header past the frame', () => {
  const good = encodeFrame({ id: 1 });
  const badMagic = good.slice(); badMagic[0] = 0;
  const badVersion = good.slice(); badVersion[3] = 2;
  const short = good.slice(0, 10);
  for (const bytes of [badMagic, badVersion, short, new Uint8Array(3)]) {
    assert.throws(() => decodeFrame(bytes), (e) => e instanceof FleetcastError && e.code === 'INVALID_ARGUMENT');
  }
});

test('a JSON number array is refused as tensor data: only typed arrays cross', () => {
  const buffers = [];
  assert.throws(() => packTensor('x', { dtype: 'float32', shape: [2], data: [1, 2] }, buffers), /typed array/);
  assert.throws(() => packTensor('x', { dtype: 'float32', shape: [2], data: new Float64Array(2) }, buffers), /Float32Array/);
  assert.throws(() => packTensor('x', { dtype: 'float32', shape: [3], data: new Float32Array(2) }, buffers), /do not fill/);
  assert.throws(() => packTensor('x', { dtype: 'complex64', shape: [1], data: new Float32Array(1) }, buffers), /dtype/);
  assert.equal(buffers.length, 0);
  assert.deepEqual(packTensor('x', { dtype: 'float32', shape: [1, 2], data: new Float32Array(2) }, buffers),
    { dtype: 'float32', shape: [1, 2], buffer: 0 });
});

test('every code has its Alipay alias and a FleetcastError carries both', () => {
  assert.deepEqual(Object.fromEntries(Object.entries(CODES).map(([k, v]) => [k, v.alias])), {
    UNAVAILABLE: 1, INVALID_ARGUMENT: 2, PERMISSION_DENIED: 4, NOT_FOUND: 1, MODEL_LOADING: 1,
    RESOURCE_EXHAUSTED: 3, TIMEOUT: 3, INFERENCE_ERROR: 3, INTERNAL: 3,
  });
  const e = new FleetcastError('PERMISSION_DENIED', 'no');
  assert.deepEqual(e.toResult(), { error: 4, errorMessage: 'no', errorCode: 'PERMISSION_DENIED' });
  assert.equal(new FleetcastError('SOMETHING_NEW', 'x').code, 'INTERNAL');
});
