/** The checks a package passes before any graph is opened, as the Python runtime makes them: every
 * listed file's size and sha256, every path confined to the package, and every external-data
 * location a graph names (ONNX had path-traversal bugs through them: CVE-2024-27318/27319) being a
 * file the manifest lists. The protobuf is walked by hand, so no ONNX library is needed. */

import { PackageError } from "./errors.js";
import type { FileEntry, Manifest } from "./manifest.js";

/** A relative path inside the package: no absolute paths, no "..", no backslashes or NUL bytes. */
export function confined(path: string, where: string): string {
  const parts = path.split("/");
  if (!path || path.startsWith("/") || path.includes("\\") || path.includes("\0") || /^[A-Za-z]:/.test(path)
      || parts.some((p) => p === ".." || p === "." || p === "")) {
    throw new PackageError(`${where} ${JSON.stringify(path)} is not a plain path inside the package; refusing it`);
  }
  return path;
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (subtle) {
    const digest = await subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const { createHash } = await import("node:crypto");
  return createHash("sha256").update(bytes).digest("hex");
}

export async function checkFile(entry: FileEntry, bytes: Uint8Array): Promise<void> {
  if (bytes.length !== entry.bytes) {
    throw new PackageError(`${entry.path} is ${bytes.length} bytes, the manifest says ${entry.bytes}; the package is damaged, export it again`);
  }
  if ((await sha256Hex(bytes)) !== entry.sha256) {
    throw new PackageError(`${entry.path} fails its sha256 check; the package is damaged or was altered, export it again`);
  }
}

/** Every graph the manifest names, and every file a graph reads, must be listed (and so checked). */
export function checkListing(manifest: Manifest): void {
  const listed = new Set(manifest.files.map((f) => confined(f.path, "files[].path")));
  for (const segment of manifest.segments) {
    for (const variant of segment.variants) {
      if (!listed.has(confined(variant.path, `segment ${segment.name}`))) {
        throw new PackageError(`segment ${segment.name} names ${variant.path}, which the manifest does not list; re-export the package`);
      }
    }
  }
  if (!listed.has(confined(manifest.tokenizer.path, "tokenizer.path"))) {
    throw new PackageError(`the tokenizer ${manifest.tokenizer.path} is not listed in the manifest; re-export the package`);
  }
}

export function checkExternalData(graphPath: string, bytes: Uint8Array, manifest: Manifest): void {
  const folder = graphPath.includes("/") ? graphPath.slice(0, graphPath.lastIndexOf("/") + 1) : "";
  const listed = new Set(manifest.files.map((f) => f.path));
  for (const location of externalLocations(bytes)) {
    const resolved = folder + confined(location, `${graphPath}: external data location`);
    if (!listed.has(resolved)) {
      throw new PackageError(`${graphPath} reads external data from ${location}, which the manifest does not list; refusing it`);
    }
  }
}

// ONNX field numbers (onnx.proto3): only the fields that can hold tensors are descended into.
const MODEL_GRAPH = 7, MODEL_FUNCTIONS = 25, FUNCTION_NODE = 7;
const GRAPH_NODE = 1, GRAPH_TENSORS = new Set([5]), GRAPH_SPARSE = new Set([15]);
const NODE_ATTRIBUTE = 5;
const ATTRIBUTE_TENSORS = new Set([5, 10]), ATTRIBUTE_GRAPHS = new Set([6, 11]), ATTRIBUTE_SPARSE = new Set([22, 23]);
const TENSOR_EXTERNAL_DATA = 13;
const MAX_DEPTH = 32;

interface Field { number: number; wire: number; value: Uint8Array | null }

function* fields(data: Uint8Array): Generator<Field> {
  let position = 0;
  const varint = (): number => {
    let result = 0, scale = 1;
    for (let shift = 0; shift <= 63; shift += 7) {
      if (position >= data.length) throw new PackageError("graph file is not valid ONNX protobuf (truncated varint)");
      const byte = data[position++];
      result += (byte & 0x7f) * scale;
      scale *= 128;
      if (!(byte & 0x80)) return result;
    }
    throw new PackageError("graph file is not valid ONNX protobuf (varint too long)");
  };
  while (position < data.length) {
    const key = varint();
    const number = Math.floor(key / 8), wire = key % 8;
    if (number === 0) throw new PackageError("graph file is not valid ONNX protobuf (field number 0)");
    let value: Uint8Array | null = null;
    if (wire === 0) varint();
    else if (wire === 1) position += 8;
    else if (wire === 5) position += 4;
    else if (wire === 2) {
      const length = varint();
      if (position + length > data.length) throw new PackageError("graph file is not valid ONNX protobuf (a field runs past the end)");
      value = data.subarray(position, position + length);
      position += length;
    } else throw new PackageError(`graph file is not valid ONNX protobuf (wire type ${wire})`);
    if (position > data.length) throw new PackageError("graph file is not valid ONNX protobuf (truncated)");
    yield { number, wire, value };
  }
}

/** Every `location` an external-data tensor of this model names, subgraphs and functions included. */
export function externalLocations(model: Uint8Array): Set<string> {
  const found = new Set<string>();
  for (const f of fields(model)) {
    if (f.wire !== 2 || !f.value) continue;
    if (f.number === MODEL_GRAPH) graph(f.value, found, 0);
    else if (f.number === MODEL_FUNCTIONS) {
      for (const n of fields(f.value)) if (n.number === FUNCTION_NODE && n.value) node(n.value, found, 0);
    }
  }
  return found;
}

function graph(data: Uint8Array, found: Set<string>, depth: number): void {
  if (depth > MAX_DEPTH) throw new PackageError("graph file nests subgraphs too deeply; refusing it");
  for (const f of fields(data)) {
    if (f.wire !== 2 || !f.value) continue;
    if (f.number === GRAPH_NODE) node(f.value, found, depth);
    else if (GRAPH_TENSORS.has(f.number)) tensor(f.value, found);
    else if (GRAPH_SPARSE.has(f.number)) sparse(f.value, found);
  }
}

function node(data: Uint8Array, found: Set<string>, depth: number): void {
  for (const f of fields(data)) {
    if (f.number !== NODE_ATTRIBUTE || !f.value) continue;
    for (const a of fields(f.value)) {
      if (a.wire !== 2 || !a.value) continue;
      if (ATTRIBUTE_TENSORS.has(a.number)) tensor(a.value, found);
      else if (ATTRIBUTE_GRAPHS.has(a.number)) graph(a.value, found, depth + 1);
      else if (ATTRIBUTE_SPARSE.has(a.number)) sparse(a.value, found);
    }
  }
}

function sparse(data: Uint8Array, found: Set<string>): void {
  for (const f of fields(data)) if ((f.number === 1 || f.number === 2) && f.value) tensor(f.value, found);
}

function tensor(data: Uint8Array, found: Set<string>): void {
  const decoder = new TextDecoder();
  for (const f of fields(data)) {
    if (f.number !== TENSOR_EXTERNAL_DATA || !f.value) continue;
    let key: string | null = null, value: string | null = null;
    for (const e of fields(f.value)) {
      if (e.value && e.number === 1) key = decoder.decode(e.value);
      if (e.value && e.number === 2) value = decoder.decode(e.value);
    }
    if (key === "location" && value !== null) found.add(value);
  }
}
