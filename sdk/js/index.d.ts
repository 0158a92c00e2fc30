// Types of @fleetcast/bridge (src/index.js).

export type Dtype =
  | 'float32' | 'float64' | 'float16' | 'int8' | 'uint8' | 'int16' | 'uint16'
  | 'int32' | 'uint32' | 'int64' | 'uint64' | 'bool';

export type TypedArray =
  | Float32Array | Float64Array | Int8Array | Uint8Array | Uint8ClampedArray | Int16Array
  | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array;

/** A tensor: raw values in C order; float16 as Uint16Array bits, bool as Uint8Array. */
export interface Tensor<T extends TypedArray = TypedArray> {
  dtype: Dtype;
  shape: number[];
  data: T;
}

/** Applied by the agent, natively, to the image's RGBA pixels, in this order. */
export interface Preprocess {
  resize?: [height: number, width: number];
  channels?: 'rgb' | 'gray';
  scale?: number;
  mean?: number | number[];
  std?: number | number[];
  layout?: 'NCHW' | 'NHWC';
  dtype?: Dtype;
  reshape?: number[];
}

export interface ImageInput {
  image: ImageData | Blob;
  preprocess?: Preprocess;
}

export interface TensorInfo { name: string; dtype: string; shape: string[] }

export interface ModelInfo {
  model: string;
  version: string;
  sha256: string;
  variant: string;
  backend: string;
  hardware: string;
  inputs: TensorInfo[];
  outputs: TensorInfo[];
}

export interface Hello {
  protocol: 1;
  methods: string[];
  features: string[];
  model: ModelInfo | null;
}

export interface RunOptions {
  model?: string;
  inputs: Record<string, Tensor | ImageInput>;
  outputs?: string[];
  timeoutMs?: number;
}

export interface RunResult {
  outputs: Record<string, Tensor>;
  latencyMs: number;
  model: string;
  version: string;
}

export type ErrorCode =
  | 'UNAVAILABLE' | 'INVALID_ARGUMENT' | 'PERMISSION_DENIED' | 'NOT_FOUND' | 'MODEL_LOADING'
  | 'RESOURCE_EXHAUSTED' | 'TIMEOUT' | 'INFERENCE_ERROR' | 'INTERNAL';

/** 1 not found/unavailable, 2 invalid argument, 3 unknown, 4 no permission. */
export type ErrorAlias = 1 | 2 | 3 | 4;

export const CODES: Readonly<Record<ErrorCode, { alias: ErrorAlias; retryable: boolean }>>;

export class FleetcastError extends Error {
  constructor(code: ErrorCode | string, message: string, retryable?: boolean);
  readonly code: ErrorCode;
  readonly alias: ErrorAlias;
  readonly retryable: boolean;
  toResult(): CallFailure;
}

export interface CallFailure { error: ErrorAlias; errorMessage: string; errorCode: ErrorCode }

export type Feature =
  | 'ml.ready' | 'ml.listModels' | 'ml.info' | 'ml.run' | 'ml.run.image' | 'ml.on.modelUpdated' | 'call';

export interface Ml {
  ready(): Promise<Hello>;
  listModels(): Promise<ModelInfo[]>;
  info(options?: { model?: string }): Promise<ModelInfo>;
  run(options: RunOptions): Promise<RunResult>;
  on(event: 'modelUpdated', listener: (info: ModelInfo) => void): () => void;
  off(event: 'modelUpdated', listener: (info: ModelInfo) => void): void;
  canIUse(feature: Feature | string): boolean;
}

export interface Fleetcast {
  ml: Ml;
  call(name: 'ml.ready' | 'ml.info' | 'ml.listModels' | 'ml.run' | string, params: object | undefined,
    callback: (result: any | CallFailure) => void): void;
  call(name: string, callback: (result: any | CallFailure) => void): void;
  close(): void;
}

/** The last hop; see src/core.js. */
export interface Transport {
  events: boolean;
  send(frame: Uint8Array): Promise<ArrayBuffer | undefined>;
  onFrame?(callback: (frame: ArrayBuffer) => void): void;
  onClose?(callback: (error: FleetcastError) => void): void;
  close(): void;
}

export interface ConnectOptions {
  ws?: string;
  call?: string;
  token?: string;
  transport?: 'websocket' | 'http' | Transport;
  android?: { postMessage(data: ArrayBuffer): void; onmessage: ((event: { data: unknown }) => void) | null };
  ios?: { postMessage(message: string): Promise<string> };
  topOnly?: boolean;
}

export function connect(options?: ConnectOptions): Fleetcast;
export function createFleetcast(options: { transport: Transport; topOnly?: boolean }): Fleetcast;
export function webSocketTransport(options: { url: string; token: string; WebSocketImpl?: typeof WebSocket }): Transport;
export function httpTransport(options: { url: string; token: string; fetchImpl?: typeof fetch }): Transport;
export function androidTransport(options: { object: NonNullable<ConnectOptions['android']> }): Transport;
export function iosTransport(options: { handler: NonNullable<ConnectOptions['ios']>; eventHook?: string; scope?: object }): Transport;

export const PROTOCOL_VERSION: 1;
export const DTYPES: Readonly<Record<Dtype, { new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): TypedArray }>>;
export function encodeFrame(header: object, buffers?: ArrayBufferView[]): Uint8Array;
export function decodeFrame(data: ArrayBuffer | Uint8Array): { header: any; buffers: { buffer: ArrayBufferLike; byteOffset: number; byteLength: number }[] };
