/**
 * Node implementations of the platform adapters: files under one directory, a credential file
 * (mode 0600), and what the host says about itself. `import { nodePlatform } from
 * "@edgeship/device/node"`.
 */

import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import type { AppendHandle, SecureStore, Storage } from "../adapters.js";
import type { DeviceInfo } from "../options.js";

/** Files under `root`, every replacement atomic and durable (temp file, fsync, rename, directory fsync). */
export class NodeStorage implements Storage {
  constructor(readonly root: string) {}

  private abs(relative: string): string {
    const full = path.resolve(this.root, relative);
    if (full !== this.root && !full.startsWith(this.root.endsWith(path.sep) ? this.root : this.root + path.sep)) {
      throw new RangeError(`path ${relative} leaves the storage root`);
    }
    return full;
  }

  localPath(relative: string): string {
    return this.abs(relative);
  }

  async read(relative: string): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await fs.readFile(this.abs(relative)));
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
  }

  async readRange(relative: string, offset: number, length: number): Promise<Uint8Array> {
    const file = await fs.open(this.abs(relative), "r");
    try {
      const buffer = new Uint8Array(length);
      const { bytesRead } = await file.read(buffer, 0, length, offset);
      return buffer.subarray(0, bytesRead);
    } finally {
      await file.close();
    }
  }

  async size(relative: string): Promise<number | null> {
    return (await this.stat(relative))?.size ?? null;
  }

  async mtimeMs(relative: string): Promise<number | null> {
    return (await this.stat(relative))?.mtimeMs ?? null;
  }

  async writeAtomic(relative: string, data: Uint8Array): Promise<void> {
    const target = this.abs(relative);
    await fs.mkdir(path.dirname(target), { recursive: true });
    const temp = path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(6).toString("hex")}.tmp`);
    const file = await fs.open(temp, "wx", 0o600);
    try {
      await file.writeFile(data);
      await file.sync();
    } catch (err) {
      await file.close();
      await fs.rm(temp, { force: true });
      throw err;
    }
    await file.close();
    await fs.rename(temp, target);
    await syncDirectory(path.dirname(target));
  }

  async openAppend(relative: string, truncate: boolean): Promise<AppendHandle> {
    const target = this.abs(relative);
    await fs.mkdir(path.dirname(target), { recursive: true });
    const file = await fs.open(target, truncate ? "w" : "a", 0o600);
    return {
      write: async (data) => {
        await file.write(data);
      },
      sync: () => file.sync(),
      close: () => file.close(),
    };
  }

  async rename(from: string, to: string): Promise<void> {
    const target = this.abs(to);
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.rename(this.abs(from), target);
    await syncDirectory(path.dirname(target));
  }

  async remove(relative: string): Promise<void> {
    await fs.rm(this.abs(relative), { force: true });
  }

  async list(dir: string): Promise<string[]> {
    try {
      return await fs.readdir(this.abs(dir));
    } catch (err) {
      if (isMissing(err)) return [];
      throw err;
    }
  }

  private async stat(relative: string) {
    try {
      return await fs.stat(this.abs(relative));
    } catch (err) {
      if (isMissing(err)) return null;
      throw err;
    }
  }
}

/**
 * The credential in a file readable only by this user (mode 0600). For servers and tests; on a
 * phone use the Keychain / Keystore (docs/phones.md).
 */
export class NodeFileSecureStore implements SecureStore {
  constructor(private readonly storage: NodeStorage, private readonly dir = "secure") {}

  private file(key: string): string {
    if (!/^[A-Za-z0-9._-]+$/.test(key)) throw new RangeError(`secure store key ${key} is not a plain name`);
    return `${this.dir}/${key}`;
  }

  async get(key: string): Promise<string | null> {
    const bytes = await this.storage.read(this.file(key));
    return bytes === null ? null : Buffer.from(bytes).toString("utf8");
  }

  set(key: string, value: string): Promise<void> {
    return this.storage.writeAtomic(this.file(key), new Uint8Array(Buffer.from(value, "utf8")));
  }

  remove(key: string): Promise<void> {
    return this.storage.remove(this.file(key));
  }
}

/** This host as a device: `linux-x86_64`-style class (unless given), arch, OS and RAM. */
export function nodeDevice(deviceClass?: string): DeviceInfo {
  const arch = { x64: "x86_64", arm64: "aarch64", ia32: "i686" }[os.arch() as string] ?? os.arch();
  return {
    deviceClass: deviceClass ?? `${os.platform()}-${arch}`.toLowerCase().replace(/[^a-z0-9_-]/g, "-").slice(0, 32),
    arch,
    os: `${os.type()} ${os.release()}`.slice(0, 64),
    ramBytes: os.totalmem(),
  };
}

/** The process' peak resident memory (`maxRSS`), in bytes. */
export function nodePeakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/** Storage, a credential file and device facts for a Node process keeping its state in `dir`. */
export function nodePlatform(dir: string, deviceClass?: string) {
  const storage = new NodeStorage(path.resolve(dir));
  return { storage, secureStore: new NodeFileSecureStore(storage), device: nodeDevice(deviceClass),
    peakRssBytes: nodePeakRssBytes };
}

async function syncDirectory(dir: string): Promise<void> {
  let handle;
  try {
    handle = await fs.open(dir, "r");
    await handle.sync();
  } catch {
    // some filesystems refuse fsync on directories; the rename itself happened
  } finally {
    await handle?.close();
  }
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === "ENOENT";
}
