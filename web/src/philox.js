// The Python runtime's noise stream in JS: Philox4x32-10 and Box–Muller exactly as kernels/philox.py has them
// (which follows Triton's tl.randint4x / tl.randn): element i of an N×d draw uses counter offset + i (c0 = its low
// 32 bits, c1 = its high 32 bits, c2 = c3 = 0) under key seed (k0 = low 32 bits, k1 = high 32 bits). Seeds and
// offsets are BigInts (they reach 2**63); the words are exact 32-bit integer arithmetic, the normals float32 as
// numpy computes them (Math.fround after every operation), so they match to the last bit or a few ulp (numpy's
// float32 log and cos are not correctly rounded, Math.log and Math.cos rounded to float32 are).

const ROUND_A = 0xd2511f53;
const ROUND_B = 0xcd9e8d57;
const KEY_A = 0x9e3779b9;
const KEY_B = 0xbb67ae85;
const TWO_32 = 2 ** 32;
const MASK_32 = 0xffffffffn;
const f32 = Math.fround;

// The high 32 bits of the 64-bit product of two uint32, from 16-bit halves so no partial product loses bits.
function mulHi(a, b) {
  const aLo = a & 0xffff, aHi = a >>> 16, bLo = b & 0xffff, bHi = b >>> 16;
  const middle = ((aLo * bLo) >>> 16) + ((aHi * bLo) & 0xffff) + aLo * bHi;
  return (aHi * bHi + ((aHi * bLo) >>> 16) + Math.floor(middle / 65536)) >>> 0;
}

/** The four Philox4x32-10 output words (uint32) of counter (c0, c1, 0, 0) under key (k0, k1). */
export function philox4x32(c0, c1, k0, k1) {
  let c2 = 0, c3 = 0;
  for (let round = 0; round < 10; round++) {
    const hiB = mulHi(ROUND_B, c2), loB = Math.imul(ROUND_B, c2) >>> 0;
    const hiA = mulHi(ROUND_A, c0), loA = Math.imul(ROUND_A, c0) >>> 0;
    [c0, c1, c2, c3] = [(hiB ^ c1 ^ k0) >>> 0, loB, (hiA ^ c3 ^ k1) >>> 0, loA];
    k0 = (k0 + KEY_A) >>> 0;
    k1 = (k1 + KEY_B) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** A seed or offset as a BigInt in [0, 2**63), from a BigInt, a safe integer or a decimal string. */
export function toUint63(value, what) {
  const text = typeof value === "string" ? value.trim() : null;
  const integral = typeof value === "bigint" || Number.isSafeInteger(value) || /^-?[0-9]+$/.test(text ?? "");
  if (!integral) throw new RangeError(`${what} must be an integer in [0, 2**63), got ${JSON.stringify(String(value))}`);
  const big = BigInt(text ?? value);
  if (big < 0n || big >= 2n ** 63n) throw new RangeError(`${what} must be in [0, 2**63), got ${big}`);
  return big;
}

/** The first two words of n consecutive counters from `offset` under `seed` (the words randn uses). */
function words(seed, offset, n, count) {
  seed = toUint63(seed, "seed");
  offset = toUint63(offset, "offset");
  if (offset + BigInt(n) > 2n ** 63n) throw new RangeError(`offset + n must stay below 2**63, got ${offset} + ${n}`);
  const k0 = Number(seed & MASK_32), k1 = Number(seed >> 32n);
  const low = Number(offset & MASK_32), high = Number(offset >> 32n);
  const out = [];
  for (let i = 0; i < n; i++) {
    const sum = low + i; // below 2**53: the carry into the high word is exact
    const c0 = sum % TWO_32, c1 = (high + Math.floor(sum / TWO_32)) >>> 0;
    out.push(philox4x32(c0, c1, k0, k1).slice(0, count));
  }
  return out;
}

/** tl.randint4x(seed, offset + i) for i < n: n arrays of four uint32 words. */
export function randint4x(seed, offset, n) {
  return words(seed, offset, n, 4);
}

/** tl.uint_to_uniform_float of one uint32 word: a float32 in [0, 1). */
export function uintToUniformFloat(word) {
  let x = word | 0; // the word's bits as int32
  if (x < 0) x = ~x;
  return f32(f32(x) * f32(4.6566127342e-10));
}

/** n float32 uniforms in [0, 1): the first word of each counter, as the VQ prior's sampling draws them. */
export function uniform(seed, offset, n) {
  return Float32Array.from(words(seed, offset, n, 1), ([w]) => uintToUniformFloat(w));
}

/** n float32 standard normals, tl.randn(seed, offset + i): Box–Muller's cosine branch on the first two words. */
export function standardNormal(seed, offset, n) {
  return Float32Array.from(words(seed, offset, n, 2), ([w0, w1]) => {
    const u1 = Math.max(f32(1.0e-7), uintToUniformFloat(w0));
    const theta = f32(f32(6.283185307179586) * uintToUniformFloat(w1));
    const r = f32(Math.sqrt(f32(f32(-2.0) * f32(Math.log(u1)))));
    return f32(r * f32(Math.cos(theta)));
  });
}
