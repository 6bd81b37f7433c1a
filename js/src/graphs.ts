/** Finding segments and fused spans in a manifest, and the tensors passed between them. */

import type * as Ort from "onnxruntime-common";
import { PackageError } from "./errors.js";
import type { Manifest, Segment } from "./manifest.js";
import type { Encoded } from "./tokenize.js";

export type OrtModule = typeof Ort;

export function segmentNamed(manifest: Manifest, name: string): Segment {
  const found = manifest.segments.find((s) => s.name === name);
  if (!found) throw new PackageError(`the manifest names segment ${name} but does not describe it; re-export the package`);
  return found;
}

/** The spans fusing exactly these segments, at this precision. */
export function spansCovering(manifest: Manifest, covers: string[], precision: string): Segment[] {
  return manifest.segments.filter((s) => s.kind === "span" && s.covers.length === covers.length
    && s.covers.every((c, i) => c === covers[i]) && s.variants.some((v) => v.precision === precision));
}

/** The leanest span over these segments (fewest outputs), leaving out the graph that prunes inside. */
export function leanestSpan(manifest: Manifest, covers: string[], precision: string): Segment | null {
  const spans = spansCovering(manifest, covers, precision).filter((s) => s.name !== "full_pruned");
  return spans.length ? spans.reduce((a, b) => (b.outputs.length < a.outputs.length ? b : a)) : null;
}

export function inputFeeds(ort: OrtModule, encoded: Encoded, bias?: Float32Array): Record<string, Ort.Tensor> {
  const n = encoded.ids.length;
  return {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(encoded.ids, BigInt), [1, n]),
    token_type_ids: new ort.Tensor("int64", BigInt64Array.from(encoded.typeIds, BigInt), [1, n]),
    attention_bias: new ort.Tensor("float32", bias ?? new Float32Array(n), [1, n]),
  };
}

/** The hidden state's rows at these token indices (pruning keeps them, in order). */
export function gatherTokens(ort: OrtModule, hidden: Ort.Tensor, index: number[]): Ort.Tensor {
  const width = hidden.dims[2];
  const source = hidden.data as Float32Array;
  const kept = new Float32Array(index.length * width);
  index.forEach((row, i) => kept.set(source.subarray(row * width, (row + 1) * width), i * width));
  return new ort.Tensor("float32", kept, [1, index.length, width]);
}

export function pick(feeds: Record<string, Ort.Tensor>, names: string[]): Record<string, Ort.Tensor> {
  const picked: Record<string, Ort.Tensor> = {};
  for (const name of names) {
    if (!(name in feeds)) throw new PackageError(`a graph asks for input ${name}, which this runtime does not make; re-export the package`);
    picked[name] = feeds[name];
  }
  return picked;
}
