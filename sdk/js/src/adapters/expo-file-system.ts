/**
 * {@link Storage} over `expo-file-system` (its `File` / `Directory` API, SDK 54 and later),
 * which the app passes in (the SDK never imports it):
 *
 *   import * as FileSystem from "expo-file-system";
 *   import { ExpoFileStorage } from "@edgeship/device/expo-file-system";
 *   const storage = new ExpoFileStorage(FileSystem, new FileSystem.Directory(FileSystem.Paths.document, "edgeship").uri);
 *
 * Bytes are `Uint8Array`s (no base64), range reads and appends go through a `FileHandle`,
 * hashing through the native `digest("SHA-256")`. No fsync: replacement goes through
 * `replace.ts` (crash-safe after recovery). Type-checked against the package's published types;
 * run in tests against an in-memory fake of its API, not on a phone.
 */

import type * as ExpoFileSystemModule from "expo-file-system";

import type { AppendHandle, Storage } from "../adapters.js";
import { joinUnder, moveOver, parentOf, recoverReplaced, replaceFile, type ReplaceOps } from "./replace.js";

/** The parts of `expo-file-system` this adapter uses (its published types). */
export type ExpoFileSystem = Pick<typeof ExpoFileSystemModule, "File" | "Directory" | "FileMode">;

export class ExpoFileStorage implements Storage {
  private readonly ops: ReplaceOps;

  /** @param rootUri a directory URI private to the app (`file:///…`), e.g. under `Paths.document` */
  constructor(private readonly fs: ExpoFileSystem, readonly rootUri: string) {
    this.ops = {
      exists: async (uri) => new fs.File(uri).exists,
      write: async (uri, data) => {
        this.makeParent(uri);
        const file = new fs.File(uri);
        file.create({ overwrite: true });
        await file.write(data);
      },
      move: (from, to) => new fs.File(from).move(new fs.File(to)),
      remove: async (uri) => new fs.File(uri).delete(),
    };
  }

  private uri(relative: string): string {
    return joinUnder(this.rootUri, relative);
  }

  private makeParent(uri: string): void {
    new this.fs.Directory(parentOf(uri)).create({ intermediates: true, idempotent: true });
  }

  /** A plain path (no `file://`) for runtimes that open model files by path. */
  localPath(relative: string): string {
    return decodeURIComponent(this.uri(relative).replace(/^file:\/\//, ""));
  }

  async read(relative: string): Promise<Uint8Array | null> {
    const uri = this.uri(relative);
    if (!(await recoverReplaced(this.ops, uri))) return null;
    return new this.fs.File(uri).bytes();
  }

  async readRange(relative: string, offset: number, length: number): Promise<Uint8Array> {
    const handle = new this.fs.File(this.uri(relative)).open(this.fs.FileMode.ReadOnly);
    try {
      handle.offset = offset;
      return await handle.readBytes(length);
    } finally {
      handle.close();
    }
  }

  async size(relative: string): Promise<number | null> {
    return (await this.info(relative))?.size ?? null;
  }

  async mtimeMs(relative: string): Promise<number | null> {
    return (await this.info(relative))?.modificationTime ?? null;
  }

  private async info(relative: string) {
    const uri = this.uri(relative);
    if (!(await recoverReplaced(this.ops, uri))) return null;
    const info = new this.fs.File(uri).info();
    return info.exists ? info : null;
  }

  async writeAtomic(relative: string, data: Uint8Array): Promise<void> {
    return replaceFile(this.ops, this.uri(relative), data);
  }

  async openAppend(relative: string, truncate: boolean): Promise<AppendHandle> {
    const uri = this.uri(relative);
    if (truncate || !(await this.ops.exists(uri))) await this.ops.write(uri, new Uint8Array(0));
    const handle = new this.fs.File(uri).open(this.fs.FileMode.Append);
    return {
      write: (data) => handle.writeBytes(data),
      sync: async () => {}, // no fsync in expo-file-system; the download is hashed before use
      close: async () => handle.close(),
    };
  }

  async rename(from: string, to: string): Promise<void> {
    const target = this.uri(to);
    this.makeParent(target);
    await moveOver(this.ops, this.uri(from), target);
  }

  async remove(relative: string): Promise<void> {
    const uri = this.uri(relative);
    if (await this.ops.exists(uri)) await this.ops.remove(uri);
  }

  async list(dir: string): Promise<string[]> {
    const directory = new this.fs.Directory(this.uri(dir));
    return directory.exists ? directory.list().map((entry) => entry.name) : [];
  }

  /** Native sha256 (hex) of the whole file. */
  async sha256(relative: string): Promise<string> {
    return (await new this.fs.File(this.uri(relative)).digest("SHA-256")).toLowerCase();
  }
}
