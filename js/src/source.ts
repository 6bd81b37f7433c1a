/** Where a package's bytes come from: a folder (Node) or a URL (browsers, or Node with fetch). */

import { PackageError } from "./errors.js";

export interface PackageSource {
  /** What to show in messages. */
  readonly name: string;
  /** The file's bytes; a file over `limit` bytes is refused before it is read whole. */
  read(path: string, limit?: number): Promise<Uint8Array>;
  /** A file path onnxruntime can open itself (Node), or null where graphs are passed as bytes. */
  localPath(path: string): string | null;
}

export async function sourceOf(location: string | URL): Promise<PackageSource> {
  const text = location.toString();
  if (/^(https?|blob|data):/.test(text) || (typeof window !== "undefined" && !text.startsWith("/"))) {
    return urlSource(text);
  }
  return folderSource(text.startsWith("file:") ? new URL(text).pathname : text);
}

async function folderSource(folder: string): Promise<PackageSource> {
  const fs = await import("node:fs/promises");
  const nodePath = await import("node:path");
  const root = nodePath.resolve(folder);
  try {
    if (!(await fs.stat(root)).isDirectory()) throw new Error("not a folder");
  } catch {
    throw new PackageError(`${folder} is not an edge package folder; export one with \`edgeinfer export\``);
  }
  return {
    name: root,
    async read(path: string, limit?: number) {
      const file = nodePath.join(root, path);
      let size: number;
      try {
        size = (await fs.stat(file)).size;
      } catch (err) {
        throw new PackageError(`${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"}); the package is incomplete`);
      }
      if (limit !== undefined && size > limit) throw tooLarge(file, limit);
      try {
        return new Uint8Array(await fs.readFile(file));
      } catch (err) {
        throw new PackageError(`${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"}); the package is incomplete`);
      }
    },
    localPath: (path: string) => nodePath.join(root, path),
  };
}

function urlSource(base: string): PackageSource {
  const root = base.endsWith("/") ? base : `${base}/`;
  return {
    name: root,
    async read(path: string, limit?: number) {
      const url = new URL(path, root);
      const response = await fetch(url);
      if (!response.ok) throw new PackageError(`${url} answered ${response.status}; the package is incomplete`);
      if (limit === undefined) return new Uint8Array(await response.arrayBuffer());
      if (Number(response.headers.get("content-length") ?? 0) > limit) throw tooLarge(url.toString(), limit);
      return readCapped(response, url.toString(), limit);
    },
    localPath: () => null,
  };
}

/** A package file over the size its kind may have: refused before it is read whole. */
export class FileTooLarge extends PackageError {}

function tooLarge(name: string, limit: number): FileTooLarge {
  return new FileTooLarge(`${name} is larger than ${limit} bytes; refusing it`);
}

/** The body, refused as soon as it passes `limit` bytes (a server may send no Content-Length). */
async function readCapped(response: Response, name: string, limit: number): Promise<Uint8Array> {
  if (response.body === null) return new Uint8Array(0);
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel();
      throw tooLarge(name, limit);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}
