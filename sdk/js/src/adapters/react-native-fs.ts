/**
 * {@link Storage} over `react-native-fs`, which the app passes in (the SDK never imports it):
 *
 *   import RNFS from "react-native-fs";
 *   import { ReactNativeFsStorage } from "@edgeship/device/react-native-fs";
 *   const storage = new ReactNativeFsStorage(RNFS, `${RNFS.DocumentDirectoryPath}/edgeship`);
 *
 * Bytes cross the bridge as base64. react-native-fs has no fsync and its iOS `moveFile` refuses
 * an existing target, so replacement goes through `replace.ts` (crash-safe after recovery, not
 * durable against power loss). Type-checked against the package's published types; run in
 * tests against an in-memory fake of its API, not on a phone.
 */

import type * as RNFSModule from "react-native-fs";

import type { AppendHandle, Storage } from "../adapters.js";
import { base64DecodeStrict, base64Encode } from "../bytes.js";
import { joinUnder, moveOver, parentOf, recoverReplaced, replaceFile, type ReplaceOps } from "./replace.js";

/** The functions of `react-native-fs` this adapter calls (its published signatures). */
export type ReactNativeFs = Pick<typeof RNFSModule, "exists" | "readFile" | "read" | "writeFile" | "appendFile" |
  "moveFile" | "unlink" | "stat" | "readdir" | "mkdir" | "hash">;

export class ReactNativeFsStorage implements Storage {
  private readonly ops: ReplaceOps;

  /** @param root an absolute directory private to the app, e.g. `${RNFS.DocumentDirectoryPath}/edgeship` */
  constructor(private readonly fs: ReactNativeFs, readonly root: string) {
    this.ops = {
      exists: (p) => fs.exists(p),
      write: async (p, data) => {
        await fs.mkdir(parentOf(p));
        await fs.writeFile(p, base64Encode(data), "base64");
      },
      move: (from, to) => fs.moveFile(from, to),
      remove: (p) => fs.unlink(p),
    };
  }

  localPath(relative: string): string {
    return joinUnder(this.root, relative);
  }

  async read(relative: string): Promise<Uint8Array | null> {
    const path = this.localPath(relative);
    if (!(await recoverReplaced(this.ops, path))) return null;
    return base64DecodeStrict(await this.fs.readFile(path, "base64"));
  }

  async readRange(relative: string, offset: number, length: number): Promise<Uint8Array> {
    if (length <= 0) return new Uint8Array(0);
    // read() with length 0 would mean "to the end": never passed 0 (handled above)
    return base64DecodeStrict(await this.fs.read(this.localPath(relative), length, offset, "base64"));
  }

  async size(relative: string): Promise<number | null> {
    const path = this.localPath(relative);
    if (!(await recoverReplaced(this.ops, path))) return null;
    return Number((await this.fs.stat(path)).size);
  }

  async mtimeMs(relative: string): Promise<number | null> {
    const path = this.localPath(relative);
    if (!(await recoverReplaced(this.ops, path))) return null;
    // typed as a number, returned as a Date by the library: Date() takes both
    return new Date((await this.fs.stat(path)).mtime).getTime();
  }

  async writeAtomic(relative: string, data: Uint8Array): Promise<void> {
    return replaceFile(this.ops, this.localPath(relative), data);
  }

  async openAppend(relative: string, truncate: boolean): Promise<AppendHandle> {
    const path = this.localPath(relative);
    if (truncate || !(await this.fs.exists(path))) await this.ops.write(path, new Uint8Array(0));
    return {
      write: (data) => this.fs.appendFile(path, base64Encode(data), "base64"),
      sync: async () => {}, // no fsync in react-native-fs; the download is hashed before use
      close: async () => {},
    };
  }

  async rename(from: string, to: string): Promise<void> {
    const target = this.localPath(to);
    await this.fs.mkdir(parentOf(target));
    await moveOver(this.ops, this.localPath(from), target);
  }

  async remove(relative: string): Promise<void> {
    const path = this.localPath(relative);
    if (await this.fs.exists(path)) await this.fs.unlink(path);
  }

  async list(dir: string): Promise<string[]> {
    const path = this.localPath(dir);
    return (await this.fs.exists(path)) ? this.fs.readdir(path) : [];
  }

  /** Native sha256 (hex): the model file is not copied through the bridge to be hashed. */
  sha256(relative: string): Promise<string> {
    return this.fs.hash(this.localPath(relative), "sha256").then((hex) => hex.toLowerCase());
  }
}
