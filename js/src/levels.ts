/** Which thresholds a policy runs with: the stored level asked for, at the precision asked for, or a
 * one-line refusal (no silent substitution, as the Python runtime's default). */

import { InputError } from "./errors.js";
import type { ExitThresholds, Manifest } from "./manifest.js";
import { storedLevel, thresholdsFor, type ResolvedPolicy } from "./policy.js";

export interface Levels {
  /** The precision that runs first. */
  precision: string;
  /** The exit thresholds at that precision (null: exits off). */
  level: ExitThresholds | null;
  /** A variant's level, whose last threshold guards its final answer (null at fp32: no restart). */
  restartLevel: ExitThresholds | null;
}

/** The precision "auto" runs at: the least expected cost, in fp32 full-model passes, among fp32's
 * exits and each variant's cascade calibrated exactly at this level (the Python runtime's
 * runtime/encoder/planner.py choose_precision, with the same rule and tie order). */
export function choosePrecision(manifest: Manifest, agreement: number | null, usable: (precision: string) => boolean): string {
  if (agreement === null) return "fp32";
  const exact = (levels: ExitThresholds[]) => levels.find((l) => Math.abs(l.agreement - agreement) < 1e-9);
  const round = (value: number) => Math.round(value * 1e4) / 1e4;
  const fp32 = exact(manifest.exitThresholds);
  let best = "fp32";
  let bestCost = round(fp32?.expectedMeanDepth != null ? fp32.expectedMeanDepth / manifest.numBlocks : 1);
  if (manifest.task !== "text-classification") return best;
  for (const variant of manifest.variants) {
    const level = exact(variant.thresholds);
    if (!level || level.expectedMeanDepth == null || !variant.speedup || !usable(variant.name)) continue;
    const ranges = level.byLength.length ? level.byLength : [level];
    if (ranges.some((r) => r.thresholds[r.thresholds.length - 1] == null)) continue;
    const cost = round(level.expectedMeanDepth / manifest.numBlocks / variant.speedup);
    if (cost < bestCost) { best = variant.name; bestCost = cost; }
  }
  return best;
}

export function startingLevels(manifest: Manifest, policy: ResolvedPolicy): Levels {
  const { agreement, precision } = policy;
  if (precision !== "fp32" && !manifest.variants.some((v) => v.name === precision)) {
    const known = ["fp32", ...manifest.variants.map((v) => v.name)];
    throw new InputError(`this package has no precision variant '${precision}'; it has ${known.join(", ")}`);
  }
  if (agreement === null) return { precision, level: null, restartLevel: null };
  if (precision === "fp32") {
    return { precision, level: storedLevel(manifest.exitThresholds, agreement, "this package"), restartLevel: null };
  }
  if (manifest.task !== "text-classification") {
    throw new InputError(`a precision cascade needs a classifier, whose final answer has a confidence; run '${precision}' with agreement null`);
  }
  const variant = manifest.variants.find((v) => v.name === precision)!;
  const level = storedLevel(variant.thresholds, agreement, `precision '${precision}'`);
  const ranges = level.byLength.length ? level.byLength : [level];
  if (ranges.every((r) => r.thresholds[r.thresholds.length - 1] == null)) {
    throw new InputError(`precision '${precision}' certifies no answer at agreement ${agreement} (no restart threshold holds it); run fp32`);
  }
  return { precision, level, restartLevel: level };
}

/** A variant's restart threshold for an input of this many tokens: null where it certifies no
 * answer for that length (the input runs at fp32), 0 where nothing restarts. */
export function restartThreshold(restartLevel: ExitThresholds | null, tokens: number): number | null {
  if (!restartLevel) return 0;
  const thresholds = thresholdsFor(restartLevel, tokens);
  return thresholds[thresholds.length - 1] ?? null;
}
