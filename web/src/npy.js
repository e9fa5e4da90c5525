// A .npy reader for the bundle's arrays (the VQ codebook): the header is a Python dict literal, read here with
// regular expressions, never evaluated; only little-endian float32/int64 C-order arrays, what export writes.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
const DTYPES = { "<f4": Float32Array, "<i8": BigInt64Array };

/** { shape, dtype, data } of a .npy file's bytes; throws an Error naming what was expected and what came. */
export function parseNpy(buffer, name = "array") {
  const bytes = new Uint8Array(buffer);
  if (!MAGIC.every((b, i) => bytes[i] === b)) throw new Error(`${name}: not a .npy file (its magic bytes differ)`);
  const major = bytes[6];
  const view = new DataView(buffer);
  const [headerLength, headerStart] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder("latin1").decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!(descr in DTYPES)) throw new Error(`${name}: expected dtype <f4 or <i8, got ${descr}`);
  if (fortran !== "False") throw new Error(`${name}: expected a C-order array, got fortran_order ${fortran}`);
  if (shapeText === undefined) throw new Error(`${name}: the .npy header has no shape`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const Type = DTYPES[descr];
  const count = shape.reduce((a, b) => a * b, 1);
  const start = headerStart + headerLength;
  if (buffer.byteLength - start !== count * Type.BYTES_PER_ELEMENT) {
    throw new Error(`${name}: expected ${count * Type.BYTES_PER_ELEMENT} data bytes for shape (${shape}), ` +
                    `got ${buffer.byteLength - start}`);
  }
  return { shape, dtype: descr, data: new Type(buffer.slice(start)) };
}
