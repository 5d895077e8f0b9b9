/**
 * What an app configures, with the defaults of the reference agent (docs/protocol.md §11.1),
 * and the checks `EdgeshipAgent.start` runs before anything else.
 */

import type { Clock, Http, SecureStore, Storage } from "./adapters.js";
import { check } from "./errors.js";
import { MODEL_NAME } from "./manifest.js";
import type { ModelRuntime } from "./runtime.js";

export type LogLevel = "debug" | "info" | "warn" | "error";

/** What the device says about itself at registration; fixed for the life of its credential. */
export interface DeviceInfo {
  /** `android`, `ios`, `linux-x86_64`…: `^[a-z0-9]+([_-][a-z0-9]+)*$`, ≤ 32 chars */
  deviceClass: string;
  /** e.g. `aarch64` (≤ 32 chars) */
  arch?: string;
  /** e.g. `Android 14`, `iOS 17.4` (≤ 64 chars) */
  os?: string;
  /** physical memory; 0 = unknown (no memory check when the server picks a variant) */
  ramBytes?: number;
}

export interface AgentOptions<T> {
  /** the rollout server's base URL; https unless loopback or `allowInsecureHttp` */
  server: string;
  /** the model's registry name */
  model: string;
  /** registers the device on first start; not needed once it has a credential */
  enrollToken?: string | null;
  /** pinned publisher keys: PEM text (`edgeship keys generate` writes it) or raw 32 bytes */
  trustedKeys: readonly (string | Uint8Array)[];
  /** files: the model store, the outbox, the revocation record */
  storage: Storage;
  /** the device credential (Keychain / Keystore on phones) */
  secureStore: SecureStore;
  runtime: ModelRuntime<T>;
  device: DeviceInfo;
  /** claims for canary targeting, sent at registration (docs/protocol.md §2.2): `app_version`,
   *  `region`, custom tags; ≤ 32, names `^[a-z][a-z0-9_.-]*$` ≤ 64 chars, values ≤ 128 chars */
  attributes?: Readonly<Record<string, string>>;
  http?: Http;
  clock?: Clock;
  /** the scheduled check-in's gate (Wi-Fi, charging...); `checkIn()` called by the app always runs */
  canPoll?: () => boolean | Promise<boolean>;
  /** between scheduled check-ins (default 10 s); null: only when the app calls `checkIn()` */
  checkIntervalMs?: number | null;
  /** the window until the first assignment says otherwise (default 30 s) */
  reportIntervalMs?: number;
  requestTimeoutMs?: number;
  backoffInitialSeconds?: number;
  backoffMaxSeconds?: number;
  /** before a refused variant is tried again (default 600 s, doubling to 16×) */
  variantBackoffMs?: number;
  /** golden agreement the device may lose against the converter's (default 0.1) */
  goldenSlack?: number;
  downloadMaxBytes?: number;
  downloadDeadlineMs?: number;
  outboxMaxReports?: number;
  allowInsecureHttp?: boolean;
  /** the process' peak resident memory in bytes, null when unknown (then not reported) */
  peakRssBytes?: () => number | null;
  random?: () => number;
  randomBytes?: (length: number) => Uint8Array;
  log?: (level: LogLevel, message: string) => void;
}

const DEVICE_CLASS = /^[a-z0-9]+([_-][a-z0-9]+)*$/;
const ATTRIBUTE = /^[a-z][a-z0-9_.-]{0,63}$/;
const LOOPBACK = /^https?:\/\/(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?(?:[/?#]|$)/i;

/** @throws RangeError naming the first bad option. */
export function checkOptions<T>(options: AgentOptions<T>): void {
  const { server, model, device } = options;
  check(/^https?:\/\/[^/?#]+/i.test(server), `server ${server} is not an http(s) URL`);
  check(!/^http:/i.test(server) || LOOPBACK.test(server) || options.allowInsecureHttp,
    `server ${server} is plain HTTP: use https, or set allowInsecureHttp`);
  check(MODEL_NAME.test(model) && model.length <= 64, `model ${model} is not a model name`);
  check(DEVICE_CLASS.test(device.deviceClass) && device.deviceClass.length <= 32,
    `device.deviceClass ${device.deviceClass} must match ${DEVICE_CLASS.source}, <= 32 chars`);
  check(options.trustedKeys.length, "trustedKeys is empty");
  const attributes = Object.entries(options.attributes ?? {});
  check(attributes.length <= 32 && attributes.every(([k, v]) => ATTRIBUTE.test(k) && typeof v === "string"
    && v.length <= 128), `attributes: at most 32, names ${ATTRIBUTE.source}, string values <= 128 chars`);
  const ram = device.ramBytes ?? 0;
  check(Number.isInteger(ram) && ram >= 0 && ram <= 1e12, `device.ramBytes ${ram} is not 0..1e12`);
}
