/** Where a package's bytes come from: a folder (Node) or a URL (browsers, or Node with fetch). */

import { PackageError } from "./errors.js";

export interface PackageSource {
  /** What to show in messages. */
  readonly name: string;
  read(path: string): Promise<Uint8Array>;
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
    async read(path: string) {
      try {
        return new Uint8Array(await fs.readFile(nodePath.join(root, path)));
      } catch (err) {
        throw new PackageError(`${nodePath.join(root, path)} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"}); the package is incomplete`);
      }
    },
    localPath: (path: string) => nodePath.join(root, path),
  };
}

function urlSource(base: string): PackageSource {
  const root = base.endsWith("/") ? base : `${base}/`;
  return {
    name: root,
    async read(path: string) {
      const response = await fetch(new URL(path, root));
      if (!response.ok) throw new PackageError(`${new URL(path, root)} answered ${response.status}; the package is incomplete`);
      return new Uint8Array(await response.arrayBuffer());
    },
    localPath: () => null,
  };
}
