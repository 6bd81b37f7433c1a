/** The error types the runtime raises on purpose, each with a one-line message naming what is wrong
 * and what to do (the same split as the Python runtime's edgeinfer.errors). */

export class EdgeInferError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A package is missing, malformed, tampered with, or of an unsupported version. */
export class PackageError extends EdgeInferError {}

/** An argument or input text is not usable. */
export class InputError extends EdgeInferError {}
