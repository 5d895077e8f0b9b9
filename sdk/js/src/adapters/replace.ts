/**
 * Crash-safe file replacement over phone file APIs whose `move` may refuse an existing target
 * (iOS `moveItemAtPath`) and which offer no fsync: the React Native adapters share it.
 *
 * The new contents go to `<path>.tmp`, are renamed to `<path>.new` (only ever a complete file),
 * the old file is removed and `.new` moved into place. A crash leaves `path`, or `path.new`
 * complete: {@link recoverReplaced} finishes the move before `path` is read.
 */

/** The four file operations replacement needs, on absolute paths. */
export interface ReplaceOps {
  exists(path: string): Promise<boolean>;
  /** Write the whole file, creating or truncating it. */
  write(path: string, data: Uint8Array): Promise<void>;
  /** Move to a target that does not exist. */
  move(from: string, to: string): Promise<void>;
  remove(path: string): Promise<void>;
}

export const TEMP_SUFFIX = ".tmp";
export const COMPLETE_SUFFIX = ".new";

/** Replace `path` with `data` so that a crash leaves the old or the new contents (after recovery). */
export async function replaceFile(ops: ReplaceOps, path: string, data: Uint8Array): Promise<void> {
  const temp = path + TEMP_SUFFIX;
  const complete = path + COMPLETE_SUFFIX;
  await ops.write(temp, data);
  if (await ops.exists(complete)) await ops.remove(complete);
  await ops.move(temp, complete);
  await moveOver(ops, complete, path);
}

/** Move `from` to `to`, replacing `to` (removed first: a crash in between leaves only `from`). */
export async function moveOver(ops: ReplaceOps, from: string, to: string): Promise<void> {
  if (await ops.exists(to)) await ops.remove(to);
  await ops.move(from, to);
}

/**
 * Finish a replacement a crash interrupted: when `path` is missing and `path.new` (complete)
 * exists, move it into place. True when `path` exists afterwards.
 */
export async function recoverReplaced(ops: ReplaceOps, path: string): Promise<boolean> {
  if (await ops.exists(path)) return true;
  const complete = path + COMPLETE_SUFFIX;
  if (!(await ops.exists(complete))) return false;
  await ops.move(complete, path);
  return true;
}

/** `root/relative` after refusing absolute paths and `..` segments (a path must stay under root). */
export function joinUnder(root: string, relative: string): string {
  const parts = relative.split("/").filter((p) => p !== "" && p !== ".");
  if (relative.startsWith("/") || parts.includes("..")) {
    throw new RangeError(`path ${relative} leaves the storage root`);
  }
  return parts.length ? `${root.replace(/\/+$/, "")}/${parts.join("/")}` : root.replace(/\/+$/, "");
}

/** The directory part of an absolute `/`-separated path. */
export function parentOf(path: string): string {
  return path.slice(0, Math.max(path.lastIndexOf("/"), 0));
}
