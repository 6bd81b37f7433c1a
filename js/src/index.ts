/** edgeinfer for JavaScript: load an edge package and run it adaptively with onnxruntime.
 *
 *   const session = await load("s.edge", { policy: { agreement: 0.99 } });
 *   const result = await session.run("a gorgeous, witty, seductive movie.");
 *
 * In Node the graphs run on onnxruntime-node; in a browser pass `ort` (onnxruntime-web). */

import type * as Ort from "onnxruntime-common";
import { InputError, PackageError } from "./errors.js";
import { parseManifest, type Segment } from "./manifest.js";
import { checkBudget, resolvePolicy, type Budget, type Policy } from "./policy.js";
import { EdgeSession, type OrtModule } from "./session.js";
import { FileTooLarge, sourceOf } from "./source.js";
import { TextEncoder } from "./tokenize.js";
import { checkExternalData, checkFile, checkListing, confined, externalLocations } from "./verify.js";

export { EdgeInferError, InputError, PackageError } from "./errors.js";
export type { Policy, Budget } from "./policy.js";
export type { Result, Trace } from "./session.js";
export { EdgeSession } from "./session.js";
export { openIndex, SearchIndex, type Gate, type Hits } from "./search.js";

export interface LoadOptions {
  policy?: Policy;
  budget?: Budget;
  /** Intra-op threads (onnxruntime-node; the web backend takes its own env settings). */
  threads?: number;
  /** The onnxruntime module: onnxruntime-node by default in Node; pass onnxruntime-web in browsers. */
  ort?: OrtModule;
  /** An Ed25519 public key (PEM text): refuse the package unless manifest.sig is its signature. */
  verifyKey?: string;
}

export async function load(location: string | URL, options: LoadOptions = {}): Promise<EdgeSession> {
  const policy = resolvePolicy(options.policy);
  const latencyMs = checkBudget(options.budget);
  const threads = options.threads ?? 2;
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) throw new InputError(`threads ${threads} must be a whole number from 1 to 256`);
  const ort = options.ort ?? ((await import("onnxruntime-node")) as unknown as OrtModule);
  const source = await sourceOf(location);
  const manifestBytes = await source.read("manifest.json", MAX_MANIFEST_BYTES);
  if (options.verifyKey !== undefined) await verifySignature(manifestBytes, await source.read("manifest.sig", SIGNATURE_BYTES).catch((err) => {
    if (err instanceof FileTooLarge) throw err;
    throw new PackageError("package is not signed (manifest.sig missing) but a verifyKey was given; refusing it");
  }), options.verifyKey);
  const manifest = parseManifest(new globalThis.TextDecoder().decode(manifestBytes));
  checkListing(manifest);
  const entries = new Map(manifest.files.map((f) => [f.path, f]));
  const verified = new Map<string, Uint8Array>();
  const bytesOf = async (path: string): Promise<Uint8Array> => {
    const entry = entries.get(confined(path, "a package path"));
    if (!entry) throw new PackageError(`${path} is not listed in the manifest; refusing it`);
    let bytes = verified.get(path);
    if (!bytes) {
      bytes = await source.read(path);
      await checkFile(entry, bytes);
      verified.set(path, bytes);
    }
    return bytes;
  };
  const tokenizerJson = JSON.parse(new globalThis.TextDecoder().decode(await bytesOf(manifest.tokenizer.path)));
  const encoder = TextEncoder.fromManifest(tokenizerJson, manifest);
  const sessions = new Map<string, Promise<Ort.InferenceSession>>();
  const open = (segment: Segment, precision: string): Promise<Ort.InferenceSession> => {
    const variant = segment.variants.find((v) => v.precision === precision);
    if (!variant) throw new PackageError(`segment ${segment.name} has no ${precision} graph; re-export or quantize the package`);
    let opened = sessions.get(variant.path);
    if (!opened) {
      opened = openGraph(ort, variant.path, bytesOf, manifest, threads);
      sessions.set(variant.path, opened);
    }
    return opened;
  };
  const session = new EdgeSession(manifest, policy, encoder, ort, open, latencyMs);
  await session.prepare();
  return session;
}

const MAX_MANIFEST_BYTES = 8 * 1024 * 1024;  // as the Python runtime
const SIGNATURE_BYTES = 64;  // an Ed25519 signature; anything larger is refused before it is read

async function verifySignature(manifest: Uint8Array, signature: Uint8Array, pem: string): Promise<void> {
  if (typeof pem !== "string" || !pem.includes("BEGIN PUBLIC KEY")) throw new InputError("verifyKey takes an Ed25519 public key as PEM text");
  let valid: boolean;
  try {
    if (typeof window === "undefined") {
      const crypto = await import("node:crypto");
      valid = crypto.verify(null, manifest, crypto.createPublicKey(pem), signature);
    } else {
      const der = Uint8Array.from(atob(pem.replace(/-----[^-]+-----|\s/g, "")), (c) => c.charCodeAt(0));
      const key = await crypto.subtle.importKey("spki", der, { name: "Ed25519" }, false, ["verify"]);
      valid = await crypto.subtle.verify({ name: "Ed25519" }, key, signature as Uint8Array<ArrayBuffer>, manifest as Uint8Array<ArrayBuffer>);
    }
  } catch (err) {
    throw new InputError(`verifyKey is not a usable Ed25519 public key (${(err as Error).message})`);
  }
  if (!valid) throw new PackageError("package signature does not match this key; it was not published by the key's owner or was changed after signing");
}

async function openGraph(ort: OrtModule, path: string, bytesOf: (p: string) => Promise<Uint8Array>,
                         manifest: ReturnType<typeof parseManifest>, threads: number): Promise<Ort.InferenceSession> {
  const graph = await bytesOf(path);
  checkExternalData(path, graph, manifest);
  const folder = path.includes("/") ? path.slice(0, path.lastIndexOf("/") + 1) : "";
  const externalData = [];
  for (const location of externalLocations(graph)) {
    externalData.push({ path: location, data: await bytesOf(folder + location) });  // verified before use
  }
  const options: Ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: "all", intraOpNumThreads: threads, interOpNumThreads: 1,
    executionMode: "sequential", externalData,
    // threads stop spinning when a run ends: idle spinning would starve the next graph's run
    extra: { session: { force_spinning_stop: "1" } },
  };
  try {
    return await ort.InferenceSession.create(graph, options);
  } catch (err) {
    throw new PackageError(`onnxruntime cannot open ${path} (${String((err as Error).message).split("\n")[0]}); re-export the package`);
  }
}

