/** Text to ids with the package's own tokenizer.json, as the Python runtime does: no padding, the
 * tokenizer's own special tokens, truncation to the package's max_length (content cut, specials kept). */

import { Tokenizer } from "@huggingface/tokenizers";
import { InputError } from "./errors.js";
import type { Manifest } from "./manifest.js";

export const MAX_TEXT_CHARACTERS = 1_000_000;

export interface Encoded { ids: number[]; typeIds: number[]; special: boolean[]; truncated: boolean }

export class TextEncoder {
  private readonly tokenizer: Tokenizer;
  private readonly prefix: number[];
  private readonly suffix: number[];
  private readonly specials: Set<number>;

  constructor(tokenizerJson: object, private readonly maxLength: number, specialIds: number[]) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    this.specials = new Set(specialIds);
    // where the post-processor puts its special tokens around one sequence
    const probe = this.tokenizer.encode("a").ids;
    const content = this.tokenizer.encode("a", { add_special_tokens: false }).ids;
    const at = indexOf(probe, content);
    this.prefix = at < 0 ? [] : probe.slice(0, at);
    this.suffix = at < 0 ? [] : probe.slice(at + content.length);
  }

  static fromManifest(tokenizerJson: object, manifest: Manifest): TextEncoder {
    return new TextEncoder(tokenizerJson, manifest.tokenizer.maxLength, manifest.tokenizer.specialIds);
  }

  encode(text: string): Encoded {
    checkText(text);
    let ids = this.tokenizer.encode(text).ids;
    let truncated = false;
    if (ids.length > this.maxLength) {
      const content = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
      const room = Math.max(0, this.maxLength - this.prefix.length - this.suffix.length);
      ids = [...this.prefix, ...content.slice(0, room), ...this.suffix];
      truncated = true;
    }
    return { ids, typeIds: ids.map(() => 0), special: ids.map((id: number) => this.specials.has(id)), truncated };
  }
}

export function checkText(text: unknown, index = 0): asserts text is string {
  if (typeof text !== "string") throw new InputError(`input ${index} is a ${typeof text}, not a string`);
  if (!text.trim()) throw new InputError(`input ${index} is empty; pass text with at least one visible character`);
  if (text.length > MAX_TEXT_CHARACTERS) {
    throw new InputError(`input ${index} has ${text.length} characters, over the ${MAX_TEXT_CHARACTERS} limit; split or shorten it`);
  }
  if (!text.isWellFormed()) throw new InputError(`input ${index} is not valid Unicode (a lone surrogate); fix the text first`);
}

function indexOf(haystack: number[], needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
