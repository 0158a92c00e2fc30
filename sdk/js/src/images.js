// Image inputs: the page hands an ImageData or a Blob; pixels go to the agent as one
// uint8 [height, width, 4] RGBA tensor with a preprocessing spec that the agent applies
// natively (resize, channels, scale, mean/std, layout, dtype, reshape). A Blob is decoded
// here by the WebView's own image decoder, so the agent never parses image formats.

import { FleetcastError } from './errors.js';

const isImageData = (v) => v && typeof v === 'object' && Number.isInteger(v.width)
  && Number.isInteger(v.height) && v.data instanceof Uint8ClampedArray;

/** RGBA pixels as a tensor {dtype:'uint8', shape:[h, w, 4], data}. */
export async function pixelsOf(image) {
  if (isImageData(image)) {
    if (image.data.length !== image.width * image.height * 4) {
      throw new FleetcastError('INVALID_ARGUMENT', 'image: ImageData size does not match its pixels');
    }
    const data = new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.byteLength);
    return { dtype: 'uint8', shape: [image.height, image.width, 4], data };
  }
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    if (typeof createImageBitmap !== 'function' || typeof OffscreenCanvas !== 'function') {
      throw new FleetcastError('INVALID_ARGUMENT', 'image: this WebView cannot decode a Blob; pass ImageData');
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(image);
    } catch (e) {
      throw new FleetcastError('INVALID_ARGUMENT', `image: the Blob is not a decodable image (${e.message})`);
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext('2d');
    context.drawImage(bitmap, 0, 0);
    bitmap.close?.();
    return pixelsOf(context.getImageData(0, 0, canvas.width, canvas.height));
  }
  throw new FleetcastError('INVALID_ARGUMENT', 'image must be an ImageData or a Blob');
}
