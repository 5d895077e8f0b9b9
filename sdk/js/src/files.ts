/**
 * JSON files in the app's {@link Storage} (the outbox, the identity records): one reader and
 * one writer, so every record is UTF-8 JSON written atomically.
 */

import type { Storage } from "./adapters.js";
import { utf8Decode, utf8Encode } from "./bytes.js";

/** The file's JSON value; undefined when it does not exist, `corrupt` when it is not UTF-8 JSON. Read errors propagate. */
export async function readJson(storage: Storage, path: string, corrupt?: unknown): Promise<unknown> {
  const bytes = await storage.read(path);
  if (bytes === null) return undefined;
  try {
    return JSON.parse(utf8Decode(bytes));
  } catch {
    return corrupt;
  }
}

/** Replace the file with `value` as JSON, atomically. */
export function writeJson(storage: Storage, path: string, value: unknown): Promise<void> {
  return storage.writeAtomic(path, utf8Encode(JSON.stringify(value)));
}
