/** Search a corpus that the Python runtime embedded and saved (`index.save(PATH)`), at the top-1
 * agreement it states: the package's cheap precision embeds each query first, and the full model
 * again when its first result leads the second by less than the index's calibrated margin (the
 * Python runtime's runtime/encoder/search.py and search_file.py, with the same file and rules).
 *
 *   const index = await openIndex("corpus.index", "ag.edge");
 *   const hits = await index.search("stocks slide as oil prices climb", 10);  // ids, scores, rescued */

import { InputError, PackageError } from "./errors.js";
import { load, type LoadOptions } from "./index.js";
import type { EdgeSession } from "./session.js";
import { sourceOf } from "./source.js";
import { sha256Hex } from "./verify.js";

const MAGIC = "EDGEIDX1";
const MAX_HEADER_BYTES = 1 << 16;

export interface Gate {
  agreement: number;
  /** The cheap answer stands when its first score leads the second by at least this; null: never. */
  margin: number | null;
  sampled: number;
  rescuedShare: number;
  changed: number;
  bound: number;
}

export interface Hits {
  ids: number[];
  scores: number[];
  /** The cheap embedding's first two results were too close to call: the full model answered. */
  rescued: boolean;
}

export class SearchIndex {
  constructor(readonly corpus: Float32Array, readonly dimension: number, readonly gate: Gate,
              readonly precision: string, private readonly full: EdgeSession, private readonly cheap: EdgeSession | null) {}

  get size(): number {
    return this.corpus.length / this.dimension;
  }

  async search(query: string, k = 10): Promise<Hits> {
    if (typeof query !== "string" || !query.trim()) throw new InputError("a query must be a non-empty string");
    if (!Number.isInteger(k) || k < 1 || k > this.size) throw new InputError(`k ${JSON.stringify(k)} must be between 1 and ${this.size}`);
    if (this.cheap && this.gate.margin !== null) {
      const [ids, scores] = this.top(unit((await this.cheap.run(query)).embedding!), Math.max(k, 2));
      if (scores[0] - (scores.length > 1 ? scores[1] : -1) >= this.gate.margin) {
        return { ids: ids.slice(0, k), scores: scores.slice(0, k), rescued: false };
      }
    }
    const [ids, scores] = this.top(unit((await this.full.run(query)).embedding!), k);
    return { ids, scores, rescued: this.cheap !== null };
  }

  /** The k best corpus rows by cosine, best first (ties by position, as a stable sort). */
  private top(query: Float32Array, k: number): [number[], number[]] {
    const d = this.dimension;
    const best: { id: number; score: number }[] = [];
    for (let row = 0; row < this.size; row++) {
      let score = 0;
      for (let j = 0, at = row * d; j < d; j++) score += this.corpus[at + j] * query[j];
      if (best.length < k || score > best[best.length - 1].score) {
        let at = best.length < k ? best.length : best.length - 1;
        if (best.length < k) best.push({ id: row, score });
        while (at > 0 && best[at - 1].score < score) {
          best[at] = best[at - 1];
          at--;
        }
        best[at] = { id: row, score };
      }
    }
    return [best.map((b) => b.id), best.map((b) => b.score)];
  }
}

/** Opens a saved index with the package it was built with (anything else is refused in one line). */
export async function openIndex(location: string | URL, packageLocation: string | URL,
                                options: Omit<LoadOptions, "policy" | "budget"> = {}): Promise<SearchIndex> {
  const data = await readIndexBytes(location.toString());
  const name = location.toString();
  const header = parseHeader(data, name);
  const manifestBytes = await (await sourceOf(packageLocation)).read("manifest.json", 8 * 1024 * 1024);
  if (header.package_manifest_sha256 !== await sha256Hex(manifestBytes)) {
    throw new InputError(`${name} was built with another package (or another export of it); build the index again with this one`);
  }
  const full = await load(packageLocation, { ...options, policy: { agreement: null, precision: "fp32" } });
  if (full.manifest.task !== "feature-extraction") {
    throw new InputError(`openIndex needs a feature-extraction package; this one is for ${full.manifest.task}`);
  }
  const dimension = full.manifest.embeddingDim ?? full.manifest.hiddenSize;
  if (header.dimension !== dimension) throw new PackageError(`${name}: its embeddings have ${header.dimension} dimensions, the package's ${dimension}; rebuild the index`);
  const start = 12 + header.length + ((4 - ((12 + header.length) % 4)) % 4);
  const body = data.subarray(start);
  if (body.length !== header.texts * dimension * 4) {
    throw new PackageError(`${name} holds ${body.length} bytes of embeddings, not ${header.texts} x ${dimension} float32; rebuild the index`);
  }
  if ((await sha256Hex(body)) !== header.embeddings_sha256) throw new PackageError(`${name} fails its sha256 check; the index is damaged or tampered with`);
  const corpus = new Float32Array(header.texts * dimension);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let i = 0; i < corpus.length; i++) corpus[i] = view.getFloat32(i * 4, true);
  if (!corpus.every(Number.isFinite)) throw new PackageError(`${name} holds embeddings that are not finite; rebuild the index`);
  const precision = header.precision;
  if (precision === "fp32") return new SearchIndex(corpus, dimension, header.gate, precision, full, null);
  if (!full.manifest.variants.some((v) => v.name === precision)) {
    throw new PackageError(`${name} embeds queries with '${precision}', which the package does not hold; rebuild the index`);
  }
  const cheap = await load(packageLocation, { ...options, policy: { agreement: null, precision } });
  return new SearchIndex(corpus, dimension, header.gate, precision, full, cheap);
}

interface Header {
  length: number; texts: number; dimension: number; precision: string; gate: Gate;
  package_manifest_sha256: string; embeddings_sha256: string;
}

function parseHeader(data: Uint8Array, name: string): Header {
  const refuse = (what: string) => new PackageError(`${name}: ${what}; rebuild the index`);
  if (data.length < 12 || new globalThis.TextDecoder().decode(data.subarray(0, 8)) !== MAGIC) {
    throw new PackageError(`${name} is not an edgeinfer search index (no EDGEIDX1 header)`);
  }
  const length = new DataView(data.buffer, data.byteOffset + 8, 4).getUint32(0, true);
  if (length > MAX_HEADER_BYTES || 12 + length > data.length) throw refuse(`its header length (${length} bytes) does not fit the file`);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(new globalThis.TextDecoder("utf-8", { fatal: true }).decode(data.subarray(12, 12 + length)));
  } catch {
    throw refuse("its header is not valid JSON");
  }
  if (typeof raw !== "object" || raw === null || raw.format !== "edgeinfer-search-index") throw refuse("format must be 'edgeinfer-search-index'");
  if (raw.version !== 1) throw refuse(`version ${JSON.stringify(raw.version)} is not 1`);
  const whole = (v: unknown, low: number) => Number.isInteger(v) && (v as number) >= low && (v as number) <= 2 ** 31;
  if (!whole(raw.texts, 2) || !whole(raw.dimension, 1)) throw refuse("texts and dimension must be whole numbers (at least 2 texts)");
  for (const key of ["precision", "package_manifest_sha256", "embeddings_sha256"]) {
    if (typeof raw[key] !== "string") throw refuse(`${key} must be a string`);
  }
  const g = raw.gate as Record<string, unknown> | null;
  const unitInterval = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= 1;
  if (typeof g !== "object" || g === null || !unitInterval(g.agreement) || !unitInterval(g.rescued_share) || !unitInterval(g.bound)
      || !whole(g.sampled, 0) || !whole(g.changed, 0)
      || !(g.margin === null || (typeof g.margin === "number" && Number.isFinite(g.margin) && g.margin >= 0 && g.margin <= 2))) {
    throw refuse("gate must hold agreement, rescued_share and bound in [0, 1], sampled and changed counts, and a margin in [0, 2] or null");
  }
  const gate: Gate = { agreement: g.agreement as number, margin: g.margin as number | null, sampled: g.sampled as number,
                       rescuedShare: g.rescued_share as number, changed: g.changed as number, bound: g.bound as number };
  return { length, texts: raw.texts as number, dimension: raw.dimension as number, precision: raw.precision as string, gate,
           package_manifest_sha256: raw.package_manifest_sha256 as string, embeddings_sha256: raw.embeddings_sha256 as string };
}

async function readIndexBytes(location: string): Promise<Uint8Array> {
  if (/^(https?|blob|data):/.test(location) || (typeof window !== "undefined" && !location.startsWith("/"))) {
    const response = await fetch(location);
    if (!response.ok) throw new InputError(`${location} answered ${response.status}; pass the URL of a saved search index`);
    return new Uint8Array(await response.arrayBuffer());
  }
  const fs = await import("node:fs/promises");
  try {
    return new Uint8Array(await fs.readFile(location.startsWith("file:") ? new URL(location).pathname : location));
  } catch {
    throw new InputError(`${location} does not exist; build an index with search_index(...) and save it with index.save(PATH)`);
  }
}

function unit(embedding: Float32Array): Float32Array {
  let norm = 0;
  for (const x of embedding) norm += x * x;
  const scale = 1 / Math.max(Math.sqrt(norm), 1e-12);
  return embedding.map((x) => x * scale);
}
