import { ErrorCode, GatewayError } from '../errors.ts';
import { openUnderRoots } from '../paths.ts';
import { decodeBase64, whyNotBase64 } from '../base64.ts';
import type { RawImage } from '../vision/preprocess.ts';

/**
 * Where an image's bytes come from: called once, after the image has been admitted. An encoded file (checked against
 * IMAGE_FORMATS), or pixels the server decoded itself (a crop of a photo it was sent).
 */
export type ImageSource = () => Promise<Uint8Array | RawImage>;

/** An image as a client gives it: exactly one of uploaded file, base64 bytes, or a server path under IMAGE_ROOTS. */
export interface ImageInput {
  file?: UploadedFile | null;
  base64?: string | null;
  path?: string | null;
}

/** An uploaded file (the fetch API's File): bytes() where it has it, which needs no copy. */
export interface UploadedFile {
  arrayBuffer(): Promise<ArrayBuffer>;
  bytes?(): Promise<Uint8Array>;
}

/**
 * The bytes of an upload. bytes() hands over the buffer the multipart parser filled; `new Uint8Array(arrayBuffer())`
 * copied it once more, and on large photos those copies were what drove V8's major collections (external memory).
 */
export async function uploadedBytes(file: UploadedFile): Promise<Uint8Array> {
  if (typeof file.bytes === 'function') return file.bytes();
  const data = await file.arrayBuffer();
  // some implementations hand a Buffer (a view) for an ArrayBuffer: wrap it, do not copy it
  const view = data as ArrayBuffer | ArrayBufferView;
  return ArrayBuffer.isView(view) ? new Uint8Array(view.buffer, view.byteOffset, view.byteLength) : new Uint8Array(view);
}

export interface ImageReadLimits {
  imageRoots: readonly string[];
  maxImageBytes: number;
}

/**
 * The source of an ImageInput (the choice is checked now, the bytes are read later). Uploads and base64 were counted
 * toward the request's input bytes before any was read; a file under IMAGE_ROOTS is counted by `takeBytes` when its
 * size is known, before it is read.
 */
export function imageSource(image: ImageInput, limits: ImageReadLimits, takeBytes: (n: number) => void): ImageSource {
  const given = [image.file, image.base64, image.path].filter((v) => v !== undefined && v !== null).length;
  if (given !== 1)
    return () => Promise.reject(new GatewayError(ErrorCode.INVALID_INPUT, 'ImageInput: give exactly one of file, base64, path'));
  return () => readImage(image, limits, takeBytes);
}

async function readImage(image: ImageInput, limits: ImageReadLimits, takeBytes: (n: number) => void): Promise<Uint8Array> {
  if (image.file) return uploadedBytes(image.file);
  if (image.base64 !== undefined && image.base64 !== null) {
    const text = image.base64.replace(/^data:[^,]*;base64,/, '');
    const bytes = decodeBase64(text);
    if (!bytes) throw new GatewayError(ErrorCode.INVALID_IMAGE, `ImageInput.base64 is not base64: ${whyNotBase64(text)}`);
    return bytes;
  }
  const file = await openUnderRoots(
    image.path!,
    limits.imageRoots,
    'image path',
    limits.imageRoots.length > 0
      ? 'IMAGE_ROOTS names the folders images may be read from'
      : 'IMAGE_ROOTS names the folders images may be read from, and names none here (none by default)',
  );
  try {
    const st = await file.stat();
    if (!st.isFile()) throw new GatewayError(ErrorCode.INVALID_INPUT, 'ImageInput.path is not a file');
    if (st.size > limits.maxImageBytes)
      throw new GatewayError(ErrorCode.PAYLOAD_TOO_LARGE, `image file is ${st.size} bytes; the limit is ${limits.maxImageBytes}`);
    takeBytes(st.size);
    // the size counted, and no more: a file that grows meanwhile is read as it was
    const bytes = Buffer.allocUnsafe(st.size);
    let read = 0;
    while (read < st.size) {
      const { bytesRead } = await file.read(bytes, read, st.size - read, read);
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    return bytes.subarray(0, read);
  } finally {
    await file.close();
  }
}
