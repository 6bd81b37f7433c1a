/** The part of an edge package's manifest.json (docs/manifest.md) this runtime reads, checked as it
 * is parsed: a value of the wrong type or out of range is refused in one line naming the field. */

import { PackageError } from "./errors.js";

export interface Variant { precision: string; path: string }
export interface Segment {
  name: string;
  kind: "embed" | "block" | "exit" | "head" | "span" | string;
  index: number | null;
  inputs: string[];
  outputs: string[];
  variants: Variant[];
  covers: string[];
}
export interface ExitHead { afterBlock: number; segment: string; confidence: "max_prob" | "consecutive_cosine" }
export interface LengthThresholds { maxTokens: number | null; thresholds: (number | null)[] }
export interface ExitThresholds { agreement: number; thresholds: (number | null)[]; byLength: LengthThresholds[]; expectedMeanDepth: number | null }
/** speedup: fp32 latency over the variant's, measured when it was written (predicted in older packages). */
export interface PrecisionVariant { name: string; thresholds: ExitThresholds[]; speedup: number | null }
export interface FileEntry { path: string; bytes: number; sha256: string }
export interface Manifest {
  schemaVersion: string;
  task: "text-classification" | "feature-extraction" | string;
  numBlocks: number;
  hiddenSize: number;
  /** Feature extraction: the embedding's width (the hidden size unless a head projects it). */
  embeddingDim: number | null;
  labels: string[] | null;
  tokenizer: { path: string; maxLength: number; padId: number; specialIds: number[] };
  segments: Segment[];
  exits: ExitHead[];
  exitThresholds: ExitThresholds[];
  variants: PrecisionVariant[];
  files: FileEntry[];
}

const FORMAT = "edgeinfer.package";

export function parseManifest(text: string): Manifest {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new PackageError(`manifest.json is not valid JSON (${(err as Error).message}); re-export the package`);
  }
  const root = object(document, "manifest");
  if (root.format !== FORMAT) throw new PackageError(`manifest.json is not an edge package manifest (format ${JSON.stringify(root.format)})`);
  const schemaVersion = string(root.schema_version, "schema_version");
  if (!/^1\.\d+$/.test(schemaVersion)) {
    throw new PackageError(`schema_version ${schemaVersion} is not one this runtime reads (1.x); update edgeinfer`);
  }
  const model = object(root.model, "model");
  const tokenizer = object(root.tokenizer, "tokenizer");
  const task = string(model.task, "model.task");
  if (task === "text-generation") throw new PackageError("text-generation packages are not supported by the JavaScript runtime yet");
  return {
    schemaVersion,
    task,
    numBlocks: integer(model.num_blocks, "model.num_blocks", 1, 1024),
    hiddenSize: integer(model.hidden_size, "model.hidden_size", 1, 1 << 20),
    embeddingDim: model.embedding_dim == null ? null : integer(model.embedding_dim, "model.embedding_dim", 1, 1 << 20),
    labels: model.labels == null ? null : array(model.labels, "model.labels").map((l, i) => string(l, `model.labels[${i}]`)),
    tokenizer: {
      path: string(tokenizer.path, "tokenizer.path"),
      maxLength: integer(tokenizer.max_length, "tokenizer.max_length", 2, 1 << 16),
      padId: integer(tokenizer.pad_id, "tokenizer.pad_id", 0, 1 << 30),
      specialIds: array(tokenizer.special_ids, "tokenizer.special_ids").map((v, i) => integer(v, `tokenizer.special_ids[${i}]`, 0, 1 << 30)),
    },
    segments: array(root.segments, "segments").map((s, i) => segment(s, `segments[${i}]`)),
    exits: array(root.exits ?? [], "exits").map((e, i) => exitHead(e, `exits[${i}]`)),
    exitThresholds: array(root.exit_thresholds ?? [], "exit_thresholds").map((t, i) => levels(t, `exit_thresholds[${i}]`)),
    variants: array(root.precision_variants ?? [], "precision_variants").map((v, i) => {
      const o = object(v, `precision_variants[${i}]`);
      const quality = o.quality != null && typeof o.quality === "object" ? (o.quality as Record<string, unknown>) : {};
      const speedup = quality.speedup_measured ?? quality.speedup_predicted;
      return { name: string(o.name, `precision_variants[${i}].name`),
               thresholds: array(o.thresholds ?? [], `precision_variants[${i}].thresholds`).map((t, j) => levels(t, `precision_variants[${i}].thresholds[${j}]`)),
               speedup: speedup == null ? null : number(speedup, `precision_variants[${i}].quality.speedup_measured`, 0, 1e6) };
    }),
    files: array(root.files, "files").map((f, i) => {
      const o = object(f, `files[${i}]`);
      const sha256 = string(o.sha256, `files[${i}].sha256`);
      if (!/^[0-9a-f]{64}$/.test(sha256)) throw new PackageError(`files[${i}].sha256 is not a sha256 digest; re-export the package`);
      return { path: string(o.path, `files[${i}].path`), bytes: integer(o.bytes, `files[${i}].bytes`, 0, Number.MAX_SAFE_INTEGER), sha256 };
    }),
  };
}

function segment(value: unknown, where: string): Segment {
  const o = object(value, where);
  return {
    name: string(o.name, `${where}.name`),
    kind: string(o.kind, `${where}.kind`),
    index: o.index == null ? null : integer(o.index, `${where}.index`, 0, 1 << 16),
    inputs: array(o.inputs, `${where}.inputs`).map((v, i) => string(v, `${where}.inputs[${i}]`)),
    outputs: array(o.outputs, `${where}.outputs`).map((v, i) => string(v, `${where}.outputs[${i}]`)),
    variants: array(o.variants, `${where}.variants`).map((v, i) => {
      const variant = object(v, `${where}.variants[${i}]`);
      return { precision: string(variant.precision, `${where}.variants[${i}].precision`), path: string(variant.path, `${where}.variants[${i}].path`) };
    }),
    covers: array(o.covers ?? [], `${where}.covers`).map((v, i) => string(v, `${where}.covers[${i}]`)),
  };
}

function exitHead(value: unknown, where: string): ExitHead {
  const o = object(value, where);
  const confidence = string(o.confidence ?? "max_prob", `${where}.confidence`);
  if (confidence !== "max_prob" && confidence !== "consecutive_cosine") {
    throw new PackageError(`${where}.confidence ${JSON.stringify(confidence)} is not one this runtime knows; update edgeinfer`);
  }
  return { afterBlock: integer(o.after_block, `${where}.after_block`, 1, 1 << 16), segment: string(o.segment, `${where}.segment`), confidence };
}

function levels(value: unknown, where: string): ExitThresholds {
  const o = object(value, where);
  return {
    agreement: number(o.agreement, `${where}.agreement`, 0, 1),
    thresholds: thresholdList(o.thresholds, `${where}.thresholds`),
    expectedMeanDepth: o.expected_mean_depth == null ? null : number(o.expected_mean_depth, `${where}.expected_mean_depth`, 0, 1e9),
    byLength: array(o.by_length ?? [], `${where}.by_length`).map((r, i) => {
      const range = object(r, `${where}.by_length[${i}]`);
      return { maxTokens: range.max_tokens == null ? null : integer(range.max_tokens, `${where}.by_length[${i}].max_tokens`, 1, 1 << 20),
               thresholds: thresholdList(range.thresholds, `${where}.by_length[${i}].thresholds`) };
    }),
  };
}

function thresholdList(value: unknown, where: string): (number | null)[] {
  return array(value, where).map((t, i) => (t == null ? null : number(t, `${where}[${i}]`, -1e9, 1e9)));
}

function object(value: unknown, where: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new PackageError(`${where} must be an object; re-export the package`);
  return value as Record<string, unknown>;
}

function array(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new PackageError(`${where} must be a list; re-export the package`);
  return value;
}

function string(value: unknown, where: string): string {
  if (typeof value !== "string") throw new PackageError(`${where} must be a string; re-export the package`);
  return value;
}

function number(value: unknown, where: string, low: number, high: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < low || value > high) {
    throw new PackageError(`${where} must be a number in [${low}, ${high}]; re-export the package`);
  }
  return value;
}

function integer(value: unknown, where: string, low: number, high: number): number {
  if (!Number.isInteger(value) || (value as number) < low || (value as number) > high) {
    throw new PackageError(`${where} must be a whole number in [${low}, ${high}]; re-export the package`);
  }
  return value as number;
}
