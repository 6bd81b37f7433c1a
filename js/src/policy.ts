/** What the runtime may trade for speed, and the small pure decisions it makes (the Python
 * runtime's runtime/policy.py and runtime/pruning.py, with the same rules). */

import { InputError } from "./errors.js";
import type { ExitThresholds } from "./manifest.js";

export interface Policy {
  /** A calibrated agreement level with the full model (one the package stores), or null: exits off. */
  agreement?: number | null;
  /** The precision variant to run first ("fp32", or e.g. "int8": the cascade, fp32 on restart).
   * "auto" (the default): whichever of fp32 and the variants calibration expects to cost least at
   * the agreement level; fp32 with pruning or exits off. */
  precision?: string;
  /** Token pruning: [afterBlock, fraction of the original tokens kept] pairs, in block order. */
  keepSchedule?: [number, number][];
}

export interface Budget {
  /** The deadline for one input, in milliseconds. */
  latencyMs?: number | null;
}

export interface ResolvedPolicy { agreement: number | null; precision: string; keepSchedule: Map<number, number> }

export function resolvePolicy(policy: Policy = {}): ResolvedPolicy {
  const agreement = policy.agreement === undefined ? 0.99 : policy.agreement;
  if (agreement !== null && !(typeof agreement === "number" && agreement >= 0.5 && agreement <= 1)) {
    throw new InputError(`policy agreement ${JSON.stringify(agreement)} must be a number in [0.5, 1] (or null)`);
  }
  const precision = policy.precision ?? "auto";
  if (typeof precision !== "string" || !precision) throw new InputError(`precision ${JSON.stringify(precision)} must be a variant name such as 'fp32' or 'int8'`);
  const keep = new Map<number, number>();
  let previous = 0;
  for (const entry of policy.keepSchedule ?? []) {
    const [block, fraction] = Array.isArray(entry) ? entry : [NaN, NaN];
    if (!Number.isInteger(block) || block <= previous || typeof fraction !== "number" || !(fraction > 0 && fraction <= 1)) {
      throw new InputError(`keepSchedule entry ${JSON.stringify(entry)} needs a block number after the previous one and a fraction in (0, 1]`);
    }
    keep.set(block, fraction);
    previous = block;
  }
  return { agreement, precision, keepSchedule: keep };
}

export function checkBudget(budget: Budget = {}): number | null {
  const ms = budget.latencyMs ?? null;
  if (ms !== null && !(typeof ms === "number" && Number.isFinite(ms) && ms > 0)) {
    throw new InputError(`budget latencyMs ${JSON.stringify(ms)} must be a positive number (or null)`);
  }
  return ms;
}

/** The stored level for exactly this agreement: no silent substitution (as the Python runtime's default). */
export function storedLevel(levels: ExitThresholds[], agreement: number, owner: string): ExitThresholds {
  const level = levels.find((l) => Math.abs(l.agreement - agreement) < 1e-9);
  if (!level) {
    const known = levels.map((l) => l.agreement).join(", ") || "none";
    throw new InputError(`agreement ${agreement} is not a level ${owner} calibrated (it has ${known}); ask for one of those`);
  }
  return level;
}

/** The thresholds an input of this many tokens is held to. */
export function thresholdsFor(level: ExitThresholds, tokens: number): (number | null)[] {
  for (const range of level.byLength) {
    if (range.maxTokens === null || tokens <= range.maxTokens) return range.thresholds;
  }
  return level.thresholds;
}

export function softmax(logits: ArrayLike<number>): number[] {
  let top = -Infinity;
  for (let i = 0; i < logits.length; i++) top = Math.max(top, logits[i]);
  const exps = Array.from(logits, (v) => Math.exp(v - top));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

export function maxProbability(logits: ArrayLike<number>): number {
  return Math.max(...softmax(logits));
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.max(Math.sqrt(na) * Math.sqrt(nb), 1e-12);
}

/** How many tokens stay: a fraction of the original length, never fewer than the protected tokens
 * plus one, never more than are there now. */
export function keepCount(originalTokens: number, currentTokens: number, fraction: number, protectedCount: number): number {
  const wanted = Math.ceil(fraction * originalTokens);
  return Math.max(Math.min(wanted, currentTokens), Math.min(protectedCount + 1, currentTokens));
}

/** Indices, in original order, of the `keep` most important tokens; protected tokens first. */
export function keepTokens(importance: ArrayLike<number>, isProtected: boolean[], keep: number): number[] {
  const order = Array.from({ length: importance.length }, (_, i) => i);
  if (keep >= order.length) return order;
  const score = (i: number) => (isProtected[i] ? Infinity : importance[i]);
  order.sort((a, b) => score(b) - score(a) || a - b);
  return order.slice(0, keep).sort((a, b) => a - b);
}
