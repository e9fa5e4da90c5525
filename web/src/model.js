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

const LATENT_TYPES = ["gaussian", "deterministic", "hierarchical", "vq"];

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
      const expected = [manifest.latent.num_codes, manifest.latent.dim];
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
    this.dim = Number(manifest.latent.dim);
    this.imageShape = manifest.input.shape;
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
    // api.py _image: exp(-logaddexp(0, -x)) in float32, which is the sigmoid
    return this.bernoulli ? params.map((v) => f32(1 / (1 + Math.exp(-v)))) : Float32Array.from(params);
  }

  /** decode(z) for one latent of `dim` floats. */
  decodeLatent(z) {
    return this.image(Float32Array.from(z), [1, this.dim]);
  }

  /** decode(codes) for one grid of code indices (row-major h×w): z_q[c, p] = codebook[codes[p], c]. */
  decodeCodes(codes) {
    const [h, w] = this.latent.grid;
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
