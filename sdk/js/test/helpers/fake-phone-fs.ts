/**
 * In-memory fakes of the phone file APIs the React Native adapters take: `react-native-fs` and
 * `expo-file-system`'s File / Directory, over one {@link FakeDisk}. They behave like the
 * libraries where it matters to the adapters: base64 across the "bridge" for react-native-fs,
 * a `moveFile` / `move` that refuses an existing target (iOS), missing files are errors. The
 * disk can "crash" after N mutations, to check what a restart finds.
 */

import { base64DecodeStrict, base64Encode, concatBytes, sha256Hex } from "../../src/bytes.js";
import type { ExpoFileSystem } from "../../src/adapters/expo-file-system.js";
import type { ReactNativeFs } from "../../src/adapters/react-native-fs.js";

export class Crash extends Error {}

export class FakeDisk {
  readonly files = new Map<string, { data: Uint8Array; mtimeMs: number }>();
  readonly dirs = new Set<string>(["/"]);
  nowMs = 1_700_000_000_000;
  private mutationsLeft = Infinity;

  /** Every mutation after the next `n` throws {@link Crash} without happening. */
  crashAfter(n: number): void {
    this.mutationsLeft = n;
  }

  private mutate(): void {
    if (this.mutationsLeft <= 0) throw new Crash("the disk crashed");
    this.mutationsLeft -= 1;
  }

  file(path: string): Uint8Array {
    const found = this.files.get(path);
    if (found === undefined) throw new Error(`ENOENT: no such file ${path}`);
    return found.data;
  }

  exists(path: string): boolean {
    return this.files.has(path) || this.dirs.has(path);
  }

  put(path: string, data: Uint8Array): void {
    this.mutate();
    const parent = path.slice(0, path.lastIndexOf("/")) || "/";
    if (!this.dirs.has(parent)) throw new Error(`ENOENT: no directory ${parent}`);
    this.files.set(path, { data, mtimeMs: (this.nowMs += 1000) });
  }

  mkdirs(path: string): void {
    this.mutate();
    const parts = path.split("/").filter(Boolean);
    for (let i = 1; i <= parts.length; i++) this.dirs.add(`/${parts.slice(0, i).join("/")}`);
  }

  move(from: string, to: string): void {
    const data = this.file(from);
    if (this.exists(to)) throw new Error(`EEXIST: ${to} exists (iOS moveItemAtPath)`);
    this.mutate();
    this.files.set(to, { data, mtimeMs: this.files.get(from)!.mtimeMs });
    this.files.delete(from);
  }

  unlink(path: string): void {
    this.file(path);
    this.mutate();
    this.files.delete(path);
  }

  list(dir: string): string[] {
    if (!this.dirs.has(dir)) throw new Error(`ENOENT: no directory ${dir}`);
    const names = [...this.files.keys(), ...this.dirs].filter((p) => p !== dir && p.slice(0, p.lastIndexOf("/")) === dir);
    return names.map((p) => p.slice(dir.length + 1));
  }
}

/** The react-native-fs functions the adapter calls, over `disk`. */
export function fakeReactNativeFs(disk: FakeDisk): ReactNativeFs & { bridgedBytes: number } {
  const bridge = (text: string) => {
    api.bridgedBytes += text.length;
    return text;
  };
  const api = {
    bridgedBytes: 0,
    exists: async (p: string) => disk.exists(p),
    readFile: async (p: string, encoding?: unknown) => {
      expectBase64(encoding);
      return bridge(base64Encode(disk.file(p)));
    },
    read: async (p: string, length = 0, position = 0, encoding?: unknown) => {
      expectBase64(encoding);
      const data = disk.file(p);
      return bridge(base64Encode(data.subarray(position, length ? position + length : data.length)));
    },
    writeFile: async (p: string, contents: string, encoding?: unknown) => {
      expectBase64(encoding);
      disk.put(p, base64DecodeStrict(bridge(contents)));
    },
    appendFile: async (p: string, contents: string, encoding?: string) => {
      expectBase64(encoding);
      const before = disk.files.get(p)?.data ?? new Uint8Array(0);
      disk.put(p, concatBytes([before, base64DecodeStrict(bridge(contents))]));
    },
    moveFile: async (from: string, to: string) => disk.move(from, to),
    unlink: async (p: string) => disk.unlink(p),
    mkdir: async (p: string) => disk.mkdirs(p),
    readdir: async (p: string) => disk.list(p),
    hash: async (p: string, algorithm: string) => {
      if (algorithm !== "sha256") throw new Error(`unexpected algorithm ${algorithm}`);
      return sha256Hex(disk.file(p)).toUpperCase(); // case varies by platform: the adapter lowercases
    },
    stat: async (p: string) => {
      const found = disk.files.get(p);
      if (found === undefined) throw new Error(`ENOENT: ${p}`);
      // the library returns Dates although its types say numbers
      const mtime = new Date(found.mtimeMs) as unknown as number;
      return { name: p.slice(p.lastIndexOf("/") + 1), path: p, size: found.data.length, mode: 0o600, ctime: mtime,
        mtime, originalFilepath: p, isFile: () => true, isDirectory: () => false };
    },
  };
  return api;
}

function expectBase64(encoding: unknown): void {
  if (encoding !== "base64") throw new Error(`the adapter must move bytes as base64, not ${String(encoding)}`);
}

const PREFIX = "file://";

/** `expo-file-system`'s File, Directory and FileMode as far as the adapter uses them, over `disk`. */
export function fakeExpoFileSystem(disk: FakeDisk): ExpoFileSystem {
  const pathOf = (uri: string) => {
    if (!uri.startsWith(PREFIX)) throw new Error(`not a file:// URI: ${uri}`);
    return decodeURIComponent(uri.slice(PREFIX.length));
  };

  class File {
    readonly path: string;
    constructor(readonly uri: string) {
      this.path = pathOf(uri);
    }
    get name() {
      return this.path.slice(this.path.lastIndexOf("/") + 1);
    }
    get exists() {
      return disk.files.has(this.path);
    }
    create(options: { overwrite?: boolean } = {}) {
      if (this.exists && !options.overwrite) throw new Error(`${this.uri} exists`);
      disk.put(this.path, new Uint8Array(0));
    }
    async write(content: Uint8Array) {
      disk.put(this.path, content.slice());
    }
    async bytes() {
      return disk.file(this.path).slice();
    }
    info() {
      const found = disk.files.get(this.path);
      return found ? { exists: true, uri: this.uri, size: found.data.length, modificationTime: found.mtimeMs } : { exists: false };
    }
    async move(destination: File) {
      disk.move(this.path, destination.path);
    }
    delete() {
      disk.unlink(this.path);
    }
    async digest(algorithm: string) {
      if (algorithm !== "SHA-256") throw new Error(`unexpected algorithm ${algorithm}`);
      return sha256Hex(disk.file(this.path));
    }
    open(mode: string) {
      const path = this.path;
      disk.file(path);
      let offset: number | null = mode === "wa" ? disk.file(path).length : 0;
      return {
        get offset() {
          return offset;
        },
        set offset(value: number | null) {
          offset = value;
        },
        async readBytes(length: number) {
          const data = disk.file(path);
          const out = data.slice(offset!, offset! + length);
          offset! += out.length;
          return out;
        },
        async writeBytes(bytes: Uint8Array) {
          if (mode !== "wa") throw new Error("opened read-only");
          disk.put(path, concatBytes([disk.file(path), bytes]));
          offset = disk.file(path).length;
        },
        close() {
          offset = null;
        },
      };
    }
  }

  class Directory {
    readonly path: string;
    constructor(readonly uri: string) {
      this.path = pathOf(uri);
    }
    get exists() {
      return disk.dirs.has(this.path);
    }
    create(options: { intermediates?: boolean; idempotent?: boolean } = {}) {
      if (this.exists && options.idempotent) return;
      if (!options.intermediates) throw new Error("the fake expects intermediates: true");
      disk.mkdirs(this.path);
    }
    list() {
      return disk.list(this.path).map((name) => ({ name }));
    }
  }

  // structural fakes: the adapter's calls are checked against the real types in src/, not here
  return { File, Directory, FileMode: { ReadOnly: "r", Append: "wa" } } as unknown as ExpoFileSystem;
}
