/**
 * The platform as the SDK sees it: four small interfaces an app (or a test) provides.
 *
 * The core never imports `node:*`, React Native or DOM modules; Node implementations ship in
 * `@edgeship/device/node`, React Native ones are documented in docs/phones.md, tests pass
 * fakes. Paths are `/`-separated and relative to the storage's root.
 */

/** An open file to append to (a download in progress). */
export interface AppendHandle {
  write(data: Uint8Array): Promise<void>;
  /** Flush to stable storage (fsync) before the file is renamed into place. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Files under one private directory of the app. Missing parent directories are created. */
export interface Storage {
  /** The whole file, or null when it does not exist. */
  read(path: string): Promise<Uint8Array | null>;
  /** `length` bytes from `offset` (fewer at the end of the file): hashing large files in pieces. */
  readRange(path: string, offset: number, length: number): Promise<Uint8Array>;
  /** Size in bytes, or null when the file does not exist. */
  size(path: string): Promise<number | null>;
  /** Modification time (unix ms), or null when the file does not exist. */
  mtimeMs(path: string): Promise<number | null>;
  /** Replace the file so that a crash leaves the old or the new contents (temp, fsync, rename). */
  writeAtomic(path: string, data: Uint8Array): Promise<void>;
  /** Open for appending, creating it; `truncate` empties it first. */
  openAppend(path: string, truncate: boolean): Promise<AppendHandle>;
  /** Atomically rename (replacing `to`), durably. */
  rename(from: string, to: string): Promise<void>;
  /** Delete; no error when missing. */
  remove(path: string): Promise<void>;
  /** Names of the files in a directory; [] when it does not exist. */
  list(dir: string): Promise<string[]>;
  /** An absolute path runtimes can open, when the platform has one (else files are passed as bytes). */
  localPath?(path: string): string;
  /** A native sha256 (hex) of the whole file, when the platform has a faster one than JS. */
  sha256?(path: string): Promise<string>;
}

/** One HTTP request. */
export interface HttpRequest {
  method: "GET" | "POST" | "PUT";
  url: string;
  headers: Record<string, string>;
  body?: string;
  /** Longest wait for the answer's headers, and then between two chunks of its body. */
  timeoutMs: number;
  /** GETs follow redirects (the adapter must not forward `Authorization` to another origin); POSTs and PUTs never do. */
  followRedirects: boolean;
}

export interface HttpResponse {
  status: number;
  /** A header's value (case-insensitive name), null when absent. */
  header(name: string): string | null;
  text(): Promise<string>;
  /** The body in chunks, each arriving within the request's `timeoutMs`. */
  chunks(): AsyncIterable<Uint8Array>;
  /** Drop the body unread. */
  cancel(): Promise<void>;
}

/** Sends requests; rejects on network errors and timeouts (any status is a response). */
export interface Http {
  request(request: HttpRequest): Promise<HttpResponse>;
}

/** Time. `nowMs` must stay close to UTC: reports are placed by it on the server's clock. */
export interface Clock {
  /** Unix time in ms. */
  nowMs(): number;
  /** Monotonic ms for intervals and latencies. */
  monotonicMs(): number;
  setTimer(callback: () => void, delayMs: number): unknown;
  clearTimer(handle: unknown): void;
}

/** Where the device credential lives: Keychain / Keystore on phones (expo-secure-store, react-native-keychain). */
export interface SecureStore {
  get(key: string): Promise<string | null>;
  set(key: string, value: string): Promise<void>;
  remove(key: string): Promise<void>;
}

/** The clock of the JS engine; timers do not keep a Node process alive. */
export const systemClock: Clock = {
  nowMs: () => Date.now(),
  monotonicMs: () => performance.now(),
  setTimer(callback, delayMs) {
    const handle = setTimeout(callback, delayMs) as unknown as { unref?: () => void };
    handle.unref?.();
    return handle;
  },
  clearTimer: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Random bytes from the platform's CSPRNG (React Native: install react-native-get-random-values). */
export function cryptoRandomBytes(length: number): Uint8Array {
  const crypto = (globalThis as { crypto?: { getRandomValues(a: Uint8Array): Uint8Array } }).crypto;
  if (crypto === undefined) throw new Error("no crypto.getRandomValues (react-native-get-random-values)");
  return crypto.getRandomValues(new Uint8Array(length));
}
