/**
 * {@link Http} over the platform's `fetch` (Node 20+, browsers, React Native).
 *
 * Redirects of GETs are left to `fetch`, which per the Fetch standard drops `Authorization` on
 * a cross-origin redirect; POSTs use `redirect: "manual"` and so never follow one. The timeout
 * covers the wait for the headers and then each wait for the next chunk of the body. Where
 * `fetch` cannot stream a body (React Native), it arrives as one chunk.
 */

import type { Http, HttpRequest, HttpResponse } from "./adapters.js";

type FetchLike = typeof fetch;

export function fetchHttp(fetchImpl: FetchLike = (...args) => globalThis.fetch(...args)): Http {
  return {
    async request({ method, url, headers, body, timeoutMs, followRedirects }: HttpRequest): Promise<HttpResponse> {
      const abort = new AbortController();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const disarm = () => {
        clearTimeout(timer); // a no-op for undefined
        timer = undefined;
      };
      const arm = () => {
        disarm();
        timer = setTimeout(() => abort.abort(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      };
      arm();
      let response: Response;
      try {
        const init: RequestInit = { method, headers, redirect: followRedirects ? "follow" : "manual", signal: abort.signal };
        if (body !== undefined) init.body = body;
        response = await fetchImpl(url, init);
      } finally {
        disarm();
      }
      return {
        status: response.status,
        header: (name) => response.headers.get(name),
        async text() {
          try {
            arm();
            return await response.text();
          } finally {
            disarm();
          }
        },
        async *chunks() {
          const body = response.body;
          try {
            if (body === null || typeof body.getReader !== "function") {
              arm();
              yield new Uint8Array(await response.arrayBuffer());
              return;
            }
            const reader = body.getReader();
            try {
              for (;;) {
                arm();
                const { done, value } = await reader.read();
                if (done) return;
                disarm(); // the consumer's work (hashing, writing) is not the server's delay
                yield value;
              }
            } finally {
              reader.releaseLock();
            }
          } finally {
            disarm();
            if (!abort.signal.aborted) abort.abort(new Error("body closed"));
          }
        },
        async cancel() {
          disarm();
          try {
            await response.body?.cancel();
          } catch {
            // already closed
          }
        },
      };
    },
  };
}
