/** A loaded edge package that answers texts adaptively: the Python runtime's executor (early exit at
 * a calibrated level, the precision cascade with restart at fp32, token pruning, the deadline guard)
 * over onnxruntime's JavaScript API, so the same package gives the same answers in Node and browsers. */

import type * as Ort from "onnxruntime-common";
import { PackageError } from "./errors.js";
import type { ExitHead, ExitThresholds, Manifest, Segment } from "./manifest.js";
import { gatherTokens, inputFeeds, leanestSpan, pick, segmentNamed, spansCovering, type OrtModule } from "./graphs.js";
import { choosePrecision, restartThreshold, startingLevels } from "./levels.js";
import { cosine, keepCount, keepTokens, maxProbability, softmax, thresholdsFor, type ResolvedPolicy } from "./policy.js";
import type { Encoded, TextEncoder } from "./tokenize.js";

export type { OrtModule } from "./graphs.js";

export interface Trace {
  segments: string[];
  tokensPerBlock: number[];
  exitAfterBlock: number;
  restarts: number;
  precision: string;
  precisionRequested: string;
  levelUsed: number | null;
  deadlineCut: boolean;
  truncated: boolean;
  totalMs: number;
}

export interface Result {
  label: string | null;
  probabilities: number[] | null;
  embedding: Float32Array | null;
  confidence: number | null;
  trace: Trace;
}

/** Opens a graph (segment at a precision) once; shared by every request. */
export type GraphOpener = (segment: Segment, precision: string) => Promise<Ort.InferenceSession>;

interface Run { started: number; precision: string; segments: string[]; tokens: number[]; restarts: number }
interface Answer { output: Float32Array; confidence: number | null; depth: number; cutShort?: boolean }
interface ActiveExit { head: ExitHead; segment: Segment }

export class EdgeSession {
  readonly precision: string;
  readonly level: ExitThresholds | null;
  private readonly restartLevel: ExitThresholds | null;
  private readonly blocks: Segment[];
  private readonly embed: Segment;
  private readonly head: Segment;
  private readonly full: Segment | null;
  private readonly lastStage: Segment | null;
  private readonly stages = new Map<number, Segment>();
  private readonly exits = new Map<number, ActiveExit>();
  private blockCostMs: number | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly manifest: Manifest, readonly policy: ResolvedPolicy, private readonly encoder: TextEncoder,
              private readonly ort: OrtModule, private readonly open: GraphOpener,
              private readonly latencyMs: number | null) {
    const kind = (k: string) => manifest.segments.filter((s) => s.kind === k);
    this.blocks = kind("block").sort((a, b) => (a.index ?? 0) - (b.index ?? 0));
    this.embed = kind("embed")[0];
    this.head = kind("head")[0];
    if (kind("whole").length) {
      throw new PackageError("this package is the whole model in one graph (schema 1.9, exported through Optimum): " +
                             "this runtime runs segmented packages; open graphs/whole.onnx with onnxruntime directly");
    }
    if (!this.embed || !this.head || this.blocks.length !== manifest.numBlocks) {
      throw new PackageError("the manifest lacks its embed, block or head segments; re-export the package");
    }
    const precision = policy.precision !== "auto" ? policy.precision
      : choosePrecision(manifest, policy.keepSchedule.size ? null : policy.agreement,
                        (p) => this.embed.variants.some((v) => v.precision === p));
    ({ precision: this.precision, level: this.level, restartLevel: this.restartLevel } = startingLevels(manifest, { ...policy, precision }));
    if (this.level) {
      const thresholds = this.level.byLength.length ? this.level.byLength.flatMap((r) => r.thresholds) : this.level.thresholds;
      manifest.exits.forEach((head, i) => {
        const used = this.level!.byLength.length ? this.level!.byLength.some((r) => r.thresholds[i] != null) : thresholds[i] != null;
        if (used) this.exits.set(head.afterBlock, { head, segment: segmentNamed(this.manifest, head.segment) });
        if (used && head.confidence === "consecutive_cosine" && i > 0 && !this.exits.has(manifest.exits[i - 1].afterBlock)) {
          const before = manifest.exits[i - 1];
          this.exits.set(before.afterBlock, { head: before, segment: segmentNamed(this.manifest, before.segment) });
        }
      });
    }
    const names = ["embed", ...this.blocks.map((b) => b.name), "head"];
    const fullSpan = leanestSpan(this.manifest, names, this.precision);
    const decides = this.exits.size > 0 || policy.keepSchedule.size > 0 || latencyMs !== null || this.restartLevel !== null;
    this.full = decides ? null : fullSpan;
    this.lastStage = leanestSpan(this.manifest, [this.blocks[this.blocks.length - 1].name, this.head.name], this.precision);
    for (const { head } of this.exits.values()) {
      const d = head.afterBlock;
      const covers = [...(d === 1 ? ["embed"] : []), this.blocks[d - 1].name, head.segment];
      const spans = spansCovering(this.manifest, covers, this.precision).filter((s) => !policy.keepSchedule.has(d) || s.outputs.includes("token_importance"));
      if (spans.length) this.stages.set(d, spans.reduce((a, b) => (b.outputs.length < a.outputs.length ? b : a)));
    }
  }

  /** Opens what a deadline may call now, and times a block: a deadline cannot absorb a graph being opened mid-run. */
  async prepare(): Promise<void> {
    if (this.latencyMs === null) return;
    for (const segment of [this.embed, ...this.blocks, this.head, ...this.stages.values(), ...[...this.exits.values()].map((e) => e.segment)]) {
      await this.open(segment, this.precision);
    }
    const block = await this.open(this.blocks[0], this.precision);
    const tokens = 16, hidden = this.manifest.hiddenSize;
    const feeds = { hidden: new this.ort.Tensor("float32", new Float32Array(tokens * hidden), [1, tokens, hidden]),
                    attention_bias: new this.ort.Tensor("float32", new Float32Array(tokens), [1, tokens]) };
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      await block.run(pick(feeds, this.blocks[0].inputs));
      times.push(performance.now() - t0);
    }
    this.blockCostMs = times.sort((a, b) => a - b)[Math.floor(times.length * 0.8)];
  }

  /** Answers one text. Calls made while another is running wait their turn: onnxruntime-web runs one
   * request per session at a time, and timings stay per request. */
  run(text: string): Promise<Result> {
    const turn = this.queue.then(() => this.runNow(text));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private async runNow(text: string): Promise<Result> {
    const started = performance.now();
    const encoded = this.encoder.encode(text);
    const state: Run = { started, precision: this.precision, segments: [], tokens: [], restarts: 0 };
    const n = encoded.ids.length;
    let answer: Answer;
    if (this.precision !== "fp32" && restartThreshold(this.restartLevel, n) === null) {
      state.precision = "fp32";  // the variant certifies no answer for inputs of this length
      answer = await this.fullPass(state, encoded);
    } else if (this.full) {
      answer = await this.fullPass(state, encoded);
    } else {
      answer = await this.adaptivePass(state, encoded);
    }
    if (this.shouldRestart(state, answer, n)) {
      state.restarts += 1;
      state.precision = "fp32";
      answer = await this.fullPass(state, encoded);
    }
    return this.result(state, encoded, answer);
  }

  // --- passes ---------------------------------------------------------------------------------

  private async fullPass(state: Run, encoded: Encoded): Promise<Answer> {
    const covers = ["embed", ...this.blocks.map((b) => b.name), "head"];
    const span = this.manifest.segments.find((s) => s.name !== "full_pruned" && s.kind === "span"
      && s.covers.join() === covers.join() && s.variants.some((v) => v.precision === state.precision));
    if (!span) throw new PackageError("the package has no fused full graph; re-export it with schema 1.1 or later");
    const out = await this.call(state, span, inputFeeds(this.ort, encoded));
    state.tokens.push(...this.blocks.map(() => encoded.ids.length));
    const output = out[0].data as Float32Array;
    return { output, confidence: this.finalConfidence(output), depth: this.blocks.length };
  }

  private async adaptivePass(state: Run, encoded: Encoded): Promise<Answer> {
    const n = encoded.ids.length;
    const thresholds = this.level ? thresholdsFor(this.level, n) : [];
    let bias = new Float32Array(n);
    let feeds: Record<string, Ort.Tensor> = inputFeeds(this.ort, encoded, bias);
    let hidden: Ort.Tensor | null = null;
    let isProtected = encoded.special.slice();
    if (!(this.exits.has(1) && this.stages.has(1))) {
      hidden = (await this.call(state, this.embed, feeds))[0];
    }
    let previousExit: Float32Array | null = null;
    let best: Answer | null = null;
    const last = this.blocks.length;
    for (let depth = 1; depth <= last; depth++) {
      const tokens = hidden ? hidden.dims[1] : n;
      if (this.latencyMs !== null && depth > 1 && this.wouldOverrun(state)) return this.anytime(state, hidden!, bias, depth - 1, best);
      state.tokens.push(tokens);
      if (hidden) feeds = { hidden, attention_bias: floatTensor(this.ort, bias, [1, tokens]) };
      if (depth === last && this.lastStage) {
        const output = (await this.call(state, this.lastStage, feeds))[0].data as Float32Array;
        return { output, confidence: this.finalConfidence(output), depth: last };
      }
      const active = depth < last ? this.exits.get(depth) : undefined;
      const stage = active ? this.stages.get(depth) : undefined;
      let outputs: Ort.Tensor[];
      let exitOutput: Float32Array | null = null;
      if (stage) {
        outputs = await this.call(state, stage, feeds);
        exitOutput = outputs.pop()!.data as Float32Array;
      } else {
        outputs = await this.call(state, this.blocks[depth - 1], feeds);
      }
      hidden = outputs[0];
      if (active && !exitOutput) {
        exitOutput = (await this.call(state, active.segment, { hidden, attention_bias: floatTensor(this.ort, bias, [1, hidden.dims[1]]) }))[0].data as Float32Array;
      }
      if (active && exitOutput) {
        const index = this.manifest.exits.indexOf(active.head);
        const confidence = active.head.confidence === "max_prob" ? maxProbability(exitOutput)
          : previousExit ? cosine(exitOutput, previousExit) : null;
        previousExit = exitOutput;
        best = { output: exitOutput, confidence, depth };
        const threshold = thresholds[index];
        if (confidence !== null && threshold != null && confidence >= threshold) return best;
      }
      const fraction = this.policy.keepSchedule.get(depth);
      if (fraction !== undefined) {
        const current = hidden.dims[1];
        const keep = keepCount(n, current, fraction, isProtected.filter(Boolean).length);
        const scores = outputs[this.blocks[0].outputs.indexOf("token_importance")].data as Float32Array;
        const index = keepTokens(scores, isProtected, keep);
        hidden = gatherTokens(this.ort, hidden, index);
        bias = Float32Array.from(index, (i) => bias[i]);
        isProtected = index.map((i) => isProtected[i]);
      }
    }
    const output = (await this.call(state, this.head, { hidden: hidden!, attention_bias: floatTensor(this.ort, bias, [1, hidden!.dims[1]]) }))[0].data as Float32Array;
    return { output, confidence: this.finalConfidence(output), depth: last };
  }

  private async anytime(state: Run, hidden: Ort.Tensor, bias: Float32Array, depth: number, best: Answer | null): Promise<Answer> {
    if (!best || best.depth < depth) {
      const here = this.manifest.exits.find((e) => e.afterBlock === depth);
      const segment = here ? segmentNamed(this.manifest, here.segment) : this.head;
      const output = (await this.call(state, segment, { hidden, attention_bias: floatTensor(this.ort, bias, [1, hidden.dims[1]]) }))[0].data as Float32Array;
      best = { output, confidence: here && here.confidence === "max_prob" ? maxProbability(output) : this.finalConfidence(output), depth };
    }
    return { ...best, cutShort: true };
  }

  // --- decisions ------------------------------------------------------------------------------

  private shouldRestart(state: Run, answer: Answer, tokens: number): boolean {
    if (answer.cutShort || state.precision === "fp32" || answer.depth !== this.blocks.length || !this.restartLevel) return false;
    const threshold = restartThreshold(this.restartLevel, tokens);
    if (threshold === null) return true;
    if (answer.confidence === null || answer.confidence >= threshold) return false;
    if (this.latencyMs === null || this.blockCostMs === null) return this.latencyMs === null;
    return performance.now() - state.started + this.blockCostMs * this.blocks.length <= this.latencyMs;
  }

  private wouldOverrun(state: Run): boolean {
    if (this.blockCostMs === null) return false;
    return performance.now() - state.started + this.blockCostMs > this.latencyMs!;
  }

  private finalConfidence(output: Float32Array): number | null {
    return this.manifest.task === "text-classification" ? maxProbability(output) : null;
  }

  // --- plumbing -------------------------------------------------------------------------------

  private async call(state: Run, segment: Segment, feeds: Record<string, Ort.Tensor>): Promise<Ort.Tensor[]> {
    const graph = await this.open(segment, state.precision);
    const out = await graph.run(pick(feeds, segment.inputs));
    state.segments.push(segment.name);
    return graph.outputNames.map((name) => out[name]);
  }

  private result(state: Run, encoded: Encoded, answer: Answer): Result {
    const trace: Trace = {
      segments: state.segments, tokensPerBlock: state.tokens, exitAfterBlock: answer.depth, restarts: state.restarts,
      precision: state.precision, precisionRequested: this.policy.precision, levelUsed: this.level?.agreement ?? null,
      deadlineCut: answer.cutShort ?? false, truncated: encoded.truncated, totalMs: performance.now() - state.started,
    };
    if (this.manifest.task === "text-classification") {
      const probabilities = softmax(answer.output);
      const best = probabilities.indexOf(Math.max(...probabilities));
      const labels = this.manifest.labels ?? probabilities.map((_, i) => String(i));
      return { label: labels[best], probabilities, embedding: null, confidence: answer.confidence, trace };
    }
    return { label: null, probabilities: null, embedding: Float32Array.from(answer.output), confidence: answer.confidence, trace };
  }
}

function floatTensor(ort: OrtModule, data: Float32Array, dims: number[]): Ort.Tensor {
  return new ort.Tensor("float32", data, dims);
}
