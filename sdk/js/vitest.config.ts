import { defineConfig } from "vitest/config";

// Few workers: the machine's cores are shared; the integration test starts a Python server.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 20_000,
  },
});
