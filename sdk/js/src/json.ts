/**
 * JSON that keeps what a signature covers: a lossless parser and the canonical form of §4.2.
 *
 * `JSON.parse` turns `1.0` into `1` and `2.1e-07` into `2.1e-7`, and the manifest signature
 * covers Python's spelling of each number. So the signed manifest is parsed with
 * {@link parseJson}, which keeps every number's text ({@link JsonNumber}), and
 * {@link canonicalJson} prints it back exactly as `json.dumps(sort_keys=True,
 * separators=(",", ":"), ensure_ascii=False)` would. {@link toPlain} gives ordinary values.
 */

import { utf8Encode } from "./bytes.js";

/** A JSON number as its source text, e.g. `"1.0"`, `"2.1e-07"`, `"20480"`. */
export class JsonNumber {
  constructor(readonly text: string) {}
  /** An integer lexeme (no fraction, no exponent): Python reads it as `int`. */
  get isInteger(): boolean {
    return /^-?\d+$/.test(this.text);
  }
  get value(): number {
    return Number(this.text);
  }
}

export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

const MAX_DEPTH = 64;

/**
 * Parse JSON text keeping number lexemes. Strict RFC 8259 (no NaN, no trailing commas).
 * A repeated key keeps its last value, as Python's `json.loads` does.
 *
 * @throws SyntaxError naming the offset of the first problem.
 */
export function parseJson(text: string): JsonValue {
  let at = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`JSON: ${what} at offset ${at}`);
  };
  const ws = () => {
    while (at < text.length && " \t\n\r".includes(text[at]!)) at++;
  };
  const value = (depth: number): JsonValue => {
    if (depth > MAX_DEPTH) fail("nesting too deep");
    ws();
    const c = text[at];
    if (c === "{") return object(depth);
    if (c === "[") return array(depth);
    if (c === '"') return string();
    if (c === "-" || (c !== undefined && c >= "0" && c <= "9")) return number();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, at)) {
        at += word.length;
        return v;
      }
    }
    return fail("unexpected character");
  };
  const object = (depth: number): JsonObject => {
    const out: JsonObject = Object.create(null) as JsonObject;
    at++;
    ws();
    if (text[at] === "}") {
      at++;
      return out;
    }
    for (;;) {
      ws();
      if (text[at] !== '"') fail("expected a key");
      const key = string();
      ws();
      if (text[at] !== ":") fail("expected ':'");
      at++;
      out[key] = value(depth + 1);
      ws();
      if (text[at] === ",") at++;
      else if (text[at] === "}") {
        at++;
        return out;
      } else fail("expected ',' or '}'");
    }
  };
  const array = (depth: number): JsonValue[] => {
    const out: JsonValue[] = [];
    at++;
    ws();
    if (text[at] === "]") {
      at++;
      return out;
    }
    for (;;) {
      out.push(value(depth + 1));
      ws();
      if (text[at] === ",") at++;
      else if (text[at] === "]") {
        at++;
        return out;
      } else fail("expected ',' or ']'");
    }
  };
  const number = (): JsonNumber => {
    const match = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(at, at + 400));
    if (!match) return fail("malformed number");
    at += match[0].length;
    return new JsonNumber(match[0]);
  };
  const string = (): string => {
    at++;
    let out = "";
    for (;;) {
      const c = text[at];
      if (c === undefined) return fail("unterminated string");
      if (c === '"') {
        at++;
        return out;
      }
      if (c < " ") fail("control character in string");
      if (c !== "\\") {
        out += c;
        at++;
        continue;
      }
      const e = text[at + 1];
      const simple: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
      if (e !== undefined && e in simple) {
        out += simple[e];
        at += 2;
      } else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(at + 2, at + 6))) {
        out += String.fromCharCode(parseInt(text.slice(at + 2, at + 6), 16));
        at += 6;
      } else fail("bad escape");
    }
  };
  const result = value(0);
  ws();
  if (at !== text.length) fail("extra data after the value");
  return result;
}

/** Plain JavaScript values (numbers as `Number`); what the rest of the SDK works with. */
export function toPlain(value: JsonValue): unknown {
  if (value instanceof JsonNumber) return value.value;
  if (Array.isArray(value)) return value.map(toPlain);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, k, { value: toPlain(v), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

/** `isObject` for the lossless tree. */
export function isJsonObject(value: JsonValue | undefined): value is JsonObject {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof JsonNumber);
}

/**
 * The canonical bytes of §4.2 (Python's `canonical_json`): sorted keys by code point, no
 * whitespace, raw UTF-8, numbers as Python prints them.
 *
 * Plain JS numbers are accepted too (integers print as integers), for values built in code.
 *
 * @throws RangeError for NaN/Infinity and lone surrogates, which Python cannot sign either.
 */
export function canonicalJson(value: JsonValue | unknown): Uint8Array {
  return utf8Encode(canonicalText(value));
}

function canonicalText(value: unknown): string {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "string") return quote(value);
  if (value instanceof JsonNumber) return pythonNumber(value.text);
  if (typeof value === "number") {
    if (Number.isInteger(value)) return pythonNumber(value.toFixed(0));
    return pythonFloat(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalText).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => compareCodePoints(a, b));
    return `{${entries.map(([k, v]) => `${quote(k)}:${canonicalText(v)}`).join(",")}}`;
  }
  throw new TypeError(`cannot put a ${typeof value} in canonical JSON`);
}

/** Python's `str` ordering: by code point (JS `<` compares UTF-16 units). */
export function compareCodePoints(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

const ESCAPES: Record<string, string> = { '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function quote(text: string): string {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    const code = c.charCodeAt(0);
    if (code >= 0xd800 && code <= 0xdfff) {
      const pair = code <= 0xdbff && /[\udc00-\udfff]/.test(text[i + 1] ?? "");
      if (!pair) throw new RangeError("a lone surrogate cannot be signed");
      out += c + text[i + 1];
      i++;
    } else if (c in ESCAPES) out += ESCAPES[c];
    else if (code < 0x20) out += `\\u${code.toString(16).padStart(4, "0")}`;
    else out += c;
  }
  return `${out}"`;
}

/** A JSON number lexeme as Python's `json.dumps(json.loads(lexeme))` prints it. */
export function pythonNumber(lexeme: string): string {
  if (/^-?\d+$/.test(lexeme)) return BigInt(lexeme).toString();
  return pythonFloat(Number(lexeme));
}

/** Python's `repr(float)`: shortest round-trip digits, `.0` on integers, exponent outside [1e-4, 1e16). */
export function pythonFloat(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`${x} cannot be signed (Python refuses NaN and infinities)`);
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, exp] = Math.abs(x).toExponential().split("e") as [string, string];
  const digits = mantissa.replace(".", "");
  const e = Number(exp);
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  }
  if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
  const whole = digits.slice(0, e + 1).padEnd(e + 1, "0");
  const fraction = digits.slice(e + 1) || "0";
  return `${sign}${whole}.${fraction}`;
}
