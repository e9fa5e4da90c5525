// A vaedeploy bundle's decoding, driven by its manifest.json as vaedeploy/runtime/api.py and kinds.py drive it:
// the same graphs, the same noise (philox.js), the same sigmoid for Bernoulli decoders. What a kind supports here
// is decided once, in `capabilities`, from the bundle's operations in explorer.json, and shown on the page.
import { parseNpy } from "./npy.js";
import { standardNormal, uniform } from "./philox.js";

const f32 = Math.fround;
// kinds.py STAGE1_NOISE_OFFSET: a two-stage sample's stage-1 noise starts here in the stream, past every u draw.
const STAGE1_NOISE_OFFSET = 2n ** 62n;

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}; expected a file that vaedeploy web wrote`);
  return response;
}

function graphEntry(manifest, role) {
  const entry = manifest.graphs[role]?.fp32;
  if (!entry) throw new Error(`manifest.json: no fp32 ${role} graph; it has ${Object.keys(manifest.graphs)}`);
  return entry;
}

const DTYPE_NAMES = { "<f4": "float32", "<i8": "int64" }; // numpy's names, as site.py's sentence gives them
const LATENT_TYPES = ["gaussian", "deterministic", "hierarchical", "vq"];

/** latent.shape as format 2 writes it: a format-1 manifest's `dim` (and a VQ latent's `grid`) read as
 * bundle.py _upgrade reads them, so bundles of either format open. */
export function latentShape(latent) {
  if (latent.shape) return latent.shape.map(Number);
  return [Number(latent.dim), ...(latent.type === "vq" ? latent.grid.map(Number) : [])];
}

/** The image sizes a spatial bundle takes: input.size (H and W multiples of `multiple` from min to max), or its
 * one reference size; `refusal([H, W])` says in words what is wrong with a size, as bundle.py Sizes.refusal. */
export function imageSizes(manifest) {
  const reference = manifest.input.shape.slice(1).map(Number);
  const size = manifest.input.size;
  const low = size ? size.min.map(Number) : reference, high = size ? size.max.map(Number) : reference;
  const multiple = size ? Number(size.multiple) : 1;
  const text = size ? `H and W multiples of ${multiple} from ${low[0]}×${low[1]} to ${high[0]}×${high[1]}`
                    : `${reference[0]}×${reference[1]}, the one image size of this bundle`;
  const refusal = ([h, w]) => ([h, w].every((v, k) => Number.isInteger(v) && v % multiple === 0 && v >= low[k] &&
                                 v <= high[k]) ? null : text);
  return { reference, low, high, multiple, text, refusal };
}

/** What the page does with a bundle: the decode graph, the pad or the code grid, and how `sample` draws. Whether
 * there is a `sample` at all is the bundle's table of operations (explorer.json's `operations`, written from
 * vaedeploy/runtime/operations.py), so the page offers what the runtime and the server offer. */
export function capabilities(manifest, operations) {
  const latent = manifest.latent;
  const type = latent.type;
  const prior = latent.prior ?? {};
  if (!LATENT_TYPES.includes(type)) {
    throw new Error(`manifest.json: latent type ${JSON.stringify(type)} is not one this page supports ` +
                    `(${LATENT_TYPES.join(", ")})`);
  }
  // a VQ latent without a prior (diffusers' VQModel) shows its z_q as a spatial latent, as site.py's spatial()
  if (latentShape(latent).length === 3 && (type !== "vq" || !latent.prior)) {
    const sample = operations.some((op) => op.name === "sample") ? "spatial" : null;
    return { decode: "decoder", view: "spatial", sample,
             says: `a ${latentShape(latent).join("×")} spatial latent (at the reference size) from a dropped .npy ` +
                   "or --latents; " + (sample ? "sample z ~ N(0, I) at a chosen size"
                     : `no sample: a ${type} latent has no prior (the Python runtime refuses it too)`) };
  }
  if (!operations.some((op) => op.name === "sample")) {
    const view = type === "vq" ? "codes" : "pad";
    return { decode: type === "hierarchical" ? latent.graphs.decode : "decoder", view, sample: null,
             says: `${view === "pad" ? "pad over z" : "a grid of code indices to edit"}; no sample: the bundle ` +
                   `has no sample operation (a ${type} latent has no prior, and the Python runtime refuses it too)` };
  }
  if (type === "gaussian" && prior.type === "two_stage") {
    return { decode: "decoder", view: "pad", sample: "two_stage", sampleGraph: prior.graph,
             says: "pad over z; sample through the stage-2 prior graph (u → z), as TwoStageRuntime.sample" };
  }
  if (type === "gaussian" && !latent.prior) {
    return { decode: "decoder", view: "pad", sample: "normal", says: "pad over z; sample z ~ N(0, I)" };
  }
  if (type === "gaussian") {
    return { decode: "decoder", view: "pad", sample: null,
             says: `pad over z; sample is not supported for a ${prior.type} prior` };
  }
  if (type === "hierarchical") {
    return { decode: latent.graphs.decode, view: "pad", sample: "hierarchical", sampleGraph: latent.graphs.sample,
             says: `pad over every layer's z through the ${latent.graphs.decode} graph; sample ancestrally ` +
                   `through the ${latent.graphs.sample} graph from each layer's noise` };
  }
  if (type === "vq" && prior.type === "autoregressive") {
    return { decode: "decoder", view: "codes", sample: "vq", sampleGraph: prior.graph,
             says: "a grid of code indices (codebook rows) to edit; sample codes through the autoregressive prior" };
  }
  if (type === "vq") {
    return { decode: "decoder", view: "codes", sample: null,
             says: `a grid of code indices to edit; sample is not supported for a ${prior.type} prior` };
  }
  throw new Error(`manifest.json: a ${type} latent with a sample operation; expected one of the samplers above`);
}

/** One code per row of logits: inverse CDF of softmax(logits / T) at u, in float64 as kinds.py _categorical. */
function categorical(logits, temperature, u) {
  if (temperature === 0) return logits.reduce((best, v, k) => (v > logits[best] ? k : best), 0);
  const scaled = Array.from(logits, (v) => v / temperature);
  const top = Math.max(...scaled);
  const cdf = [];
  let sum = 0;
  for (const v of scaled) cdf.push((sum += Math.exp(v - top)));
  const threshold = u * sum;
  return Math.min(cdf.filter((c) => c < threshold).length, logits.length - 1);
}

export class Model {
  /** Fetch the manifest, create the sessions the page needs on `provider` ("wasm" or "webgpu"); `operations` are
   * explorer.json's. */
  static async load(ort, root, provider, operations) {
    const manifest = await (await fetchOk(root + "manifest.json")).json();
    const can = capabilities(manifest, operations);
    const sessions = {};
    for (const role of new Set([can.decode, can.sampleGraph].filter(Boolean))) {
      const url = root + graphEntry(manifest, role).file;
      sessions[role] = await ort.InferenceSession.create(url, { executionProviders: [provider] });
    }
    let codebook = null;
    if (manifest.latent.type === "vq") {
      const name = manifest.arrays[manifest.latent.codebook];
      codebook = parseNpy(await (await fetchOk(root + name)).arrayBuffer(), name);
      const expected = [manifest.latent.num_codes, latentShape(manifest.latent)[0]];
      if (codebook.dtype !== "<f4" || String(codebook.shape) !== String(expected)) {
        throw new Error(`${name}: expected a float32 ${expected.join("×")} codebook, got ${codebook.dtype} ` +
                        `${codebook.shape.join("×")}`);
      }
    }
    return new Model(ort, manifest, can, sessions, codebook);
  }

  constructor(ort, manifest, can, sessions, codebook) {
    Object.assign(this, { ort, manifest, can, sessions, codebook });
    this.latent = manifest.latent;
    this.latentShape = latentShape(manifest.latent);
    this.dim = this.latentShape[0];
    this.grid = this.latentShape.slice(1);
    this.imageShape = manifest.input.shape;
    this.sizes = imageSizes(manifest);
    this.downsample = Number(manifest.latent.downsample ?? 1);
    const scaling = manifest.latent.scaling;
    // latents.py GaussianRuntime.scaling: (scaling_factor, shift_factor), or none (the graph's own space)
    this.scaling = scaling ? [f32(scaling.scaling_factor), f32(scaling.shift_factor)] : null;
    this.bernoulli = manifest.likelihood.kind === "bernoulli";
    this.imageOutput = manifest.likelihood.outputs[0];
    this.decodeInput = graphEntry(manifest, can.decode).inputs[0].name;
    this.lastRunMs = 0;
  }

  async run(role, feeds, outputs) {
    const started = performance.now();
    const result = await this.sessions[role].run(feeds, outputs);
    this.lastRunMs = performance.now() - started;
    return result;
  }

  tensor(data, dims) {
    return new this.ort.Tensor(data instanceof BigInt64Array ? "int64" : "float32", data, dims);
  }

  /** The mean image of p(x|·) from the decode graph's input: the sigmoid of the logits for Bernoulli decoders. */
  async image(input, dims) {
    const out = await this.run(this.can.decode, { [this.decodeInput]: this.tensor(input, dims) }, [this.imageOutput]);
    const params = out[this.imageOutput].data;
    this.imageDims = out[this.imageOutput].dims.slice(1); // [C, H, W] of this decode (a spatial one's own size)
    // api.py _image: exp(-logaddexp(0, -x)) in float32, which is the sigmoid
    return this.bernoulli ? params.map((v) => f32(1 / (1 + Math.exp(-v)))) : Float32Array.from(params);
  }

  /** decode(z) for one latent of `dim` floats. */
  decodeLatent(z) {
    return this.image(Float32Array.from(z), [1, this.dim]);
  }

  /** The latent shape [c, h, w] at image size [H, W], or an Error naming the sizes this bundle takes. */
  latentShapeAt([h, w]) {
    const why = this.sizes.refusal([h, w]);
    if (why) throw new Error(`size: expected ${why}, got ${h}×${w}`);
    return [this.dim, h / this.downsample, w / this.downsample];
  }

  /** A .npy latent's [c, h, w] (shape (c, h, w) or (1, c, h, w), float32), or an Error in one sentence naming what
   * the bundle takes and what came, as site.py's check of --latents says it. */
  checkLatent(npy, name) {
    const shape = npy.shape.length === 4 && npy.shape[0] === 1 ? npy.shape.slice(1) : npy.shape;
    const [c, h, w] = shape, f = this.downsample;
    if (npy.dtype !== "<f4" || shape.length !== 3 || c !== this.dim || this.sizes.refusal([h * f, w * f])) {
      throw new Error(`${name}: expected a float32 latent of shape (1, ${this.dim}, h, w) or (${this.dim}, h, w) ` +
                      `with (h·${f}, w·${f}) one of this bundle's sizes (${this.sizes.text}), got ` +
                      `${DTYPE_NAMES[npy.dtype]} (${npy.shape.join(", ")})`);
    }
    return shape;
  }

  /** decode(z) of one spatial latent [c, h, w] in encode's space: z / scale + shift is what the decoder graph
   * takes, each operation in float32 as latents.py _decode_scaled_rows computes it. */
  decodeSpatial(z, shape) {
    const unscaled = this.scaling
      ? Float32Array.from(z, (v) => f32(f32(v / this.scaling[0]) + this.scaling[1]))
      : Float32Array.from(z);
    return this.image(unscaled, [1, ...shape]);
  }

  /** Runtime.sample(1, seed, size=[H, W]) of a spatial bundle: z ~ N(0, I) in the graph's own space (no scaling),
   * one Philox counter per latent element in C order from offset 0, decoded. */
  async sampleSpatial(seed, size) {
    const shape = this.latentShapeAt(size);
    const z = standardNormal(seed, 0n, shape[0] * shape[1] * shape[2]);
    return { z, shape, image: await this.image(z, [1, ...shape]) };
  }

  /** decode(codes) for one grid of code indices (row-major h×w): z_q[c, p] = codebook[codes[p], c]. */
  decodeCodes(codes) {
    const [h, w] = this.grid;
    const d = this.dim;
    const zq = new Float32Array(d * h * w);
    codes.forEach((code, p) => {
      for (let c = 0; c < d; c++) zq[c * h * w + p] = this.codebook.data[code * d + c];
    });
    return this.image(zq, [1, d, h, w]);
  }

  /** Runtime.sample(1, seed) at temperature 1: { image, z } or { image, codes }; each kind as kinds.py draws it. */
  async sample(seed, temperature = 1) {
    const t = f32(temperature);
    if (this.can.sample === "normal") {
      const z = standardNormal(seed, 0n, this.dim).map((v) => f32(v * t));
      return { z, image: await this.decodeLatent(z) };
    }
    if (this.can.sample === "two_stage") {
      const prior = this.latent.prior;
      const u = standardNormal(seed, 0n, Number(prior.dim)).map((v) => f32(v * t));
      const input = graphEntry(this.manifest, prior.graph).inputs[0].name;
      const out = await this.run(prior.graph, { [input]: this.tensor(u, [1, u.length]) }, ["mean", "log_gamma"]);
      const mean = out.mean.data, logGamma = out.log_gamma.data;
      const eps = standardNormal(seed, STAGE1_NOISE_OFFSET, this.dim);
      // mean + t * exp(0.5 * log_gamma) * eps, each operation in float32 as numpy does it
      const z = eps.map((e, i) => f32(mean[i] + f32(f32(t * f32(Math.exp(f32(0.5 * logGamma[i])))) * e)));
      return { z, image: await this.decodeLatent(z) };
    }
    if (this.can.sample === "hierarchical") {
      const eps = standardNormal(seed, 0n, this.dim).map((v) => f32(v * t));
      const feeds = {};
      let start = 0;
      for (const layer of this.latent.layers) { // one N×Σd draw split by layer, bottom first
        const dim = Number(layer.dim);
        feeds[layer.noise] = this.tensor(eps.slice(start, start + dim), [1, dim]);
        start += dim;
      }
      const out = await this.run(this.can.sampleGraph, feeds, [this.imageOutput]);
      const params = out[this.imageOutput].data;
      return { image: this.bernoulli ? params.map((v) => f32(1 / (1 + Math.exp(-v)))) : Float32Array.from(params) };
    }
    if (this.can.sample === "vq") {
      const codes = await this.sampleCodes(seed, temperature);
      return { codes, image: await this.decodeCodes(codes) };
    }
    throw new Error(`sample is not supported for this bundle: ${this.can.says}`);
  }

  /** VQRuntime.sample_codes(1, seed): the prior fed all L tokens each step; code t uses Philox uniform t. */
  async sampleCodes(seed, temperature = 1) {
    const prior = this.latent.prior;
    const length = Number(prior.length), codes = [];
    const u = uniform(seed, 0n, length);
    const tokens = new BigInt64Array(length);
    tokens[0] = BigInt(prior.start_token);
    const input = graphEntry(this.manifest, prior.graph).inputs[0].name;
    for (let t = 0; t < length; t++) {
      const out = await this.sessions[prior.graph].run({ [input]: this.tensor(tokens, [1, length]) }, ["logits"]);
      const k = out.logits.dims[2];
      codes.push(categorical(out.logits.data.subarray(t * k, (t + 1) * k), temperature, u[t]));
      if (t + 1 < length) tokens[t + 1] = BigInt(codes[t]);
    }
    return codes;
  }
}
